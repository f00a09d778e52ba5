"""The `torchmos` command: score, resume, bad files, inputs of every kind, models, demo."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import soundfile as sf
import torch

import torchmos.functional as F
from torchmos import audio as torchmos_audio
from torchmos import cli, synth


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wavs")
    (d / "a").mkdir()
    for i, (name, fs) in enumerate([("a/one.wav", 16000), ("a/two.flac", 22050), ("three.wav", 8000)]):
        x = synth.speech_like(1.0 + 0.5 * i, fs, seed=i)
        sf.write(d / name, x.numpy(), fs, subtype="PCM_16")
    (d / "notes.txt.bak").write_text("not audio")
    return d


def expected(path: Path) -> float:
    x, sr = sf.read(path, dtype="float32")
    return float(F.distillmos(torch.from_numpy(x), fs=sr))


def read_csv(p: Path) -> dict[str, dict[str, str]]:
    with open(p, newline="") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def test_score_folder_to_csv(folder, tmp_path, capsys):
    out = tmp_path / "s.csv"
    rc = cli.main(["score", str(folder), "-o", str(out), "-q"])
    assert rc == 0
    rows = read_csv(out)
    assert set(rows) == {"a/one", "a/two", "three"}
    assert set(next(iter(rows.values()))) >= {"id", "path", "model", "score", "duration_s", "sample_rate"}
    for r in rows.values():
        assert r["model"] == "distillmos"
        assert float(r["score"]) == pytest.approx(expected(Path(r["path"])), abs=1e-5)
    assert rows["a/two"]["sample_rate"] == "22050"
    err = capsys.readouterr().err
    assert "3 scored, 0 failed" in err and "mean" in err and "min" in err and "max" in err


def test_bad_files_are_reported_skipped_and_exit_nonzero(folder, tmp_path, capsys):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "garbage.wav").write_bytes(b"RIFF....not a wav")
    sf.write(bad / "nan.wav", torch.full((8000,), float("nan")).numpy(), 16000, subtype="FLOAT")
    sf.write(bad / "tiny.wav", torch.zeros(10).numpy(), 16000)
    sf.write(bad / "ok.wav", synth.speech_like(1.0, 16000).numpy(), 16000)
    out = tmp_path / "s.jsonl"
    rc = cli.main(["score", str(bad), "-o", str(out), "-q", "--batch-size", "2"])
    assert rc == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["ok"]
    err = capsys.readouterr().err
    assert "1 scored, 3 failed" in err
    for name in ("garbage.wav", "nan.wav", "tiny.wav"):
        assert f"FAILED {bad / name}" in err


def test_resume_skips_scored_entries(folder, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert cli.main(["score", str(folder / "a"), "-o", str(out), "-q"]) == 0
    first = out.read_text()
    assert cli.main(["score", str(folder / "a"), str(folder / "three.wav"), "-o", str(out), "-q", "--resume"]) == 0
    text = out.read_text()
    assert text.startswith(first) and text.count("\n") == first.count("\n") + 1
    assert text.count("id,path") == 1
    assert "3 scored" in capsys.readouterr().err


def test_kaldi_scp_and_plain_list(folder, tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text(f"uttA {folder / 'a/one.wav'}\nuttB cat {folder / 'three.wav'} |\n")
    lst = tmp_path / "list.txt"
    lst.write_text(f"{folder / 'a/two.flac'}\n")
    out = tmp_path / "s.csv"
    assert cli.main(["score", str(scp), str(lst), "-o", str(out), "-q"]) == 0
    rows = read_csv(out)
    assert set(rows) == {"uttA", "uttB", str(folder / "a/two")}
    assert float(rows["uttB"]["score"]) == pytest.approx(expected(folder / "three.wav"), abs=1e-5)


def test_stdout_when_no_output(folder, capsys):
    assert cli.main(["score", str(folder / "three.wav"), "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "id,path,model,score,duration_s,sample_rate" and len(out) == 2


def test_usage_errors(folder, tmp_path, capsys):
    assert cli.main(["score", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert cli.main(["score", str(folder), "--model", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert cli.main(["score", str(folder), "--model", "scoreq-ref-natural"]) == 2
    assert "--reference" in capsys.readouterr().err
    assert cli.main(["score", str(folder), "--reference", str(folder)]) == 2
    assert "no-reference" in capsys.readouterr().err


def test_model_given_as_weight_file(folder, tmp_path):
    from torchmos import hub

    out = tmp_path / "s.csv"
    ckpt = hub.resolve("distillmos")
    assert cli.main(["score", str(folder / "three.wav"), "--model", str(ckpt), "-o", str(out), "-q"]) == 0
    assert float(next(iter(read_csv(out).values()))["score"]) == pytest.approx(expected(folder / "three.wav"), abs=1e-5)


def test_models_lists_cards(capsys):
    assert cli.main(["models", "-v"]) == 0
    out = capsys.readouterr().out
    for name in ("distillmos", "scoreq-nr-natural", "scoreq-ref-synthetic", "vqscore"):
        assert name in out
    assert "package" in out  # DistillMOS weights come from the installed distribution
    assert "MIT" in out and "Stahl" in out


def test_demo_scores_clean_above_degraded(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--clips", "2"]) == 0
    rows = read_csv(tmp_path / "demo" / "scores.csv")
    by = {}
    for r in rows.values():
        by.setdefault(r["id"].split("/")[0], []).append(float(r["score"]))
    mean = {k: sum(v) / len(v) for k, v in by.items()}
    assert len(rows) == 2 * len(synth.DEGRADATIONS)
    for kind in ("noise_0dB", "clipping", "lowpass_1k", "dropouts_30%"):
        assert mean[kind] < mean["clean"], (kind, mean)
    assert "clean" in capsys.readouterr().out


def test_scoreq_reference_modes(folder, tmp_path):
    """--reference pairs files by id; --reference-set averages over a clean set."""
    from torchmos.models.scoreq import ScoreqModel

    torch.manual_seed(0)
    ckpt = tmp_path / "fixed_nmr_telephone.pt"  # official REF layout, random weights
    torch.save(ScoreqModel(mode="ref").to_official_state_dict(), ckpt)
    model = ScoreqModel.from_pretrained(checkpoint=ckpt, mode="ref")
    clean = tmp_path / "clean"
    (clean / "a").mkdir(parents=True)
    for name in ("a/one.wav", "a/two.flac"):  # same relative paths as in `folder`
        x, sr = sf.read(folder / name, dtype="float32")
        sf.write(clean / name.replace(".flac", ".wav"), synth.degrade(torch.from_numpy(x), sr, "noise_5dB").numpy(), sr)
    out = tmp_path / "ref.csv"
    rc = cli.main(["score", str(folder / "a"), "--model", str(ckpt), "--reference", str(clean / "a"), "-o", str(out), "-q"])
    assert rc == 0
    rows = read_csv(out)
    assert set(rows) == {"one", "two"} and rows["one"]["model"] == "scoreq-ref-natural"

    def clip(p):
        x, sr = sf.read(p, dtype="float32")
        return torchmos_audio.prepare([torch.from_numpy(x)], sr, 16000)[0]

    want = model.distance([clip(folder / "a/one.wav")], [clip(clean / "a/one.wav")])
    assert float(rows["one"]["score"]) == pytest.approx(float(want), abs=1e-4)
    out2 = tmp_path / "nmr.csv"
    rc = cli.main(["score", str(folder / "three.wav"), "--model", str(ckpt), "--reference-set", str(clean), "-o", str(out2), "-q"])
    assert rc == 0
    refs = model.embed([clip(clean / "a/one.wav"), clip(clean / "a/two.wav")])
    want = model.distance_to_set([clip(folder / "three.wav")], refs)
    assert float(next(iter(read_csv(out2).values()))["score"]) == pytest.approx(float(want), abs=1e-4)
