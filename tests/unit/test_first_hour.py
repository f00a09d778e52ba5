"""The first hour of a new user: each papercut they met, fixed and kept fixed."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
import soundfile as sf
import torch

import torchmos.functional as F
from torchmos import audio, cli, hub, synth
from torchmos.audio import AudioError, find_audio


def _wav(path: Path, seconds: float = 1.0, fs: int = 16000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, synth.speech_like(seconds, fs, seed=seed).numpy(), fs, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("first-hour")
    _wav(d / "a.wav", seed=1)
    _wav(d / "b.wav", seed=2)
    return d


def test_output_folder_is_created(clips, tmp_path, capsys):
    out = tmp_path / "not" / "yet" / "scores.csv"
    assert cli.main(["score", str(clips), "-o", str(out), "-q"]) == 0
    with open(out, newline="") as f:
        assert sorted(r["id"] for r in csv.DictReader(f)) == ["a", "b"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_line_and_exit_2(clips, capsys, device):
    assert cli.main(["score", str(clips), "--device", device, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"torchmos: error: --device {device}: no CUDA GPU is available") and "--device cpu" in err


def test_a_device_that_is_no_device_is_a_usage_error(clips, capsys):
    assert cli.main(["score", str(clips), "--device", "gpu0", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--device 'gpu0' is not a torch device" in err and "Traceback" not in err


@pytest.mark.parametrize("spec, suggested", [
    ("scoreq-nr", ["scoreq-nr-natural", "scoreq-nr-synthetic"]),
    ("distilmos", ["distillmos"]),
])
def test_unknown_model_exits_2_with_close_matches(clips, capsys, spec, suggested):
    assert cli.main(["score", str(clips), "--model", spec, "-q"]) == 2
    err = capsys.readouterr().err
    assert f"unknown model {spec!r}" in err and "Did you mean" in err
    hint = err[err.index("Did you mean"):]
    assert sorted(n for n in ("distillmos", "scoreq-nr-natural", "scoreq-nr-synthetic", "scoreq-ref-natural",
                              "vqscore") if repr(n) in hint) == suggested


def test_unknown_model_without_a_close_match(clips, capsys):
    assert cli.main(["score", str(clips), "--model", "zzzz", "-q"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'zzzz'" in err and "Did you mean" not in err and "torchmos models" in err


def test_download_hints_name_both_the_option_and_the_argument(offline):
    with pytest.raises(hub.HubError) as info:
        hub.resolve("scoreq-nr-natural")
    msg = str(info.value)
    assert "--checkpoint PATH" in msg and "checkpoint=PATH" in msg


def test_failed_scp_entry_is_named_by_its_utterance_id(clips, tmp_path, capsys):
    scp = tmp_path / "wav.scp"
    scp.write_text(f"good {clips / 'a.wav'}\nbroken-utt exit 3 |\n")
    assert cli.main(["score", str(scp), "-o", str(tmp_path / "s.csv"), "-q"]) == 1
    err = capsys.readouterr().err
    failed = [ln for ln in err.splitlines() if "FAILED" in ln]
    assert len(failed) == 1 and failed[0].strip().startswith("FAILED utterance 'broken-utt':"), failed


def test_resume_summary_counts_done_and_new(clips, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert cli.main(["score", str(clips / "a.wav"), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    assert cli.main(["score", str(clips / "a.wav"), str(clips / "b.wav"), "-o", str(out), "-q", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "2 scored, 0 failed" in err and f"resumed: 1 already in {out}, 1 new" in err


def test_same_names_in_two_folders_get_readable_unique_ids(tmp_path):
    _wav(tmp_path / "sysA" / "utt1.wav", seed=1)
    _wav(tmp_path / "sysB" / "utt1.wav", seed=2)
    _wav(tmp_path / "sysB" / "only.wav", seed=3)
    entries = find_audio([tmp_path / "sysA", tmp_path / "sysB"])
    assert [e.id for e in entries] == ["sysA/utt1", "only", "sysB/utt1"]
    assert [Path(e.source).parent.name for e in entries] == ["sysA", "sysB", "sysB"]
    assert all("#" not in e.id for e in entries)


def test_same_stem_two_formats_keep_their_extension(tmp_path):
    _wav(tmp_path / "x.wav")
    sf.write(tmp_path / "x.flac", synth.speech_like(1.0, 16000).numpy(), 16000)
    assert sorted(e.id for e in find_audio([tmp_path])) == ["x.flac", "x.wav"]


def test_the_same_file_twice_is_kept_numbered_and_noted(tmp_path, capsys):
    a = _wav(tmp_path / "in" / "a.wav")
    entries = find_audio([a, tmp_path / "in", a])
    assert [e.source for e in entries] == [str(a)] * 3
    assert [e.id for e in entries] == [str(a.with_suffix("")), "a", str(a.with_suffix("")) + "#2"]
    assert cli.main(["score", str(a), str(a), "-o", str(tmp_path / "s.csv"), "-q"]) == 0
    assert "1 file(s) are listed more than once" in capsys.readouterr().err


def test_repeated_utterance_id_in_scp_is_an_error(tmp_path):
    a, b = _wav(tmp_path / "a.wav"), _wav(tmp_path / "b.wav")
    scp = tmp_path / "wav.scp"
    scp.write_text(f"u1 {a}\nu1 sox {b} -t wav - |\n")
    with pytest.raises(AudioError, match="the utterance id 'u1' already names another entry on line 1"):
        find_audio([scp])
    # across inputs, a pipe cannot be renamed by its path: also an error
    other = tmp_path / "other.scp"
    other.write_text(f"u1 cat {b} |\n")
    scp.write_text(f"u1 {a}\n")
    with pytest.raises(AudioError, match="the utterance id 'u1' is used 2 times"):
        find_audio([scp, other])


def test_bf16_fallback_is_one_plain_line(clips, capsys, monkeypatch):
    from torchmos.models import distillmos

    monkeypatch.setattr(distillmos, "bf16_supported", lambda: False)
    assert cli.main(["score", str(clips / "a.wav"), "--precision", "bf16", "-q"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "bf16" in ln]
    assert len(lines) == 1 and lines[0].startswith("torchmos: warning: "), err
    assert "UserWarning" not in err and ".py:" not in err
    # the caller's own warning display is restored afterwards
    assert warnings.showwarning is not cli._plain_warning


def test_per_utterance_with_one_clip_has_shape_1():
    from torchmos import DistillMOS

    m = DistillMOS(per_utterance=True)
    m.update(torch.randn(16000) * 0.1)
    out = m.compute()
    assert out["scores"].shape == (1,) and out["ids"] == ["0"]
    m2 = DistillMOS(per_utterance=True)
    m2.update([torch.randn(16000) * 0.1])
    assert m2.compute()["scores"].shape == (1,)


def test_audio_read_names_a_pipe_by_its_name():
    with pytest.raises(AudioError, match=r"^utt7: the pipe command 'exit 4' failed \(exit 4\)"):
        audio.read("exit 4 |", name="utt7")


# ----------------------------------------------------------------------------- interrupted runs


def _score(clips: Path, out: Path, *extra: str) -> int:
    return cli.main(["score", str(clips), "-o", str(out), "-q", *extra])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_after_a_cut_off_last_row_rescores_it_and_repairs_the_file(clips, tmp_path, capsys, suffix):
    whole = tmp_path / f"whole{suffix}"
    assert _score(clips, whole) == 0
    text = whole.read_text()
    cut = tmp_path / f"cut{suffix}"
    cut.write_text(text[: len(text) - 9])  # the kill came while the last row was being written
    assert _score(clips, cut, "--resume") == 0
    err = capsys.readouterr().err
    assert "the last row was cut off" in err and "resumed: 1 already in" in err and "1 new" in err
    assert cut.read_text() == text  # repaired: the same rows, nothing glued together
    assert _score(clips, cut, "--resume") == 0  # and later resumes keep working
    assert "resumed: 2 already in" in capsys.readouterr().err


def test_resume_refuses_a_damaged_row_in_the_middle(clips, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert _score(clips, out) == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + "broken,row\n" + "".join(lines[1:]))
    assert _score(clips, out, "--resume") == 2
    assert f"{out}:2: a damaged row" in capsys.readouterr().err


def test_ctrl_c_ends_with_the_summary_and_a_resume_hint(clips, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.csv"
    calls = {"n": 0}
    real = audio.AudioEntry.load

    def load_then_interrupt(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(audio.AudioEntry, "load", load_then_interrupt)
    assert _score(clips, out, "--batch-size", "1") == 130
    err = capsys.readouterr().err
    assert "1 scored, 0 failed" in err and "rerun the same command with --resume" in err
    assert "Traceback" not in err
    monkeypatch.setattr(audio.AudioEntry, "load", real)
    assert _score(clips, out, "--resume") == 0
    with open(out, newline="") as f:
        assert sorted(r["id"] for r in csv.DictReader(f)) == ["a", "b"]


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size must be 1 or more"),
    (["--batch-size", "-3"], "--batch-size must be 1 or more"),
    (["--resume"], "--resume needs --output FILE"),
    (["--sha256", "ab" * 32], "--sha256 pins your own weight file"),
])
def test_score_usage_errors(clips, capsys, argv, message):
    assert cli.main(["score", str(clips), "-q", *argv]) == 2
    assert message in capsys.readouterr().err


def test_sha256_pins_the_users_own_file(clips, tmp_path, capsys):
    from torchmos import hub as _hub

    weights = _hub.resolve("distillmos")  # the official file, standing in for a user's own
    good = _hub.sha256sum(weights)
    out = tmp_path / "s.csv"
    assert cli.main(["score", str(clips), "-q", "-o", str(out), "--checkpoint", str(weights), "--sha256", good]) == 0
    bad = "0" * 64
    for how in (["--checkpoint", str(weights)], ["--model", str(weights)]):
        assert cli.main(["score", str(clips), "-q", *how, "--sha256", bad]) == 2
        assert f"does not match the pinned {bad}" in capsys.readouterr().err


def test_score_reads_each_file_in_blocks_with_progress(tmp_path, monkeypatch):
    """The CLI reads (and resamples) through audio.load with a progress callback, which the
    reader calls block by block; a long file gets a progress bar of its own."""
    f = _wav(tmp_path / "long48k.wav", seconds=12.0, fs=48000)
    seen: list[tuple[int, int]] = []
    real = audio.AudioEntry.load

    def spy(self, target_fs=None, *, progress=None):
        assert target_fs == 16000 and callable(progress)

        def both(done, total):
            seen.append((done, total))
            progress(done, total)

        return real(self, target_fs, progress=both)

    monkeypatch.setattr(audio.AudioEntry, "load", spy)
    monkeypatch.setattr(cli._InFileProgress, "LONG", 1)  # make this file "long"
    out = tmp_path / "s.csv"
    assert cli.main(["score", str(f), "-o", str(out)]) == 0
    assert len(seen) > 1 and seen[-1] == (12 * 48000, 12 * 48000)
    with open(out, newline="") as fh:
        row = next(csv.DictReader(fh))
    assert row["duration_s"] == "12.0" and row["sample_rate"] == "48000"
    x, sr = sf.read(f, dtype="float32")
    expect = float(F.distillmos(torch.from_numpy(x), fs=sr))
    assert float(row["score"]) == pytest.approx(expect, abs=1e-5)
