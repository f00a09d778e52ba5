"""Speech-like test signals and controlled degradations.

Used by ``torchmos demo`` (scoring works on a fresh machine with nothing of the user's),
by the tests, and by the learning tests of the training recipes. The signals are not
speech, but they have its coarse structure: voiced syllables at 3-6 per second with a
moving pitch, vowel formants, fricative bursts, pauses between words, a little room.

>>> x = speech_like(1.0, fs=16000, seed=0)
>>> x.shape, float(x.abs().max()) <= 1.0
(torch.Size([16000]), True)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import audio

__all__ = ["CLEAN_MOS", "DEGRADATIONS", "KINDS", "MOS_MODEL", "add_noise", "apply_kind", "clip", "degrade", "dropouts",
           "labelled_set", "lowpass", "mulaw", "quantise", "reverb", "room_response", "speech_like"]

# F1-F4 (Hz) of the vowels a, i, u, e, o, schwa, and the formant bandwidths
_VOWELS = [[730, 1090, 2440, 3400], [270, 2290, 3010, 3700], [300, 870, 2240, 3300],
           [530, 1840, 2480, 3500], [570, 840, 2410, 3400], [440, 1020, 2240, 3300]]
_BANDWIDTHS = [60, 90, 150, 200]


def _resonate(x: torch.Tensor, freq: float, bw: float, fs: int) -> torch.Tensor:
    """Second-order digital resonator (Klatt): unit gain at DC, peak at ``freq``."""
    r = math.exp(-math.pi * bw / fs)
    b, c = 2 * r * math.cos(2 * math.pi * freq / fs), -r * r
    a_coeffs = torch.tensor([1.0, -b, -c], dtype=x.dtype)
    b_coeffs = torch.tensor([1.0 - b - c, 0.0, 0.0], dtype=x.dtype)
    taf = audio.import_torchaudio().functional  # only the signal generators need it
    return taf.lfilter(x, a_coeffs, b_coeffs, clamp=False)


def speech_like(seconds: float, fs: int = 16000, seed: int = 0, level_db: float = -23.0) -> torch.Tensor:
    """A speech-like float32 signal of ``seconds`` at ``fs``, RMS about ``level_db`` dBFS.

    Source-filter synthesis: a Rosenberg-like glottal pulse train with a moving pitch
    (95-210 Hz speaker base, per-syllable contour, slow jitter) and aspiration noise,
    through four cascaded formant resonators of a random vowel per syllable; fricative
    bursts before some syllables; pauses between words; a short room reverberation.
    Deterministic for a given ``seed``. DistillMOS scores these around 2.5 and every
    degradation in :data:`DEGRADATIONS` lowers that.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fs))
    out = np.zeros(n + fs)
    pos = int(0.1 * fs)
    f0_base = rng.uniform(95, 210)
    while pos < n:
        for _ in range(int(rng.integers(1, 4))):  # syllables in a word
            dur = int(rng.uniform(0.14, 0.3) * fs)
            t = np.arange(dur) / fs
            f0 = f0_base * (1 + 0.12 * np.sin(np.pi * t / t[-1]) + rng.uniform(-0.08, 0.08)) * (1 - 0.15 * pos / n)
            f0 = f0 * (1 + 0.003 * rng.standard_normal(dur).cumsum() / np.sqrt(np.arange(1, dur + 1)))
            frac = np.cumsum(f0 / fs) % 1.0
            oq = 0.6  # open quotient
            pulse = np.where(frac < oq, 0.5 * (1 - np.cos(np.pi * frac / oq)),
                             np.cos(np.pi * (frac - oq) / (2 * (1 - oq))).clip(0))
            src = np.diff(pulse, prepend=0.0) * fs / 1000 + 0.02 * rng.standard_normal(dur) * (frac < oq)
            y = torch.from_numpy(src)
            vowel = _VOWELS[int(rng.integers(len(_VOWELS)))]
            for f, bw in zip(vowel, _BANDWIDTHS):
                if f < 0.45 * fs:
                    y = _resonate(y, f * rng.uniform(0.93, 1.07), bw, fs)
            y = y.numpy() * np.sin(np.pi * np.arange(dur) / dur) ** 0.6
            if rng.random() < 0.4:  # fricative onset
                fd = int(rng.uniform(0.04, 0.09) * fs)
                centre = min(rng.uniform(3500, 6000), 0.4 * fs)
                hiss = _resonate(torch.from_numpy(rng.standard_normal(fd)), centre, 1500, fs).numpy()
                out[pos : pos + fd] += hiss * np.hanning(fd) * 0.05
                pos += fd
            out[pos : pos + dur] += y
            pos += dur - int(0.03 * fs)
            if pos >= n:
                break
        pos += int(rng.uniform(0.1, 0.35) * fs)  # pause between words
    x = out[:n]
    m = int(0.15 * fs)  # room: exponentially decaying noise tail
    ir = rng.standard_normal(m) * np.exp(-np.arange(m) / (0.03 * fs))
    ir[0] = 1.0
    x = np.convolve(x, ir / (np.abs(ir).sum() ** 0.5 * 3))[:n]
    x = x / np.sqrt((x**2).mean() + 1e-12) * 10 ** (level_db / 20)
    return torch.from_numpy(x).float().clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------- degradations


def add_noise(x: torch.Tensor, snr_db: float, seed: int = 0, colour: str = "pink") -> torch.Tensor:
    """Add white or pink noise at ``snr_db`` (RMS over the whole clip)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(x.shape[-1], generator=g)
    if colour == "pink":  # 1/f by spectral shaping
        spec = torch.fft.rfft(w)
        f = torch.arange(spec.shape[0]).clamp_min(1).float()
        w = torch.fft.irfft(spec / f.sqrt(), n=x.shape[-1])
    p_sig = x.pow(2).mean().clamp_min(1e-12)
    w = w * (p_sig / w.pow(2).mean() / 10 ** (snr_db / 10)).sqrt()
    return x + w


def clip(x: torch.Tensor, fraction: float = 0.3) -> torch.Tensor:
    """Hard-clip at ``fraction`` of the peak, then restore the peak level."""
    peak = x.abs().max().clamp_min(1e-9)
    return x.clamp(-fraction * peak, fraction * peak) / fraction


def lowpass(x: torch.Tensor, fs: int, cutoff: float = 1000.0) -> torch.Tensor:
    """Low-pass filter (two cascaded biquads)."""
    taf = audio.import_torchaudio().functional
    return taf.lowpass_biquad(taf.lowpass_biquad(x, fs, cutoff), fs, cutoff)


def dropouts(x: torch.Tensor, fs: int, rate: float = 0.2, frame_ms: float = 20.0, seed: int = 0) -> torch.Tensor:
    """Zero a fraction ``rate`` of ``frame_ms`` frames, like packet loss without concealment."""
    g = torch.Generator().manual_seed(seed)
    hop = max(1, int(fs * frame_ms / 1000))
    frames = -(-x.shape[-1] // hop)
    keep = (torch.rand(frames, generator=g) >= rate).repeat_interleave(hop)[: x.shape[-1]]
    return x * keep.to(x.dtype)


def room_response(fs: int, rt60: float, seed: int = 0, direct: float = 1.0) -> torch.Tensor:
    """A generated room impulse response: a unit direct path followed by Gaussian noise
    decaying exponentially by 60 dB over ``rt60`` seconds (the statistical model of late
    reverberation), starting 2.5 ms after the direct path; ``direct`` scales the direct path
    (lower: more distant talker). Energy-normalised to the direct path's."""
    if not rt60 > 0:
        raise ValueError(f"rt60 must be positive, got {rt60}.")
    g = torch.Generator().manual_seed(seed)
    n = max(2, int(rt60 * fs))
    t = torch.arange(n, dtype=torch.float64) / fs
    tail = torch.randn(n, generator=g, dtype=torch.float64) * torch.exp(-6.9078 * t / rt60)  # ln(1000) = 6.9078
    tail[: max(1, int(0.0025 * fs))] = 0.0
    ir = tail * 0.3 / tail.pow(2).sum().sqrt().clamp_min(1e-12)
    ir[0] = direct
    return (ir / ir.pow(2).sum().sqrt()).float()


def reverb(x: torch.Tensor, fs: int, rt60: float = 0.6, seed: int = 0, direct: float = 0.3) -> torch.Tensor:
    """Convolve with :func:`room_response` (same length as ``x``: the tail past its end is
    cut), keeping the clip's RMS."""
    ir = room_response(fs, rt60, seed, direct).to(x.dtype)
    n = x.shape[-1] + ir.shape[0] - 1
    y = torch.fft.irfft(torch.fft.rfft(x, n) * torch.fft.rfft(ir, n), n)[..., : x.shape[-1]]
    return y * (x.pow(2).mean() / y.pow(2).mean().clamp_min(1e-20)).sqrt()


def mulaw(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """mu-law companding to ``bits`` bits (mu = 2**bits - 1) and back: the quantisation
    noise of a G.711-like codec at a lower bit rate (8 bits: telephone quality)."""
    if bits < 1:
        raise ValueError(f"bits must be at least 1, got {bits}.")
    mu = float(2**bits - 1)
    peak = x.abs().max().clamp_min(1e-9)
    u = x / peak
    c = torch.sign(u) * torch.log1p(mu * u.abs()) / math.log1p(mu)
    c = torch.round((c + 1) / 2 * mu) / mu * 2 - 1
    return torch.sign(c) * torch.expm1(c.abs() * math.log1p(mu)) / mu * peak


def quantise(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Uniform (linear PCM) quantisation to ``bits`` bits over [-1, 1]."""
    if bits < 1:
        raise ValueError(f"bits must be at least 1, got {bits}.")
    step = 2.0 / 2**bits
    return (torch.round(x / step) * step).clamp(-1.0, 1.0)


DEGRADATIONS = {
    "clean": lambda x, fs, s: x,
    "noise_20dB": lambda x, fs, s: add_noise(x, 20.0, seed=s),
    "noise_5dB": lambda x, fs, s: add_noise(x, 5.0, seed=s),
    "noise_0dB": lambda x, fs, s: add_noise(x, 0.0, seed=s),
    "clipping": lambda x, fs, s: clip(x, 0.1),
    "lowpass_1k": lambda x, fs, s: lowpass(x, fs, 1000.0),
    "dropouts_30%": lambda x, fs, s: dropouts(x, fs, 0.3, seed=s),
}


def degrade(x: torch.Tensor, fs: int, kind: str, seed: int = 0) -> torch.Tensor:
    """Apply one of :data:`DEGRADATIONS` and keep the result within [-1, 1]."""
    try:
        fn = DEGRADATIONS[kind]
    except KeyError:
        raise KeyError(f"unknown degradation {kind!r}; known: {', '.join(DEGRADATIONS)}") from None
    y = fn(x, fs, seed)
    peak = float(y.abs().max())
    return y / peak * 0.99 if peak > 0.99 else y


# ----------------------------------------------------------------------------- a labelled set

# kind -> (severity range, MOS as a function of the severity): each decreasing from about
# 4.5 (barely degraded) to about 1.3 (worst), so MOS is a known, monotonic function of the
# degradation, comparable across kinds.
MOS_MODEL: dict[str, tuple[tuple[float, float], Any]] = {
    "noise": ((35.0, -5.0), lambda snr: 1.0 + 3.5 * (snr + 5.0) / 40.0),  # SNR in dB
    "clipping": ((0.6, 0.03), lambda c: 1.0 + 3.5 * math.log(c / 0.02) / math.log(30.0)),  # clip level / peak
    "lowpass": ((1200.0, 150.0), lambda f: 1.0 + 3.5 * math.log(f / 120.0) / math.log(10.0)),  # cutoff, Hz
    "dropouts": ((0.0, 0.5), lambda r: 4.5 - 3.5 * r / 0.5),  # fraction of 20 ms frames lost
}


# every kind :func:`apply_kind` knows -> its severity range, from mild to severe
KINDS: dict[str, tuple[float, float]] = {
    **{kind: rng for kind, (rng, _) in MOS_MODEL.items()},
    "reverb": (0.2, 1.5),  # RT60, s
    "mulaw": (8.0, 2.0),  # bits (rounded)
    "quantise": (10.0, 3.0),  # bits (rounded)
}


def apply_kind(x: torch.Tensor, fs: int, kind: str, severity: float, seed: int = 0) -> torch.Tensor:
    """Degrade ``x`` by one kind of :data:`KINDS` at ``severity`` (kept within [-1, 1]):
    the kinds of :data:`MOS_MODEL`, reverberation (RT60 in s), mu-law or uniform
    quantisation (bits). Deterministic for a given ``seed``; the length is kept.

    >>> x = speech_like(0.5, 16000, seed=1)
    >>> y = apply_kind(x, 16000, "noise", 0.0)
    >>> round(float(10 * torch.log10(x.pow(2).sum() / (y - x).pow(2).sum())), 1)
    0.0
    """
    if kind == "noise":
        y = add_noise(x, severity, seed=seed)
    elif kind == "clipping":
        y = clip(x, severity)
    elif kind == "lowpass":
        y = lowpass(x, fs, severity)
    elif kind == "dropouts":
        y = dropouts(x, fs, severity, seed=seed)
    elif kind == "reverb":
        y = reverb(x, fs, severity, seed=seed)
    elif kind == "mulaw":
        y = mulaw(x, int(round(severity)))
    elif kind == "quantise":
        y = quantise(x, int(round(severity)))
    else:
        raise KeyError(f"unknown degradation kind {kind!r}; known: {', '.join(KINDS)}")
    peak = float(y.abs().max())
    return y / peak * 0.99 if peak > 0.99 else y


CLEAN_MOS = 4.5  # the MOS of an undegraded clip in :func:`labelled_set`


def labelled_set(folder: str | os.PathLike, n: int, seconds: float = 2.0, fs: int = 16000,
                 kinds: Sequence[str] = tuple(MOS_MODEL), seed: int = 0, csv_name: str = "mos.csv",
                 clean_every: int = 0) -> Path:
    """Write ``n`` degraded speech-like clips and a MOS CSV (``path,mos,condition``) into
    ``folder``; returns the CSV's path. Each clip has its own signal (seed), a kind of
    ``kinds`` (in turn) and a severity drawn uniformly from the kind's range; its MOS is
    :data:`MOS_MODEL`'s function of that severity. With ``clean_every=k``, every k-th clip
    is left clean (condition ``clean``, MOS :data:`CLEAN_MOS`), as MOS tests include the
    unprocessed reference condition. For training tests and experiments.

    >>> import tempfile
    >>> csv = labelled_set(tempfile.mkdtemp(), 4, seconds=0.5, clean_every=4)
    >>> [line.split(",")[2] for line in csv.read_text().splitlines()[1:]]
    ['noise', 'clipping', 'lowpass', 'clean']
    """
    import soundfile as sf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    rows = ["path,mos,condition"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        (lo, hi), mos_of = MOS_MODEL[kind]
        severity = lo + (hi - lo) * float(torch.rand((), generator=g))
        x = speech_like(seconds, fs, seed=seed * 100_003 + i)
        if clean_every and i % clean_every == clean_every - 1:
            kind, mos = "clean", CLEAN_MOS
        else:
            x, mos = apply_kind(x, fs, kind, severity, seed=seed + i), mos_of(severity)
        name = f"{kind}_{i:05d}.wav"
        sf.write(str(folder / name), x.numpy(), fs, subtype="FLOAT")
        rows.append(f"{name},{mos:.4f},{kind}")
    out = folder / csv_name
    out.write_text("\n".join(rows) + "\n")
    return out
