"""`torchmos train distill`: the teacher-score cache, the degraded items, the student's
checkpoint round trip, and the command line (issue 14)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import soundfile as sf
import torch
from torch import nn

import torchmos
from torchmos import cli, synth
from torchmos import functional as F
from torchmos.models.distillmos import DistillMOSModel, size_config, size_from_state_dict
from torchmos.training import distill_students
from torchmos.training.distill_data import Items, TeacherCache, make_items
from torchmos.training.distill_students import DistillMOSStudent


@pytest.fixture(autouse=True)
def _home(tmp_home, one_thread):
    """No network, no user cache; one thread."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_audio")
    for i in range(5):
        sf.write(str(root / f"c{i}.wav"), synth.speech_like(1.0 + 0.1 * i, 16000, seed=40 + i).numpy(), 16000)
    return root


# ----------------------------------------------------------------------------- the cache


class _Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, clips):
        self.calls += len(clips)
        return torch.stack([c.abs().mean() for c in clips])


def test_cache_calls_the_teacher_once_per_key_and_survives_a_restart(tmp_path):
    clips = {f"k{i}": torch.full((10,), float(i)) for i in range(4)}
    keys = list(clips)
    teacher = _Counting()
    cache = TeacherCache(tmp_path, "teacher-a")
    first = cache.scores_of(keys[:3], lambda pos: [clips[keys[p]] for p in pos], teacher)
    assert teacher.calls == 3 and first.tolist() == [0.0, 1.0, 2.0]
    again = cache.scores_of(keys, lambda pos: [clips[keys[p]] for p in pos], teacher)  # a later epoch
    assert teacher.calls == 4 and again.tolist() == [0.0, 1.0, 2.0, 3.0]
    reopened = TeacherCache(tmp_path, "teacher-a")  # a resumed run
    assert reopened.scores_of(keys, lambda pos: [clips[keys[p]] for p in pos], teacher).tolist() == again.tolist()
    assert teacher.calls == 4
    other = TeacherCache(tmp_path, "teacher-b")  # another teacher (or weights): not the same scores
    other.scores_of(keys[:1], lambda pos: [clips[keys[p]] for p in pos], teacher)
    assert teacher.calls == 5


def test_cache_is_bounded_and_rejects_a_foreign_file(tmp_path):
    cache = TeacherCache(tmp_path, "t", max_entries=3)
    for i in range(10):
        cache.put({f"k{i}": float(i)})
    assert len(cache) == 3 and cache.get("k9") == 9.0 and cache.get("k0") is None
    lines = (tmp_path / TeacherCache.FILE).read_text().splitlines()
    assert len(lines) <= 6
    assert len(TeacherCache(tmp_path, "t", max_entries=3)) == 3
    (tmp_path / TeacherCache.FILE).write_text("not json\n")
    with pytest.raises(ValueError, match="teacher_scores.jsonl:1"):
        TeacherCache(tmp_path, "t")


def test_items_are_a_function_of_seed_file_and_slot(folder, tmp_path):
    entries = torchmos.audio.find_audio([str(folder)])
    keys = Items(entries, []).ids
    a = make_items(keys, [1.0] * 5, 3, seed=1, crop_seconds=0.6, kinds=list(synth.KINDS), clean_fraction=0.1)
    b = make_items(keys, [1.0] * 5, 3, seed=1, crop_seconds=0.6, kinds=list(synth.KINDS), clean_fraction=0.1)
    c = make_items(keys, [1.0] * 5, 3, seed=2, crop_seconds=0.6, kinds=list(synth.KINDS), clean_fraction=0.1)
    assert a == b and a != c and len(a) == 15
    assert len({(i.kind, i.severity, i.start) for i in a}) == 15  # every slot its own variant
    assert all(0 <= i.start <= 0.4 and i.seconds == 0.6 for i in a)
    items = Items(entries, a)
    x, y = items.load(4), items.load(4)
    assert torch.equal(x, y) and x.shape[0] == int(0.6 * 16000)
    assert items.cache_key(4) != items.cache_key(5)
    with pytest.raises(ValueError, match="unknown degradation 'echo'"):
        make_items(keys, [1.0] * 5, 1, 1, 0.6, ["echo"], 0.0)
    # a copy of the data elsewhere (new paths, new mtimes) draws the same variants, and
    # its teacher scores are cached apart
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    moved = Items(torchmos.audio.find_audio([str(copy)]), [])
    assert moved.ids == keys and moved.keys != items.keys
    moved.items = make_items(moved.ids, [1.0] * 5, 3, seed=1, crop_seconds=0.6, kinds=list(synth.KINDS),
                             clean_fraction=0.1)
    assert moved.items == a and torch.equal(moved.load(4), x) and moved.cache_key(4) != items.cache_key(4)


# ----------------------------------------------------------------------------- the student's file


def _trained_looking(width=0.25, depth=0.3, heads=8):
    """A random student whose BatchNorm statistics are not the initial ones."""
    torch.manual_seed(0)
    student = DistillMOSStudent(DistillMOSModel(**size_config(width, depth, heads=heads)))
    student.set_mode(True)
    with torch.no_grad():
        student([synth.speech_like(2.0, 16000, seed=s) for s in range(3)])
    student.set_mode(False)
    return student


@pytest.mark.parametrize("heads", [8, 4])
def test_student_round_trip_through_every_loader(tmp_path, heads):
    student = _trained_looking(heads=heads)
    path = tmp_path / "student.pt"
    student.save(path, {"step": 1})
    clips = [synth.speech_like(2.0, 16000, seed=90), synth.speech_like(9.0, 16000, seed=91)]
    want = student.net(clips)  # the in-memory student, scored as the model scores
    loaded = DistillMOSModel.from_pretrained(checkpoint=path)
    assert loaded.size == student.net.size and loaded.size["heads"] == heads
    torch.testing.assert_close(loaded(clips), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(F.distillmos(clips, 16000, checkpoint=str(path)), want, atol=1e-5, rtol=0)
    metric = torchmos.DistillMOS(fs=16000, checkpoint=str(path))
    metric.update(clips)
    torch.testing.assert_close(metric.compute().float(), want.mean(), atol=1e-5, rtol=0)
    # the training forward (padded 7.68 s crops) is the inference of clips up to 7.68 s
    torch.testing.assert_close(student([clips[0]]), want[:1], atol=1e-5, rtol=0)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) >= {"model", "size"} and ckpt["torchmos"]["family"] == "distillmos"


def test_size_is_read_from_the_shapes_of_a_bare_state_dict(tmp_path):
    student = _trained_looking(0.5, 0.5)
    torch.save(student.net.state_dict(), tmp_path / "bare.pt")  # no size entry, no "model" wrapper
    loaded = DistillMOSModel.from_pretrained(checkpoint=tmp_path / "bare.pt")
    assert loaded.size == size_config(0.5, 0.5)
    official = DistillMOSModel.from_pretrained()
    assert size_from_state_dict(official.state_dict()) == size_config()
    assert sum(p.numel() for p in official.parameters()) == 4133226  # the official 4.1 M
    with pytest.raises(ValueError, match="multiple of the 8"):
        DistillMOSModel(d_model=100)


# ----------------------------------------------------------------------------- the command line


def _run(folder, out, *extra):
    return cli.main(["train", "distill", "--audio", str(folder), "--out", str(out), "--teacher", "distillmos",
                     "--width", "0.125", "--depth", "0.15", "--batch-size", "2", "--variants", "1",
                     "--valid-files", "1", "--valid-variants", "2", "--crop-seconds", "1.0", "--val-every", "2",
                     "--no-progress", "--seed", "3", *extra])


def test_cli_trains_caches_the_teacher_and_resumes(folder, tmp_path, monkeypatch, capsys):
    calls = []
    real = distill_students.Teacher.__call__

    def counting(self, clips):
        calls.append(len(clips))
        return real(self, clips)

    monkeypatch.setattr(distill_students.Teacher, "__call__", counting)
    out = tmp_path / "run"
    assert _run(folder, out, "--steps", "4", "--loss", "l1") == 0
    # 4 training files x 1 variant + 1 validation file x 2 variants, over 8 draws and 2 validations
    assert sum(calls) == 6
    cache = (out / "teacher_cache" / TeacherCache.FILE).read_text().splitlines()
    assert len(cache) == 6
    rows = (out / "metrics.csv").read_text()
    assert "val_spearman" in rows and "val_mae" in rows
    net = DistillMOSModel.from_pretrained(checkpoint=out / "student.pt")
    assert net.size == size_config(0.125, 0.15)
    ckpt = torch.load(out / "student.pt", weights_only=True)
    assert ckpt["torchmos"]["step"] == 4 and ckpt["torchmos"]["teacher"].startswith("distillmos:")
    # resumed: the teacher is not asked again
    assert _run(folder, out, "--steps", "6", "--loss", "l1", "--resume") == 0
    assert sum(calls) == 6 and torch.load(out / "student.pt", weights_only=True)["torchmos"]["step"] == 6
    # the score command uses the student as the official model's file
    capsys.readouterr()
    assert cli.main(["score", str(folder / "c0.wav"), "--model", "distillmos", "--checkpoint",
                     str(out / "student.pt"), "-q"]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()[-2:]
    score = float(row.split(",")[header.split(",").index("score")])
    x, _ = torchmos.audio.read(folder / "c0.wav")
    assert abs(score - float(DistillMOSModel.from_pretrained(checkpoint=out / "student.pt")([x])[0])) < 1e-3
    # a changed option cannot resume
    assert _run(folder, out, "--steps", "8", "--loss", "l1", "--resume", "--width", "0.25") == 2
    assert re.search(r"--width was 0.125", capsys.readouterr().err)


def test_cli_refuses_bad_options(folder, tmp_path, capsys):
    assert _run(folder, tmp_path / "a", "--keep-layers", "2") == 2
    assert "options of --student pruned-scoreq" in capsys.readouterr().err
    assert _run(folder, tmp_path / "b", "--student", "pruned-scoreq") == 2
    assert "--student-init" in capsys.readouterr().err
    assert _run(folder, tmp_path / "c", "--crop-seconds", "9") == 2
    assert "--crop-seconds 9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(folder, tmp_path / "d", "--degradations", "echo")
    assert _run(folder, tmp_path / "e", "--teacher", "scoreq-ref-natural") == 2
    assert "reference-mode" in capsys.readouterr().err


def test_student_trains_in_batchnorm_training_mode():
    """Lightning's train() reaches the DistillMOS student's BatchNorms (the inference model
    itself always stays in eval mode)."""
    student = _trained_looking()
    nn.Module.train(student, True)
    assert not student.net.training  # DistillMOSModel.train() keeps eval
    student.set_mode(True)
    assert student.net.transformer_pool_attn.norm_input.training
    assert json.dumps(student.net.size)


def test_bn_recalibration_gives_the_statistics_of_the_current_weights():
    """The saved student's BatchNorms hold the statistics of its current weights (over the
    given clips), not the lagging running averages; the training student is untouched."""
    student = _trained_looking()
    with torch.no_grad():  # running averages far from the truth, as after fast-changing weights
        for m in student.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.add_(3.0)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    clips = [synth.apply_kind(synth.speech_like(2.0, 16000, seed=s), 16000, "noise", 10.0 * s) for s in range(4)]
    copy = student.for_inference(clips, batch=4)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    stale = student(clips).detach()  # what the running averages give
    student.set_mode(True)
    with torch.no_grad():
        batch_stats = student(clips)  # training mode: this batch's statistics
    student.set_mode(False)
    torch.testing.assert_close(copy(clips), batch_stats, atol=2e-3, rtol=0)
    assert float((stale - batch_stats).abs().max()) > 0.05
    assert not copy.net.transformer_pool_attn.norm_input.training


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(folder, tmp_path):
    fixed = ["--schedule", "constant", "--val-every", "0", "--bn-clips", "4"]
    assert _run(folder, tmp_path / "whole", "--steps", "4", *fixed) == 0
    assert _run(folder, tmp_path / "parts", "--steps", "2", *fixed) == 0
    assert _run(folder, tmp_path / "parts", "--steps", "4", "--resume", *fixed) == 0
    a = torch.load(tmp_path / "whole" / "student.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "parts" / "student.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


def test_a_student_architecture_rebuilds_at_its_size():
    """What a transformers directory stores (models.architecture) rebuilds a student at its
    own size; the official size stays the empty config older directories have."""
    from torchmos.models import architecture, build

    net = DistillMOSModel(**size_config(0.5, 0.5))
    arch = architecture(net, "distillmos")
    assert arch["config"] == size_config(0.5, 0.5)
    assert build(arch).size == net.size
    assert architecture(DistillMOSModel(), "distillmos")["config"] == {}
