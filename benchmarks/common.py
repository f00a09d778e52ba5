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


def provenance() -> dict[str, object]:
    """What a results file must say about where it was measured: the commit (and whether
    the tree was clean), the date, the CPU and its vector extensions, and versions."""
    import datetime
    import platform
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    vector = sorted(f for f in flags if f in {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    versions = {}
    for pkg in ("torch", "torchaudio", "torchmetrics", "transformers", "numpy", "distillmos"):
        try:
            import importlib.metadata as md

            versions[pkg] = md.version(pkg)
        except Exception:  # not installed
            versions[pkg] = None
    return {
        "commit": git("rev-parse", "HEAD") or None,
        # clean: nothing changed but the results files that benchmarks themselves write
        "tree_clean": git("status", "--porcelain", "--", ".", ":!benchmarks/results") == "",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_vector_extensions": vector,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
    }
