"""What the benchmarks share: the generated corpus and the opt-in real speech."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from torchmos import audio, synth

SPEECH = Path(os.environ.get("TORCHMOS_SPEECH_DATA", Path(__file__).resolve().parents[2] / "shared/data/speech"))


def corpus(n: int, seed: int = 0, lo: float = 3.0, hi: float = 20.0) -> list[torch.Tensor]:
    """``n`` speech-like 16 kHz clips of lo-hi seconds, each with one of the demo's degradations."""
    g = torch.Generator().manual_seed(seed)
    kinds = list(synth.DEGRADATIONS)
    out = []
    for i in range(n):
        sec = lo + (hi - lo) * float(torch.rand(1, generator=g))
        out.append(synth.degrade(synth.speech_like(sec, 16000, seed=seed + i), 16000, kinds[i % len(kinds)], seed=i))
    return out


def real_speech() -> list[torch.Tensor]:
    """The recordings of shared/data/speech at 16 kHz, or [] when the folder is absent."""
    if not SPEECH.is_dir():
        return []
    clips = []
    for f in sorted(SPEECH.glob("*.wav")):
        x, sr = audio.read(f)
        clips.append(audio.resample(x, sr, 16000))
    return clips
