"""DistillMOS on real speech: the reference values of shared/data/speech/README.md."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import torchmos.functional as F
from torchmos import DistillMOS, audio
from torchmos.models.distillmos import bf16_supported

# distillmos 0.9.1, float32, CPU, whole file in one call (shared/data/speech/README.md)
REFERENCE = {
    "pesq_speech.wav": 4.259834,
    "pesq_speech_bab_0dB.wav": 2.317887,
    "scoreq_opus.wav": 2.633947,
    "scoreq_ref.wav": 4.206784,
}


@pytest.fixture(scope="module")
def clips(speech_dir):
    out = {}
    for name in REFERENCE:
        x, sr = audio.read(speech_dir / name)
        out[name] = (x, sr)
    return out


def test_matches_reference_values_one_at_a_time(clips):
    for name, want in REFERENCE.items():
        x, sr = clips[name]
        got = float(F.distillmos(x, fs=sr))
        assert abs(got - want) <= 1e-4, (name, got, want)


def test_matches_reference_values_in_one_mixed_batch(clips):
    names = list(REFERENCE)
    m = DistillMOS(per_utterance=True)
    m.update([clips[n][0] for n in names], ids=names)
    got = m.compute()["scores"]
    assert (got - torch.tensor([REFERENCE[n] for n in names])).abs().max() <= 1e-4


def test_degraded_scores_below_clean(clips):
    s = {n: float(F.distillmos(clips[n][0])) for n in REFERENCE}
    assert s["pesq_speech_bab_0dB.wav"] < s["pesq_speech.wav"] - 1
    assert s["scoreq_opus.wav"] < s["scoreq_ref.wav"] - 1


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bf16 (bf16 mode falls back to fp32)")
def test_bf16_error_on_real_speech(clips):
    got = F.distillmos([c[0] for c in clips.values()], precision="bf16")
    assert (got - torch.tensor(list(REFERENCE.values()))).abs().max() <= 0.02


def test_cli_scores_the_folder(speech_dir, tmp_path):
    out = tmp_path / "scores.jsonl"
    r = subprocess.run([sys.executable, "-m", "torchmos.cli", "score", str(speech_dir), "-o", str(out), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json

    rows = {json.loads(line)["id"]: json.loads(line)["score"] for line in out.read_text().splitlines()}
    for name, want in REFERENCE.items():
        assert abs(rows[name[:-4]] - want) <= 1e-4
