"""Checks and conversions of audio tensors: sample rates, sample dtypes, clip contents.

Every error about bad input is an :class:`AudioError` that names the file or batch item
and says what to do.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["AudioError", "SilentAudioWarning", "check_sample_rate", "to_float"]


class AudioError(ValueError):
    """Bad audio input. The message names the file or batch item and says what to do."""


class SilentAudioWarning(UserWarning):
    """An all-zero clip was scored; its score is rarely meaningful."""



def check_sample_rate(fs: Any, where: str = "input") -> int:
    """Return ``fs`` as a positive int, or raise :class:`AudioError`.

    >>> check_sample_rate(16000.0)
    16000
    """
    if fs is None:
        raise AudioError(f"{where}: the sample rate is unknown; pass fs=<Hz> (e.g. fs=16000).")
    if isinstance(fs, bool) or not isinstance(fs, (int, float, np.integer, np.floating)):
        raise AudioError(f"{where}: the sample rate must be a number of Hz, got {fs!r}.")
    if not math.isfinite(float(fs)) or float(fs) <= 0 or float(fs) != int(fs):
        raise AudioError(f"{where}: the sample rate must be a positive whole number of Hz, got {fs!r}.")
    return int(fs)


def to_float(x: torch.Tensor | np.ndarray, where: str = "input") -> torch.Tensor:
    """Integer PCM or float samples -> float32 tensor in [-1, 1] (floats are kept as they are).

    int16 is divided by 2**15, int32 by 2**31, int8 by 2**7; uint8 is offset by 128 first
    (the WAV convention). Bool, complex and other dtypes are refused.

    >>> to_float(torch.tensor([-32768, 0, 16384], dtype=torch.int16))
    tensor([-1.0000,  0.0000,  0.5000])
    """
    if isinstance(x, np.ndarray):
        if not x.dtype.isnative:  # e.g. big-endian PCM from np.frombuffer(..., ">i2")
            x = x.astype(x.dtype.newbyteorder("="))
        if x.dtype == np.uint8:
            x = torch.from_numpy(x.astype(np.int16) - 128).to(torch.int8)
        elif x.dtype.kind in "iuf" and x.dtype.itemsize <= 8 and x.dtype != np.uint16 and x.dtype != np.uint32:
            x = np.ascontiguousarray(x) if x.ndim else x.copy()  # (ascontiguousarray makes 0-d 1-D)
            # torch.from_numpy warns on read-only arrays (np.frombuffer, memory maps): copy them
            x = torch.from_numpy(x if x.flags.writeable else x.copy())
        else:
            raise AudioError(
                f"{where}: unsupported sample dtype {x.dtype}; pass float32/float64 in [-1, 1] "
                "or integer PCM (int8/int16/int32)."
            )
    if not isinstance(x, torch.Tensor):
        raise AudioError(f"{where}: expected a torch.Tensor or numpy array, got {type(x).__name__}.")
    if x.dtype.is_floating_point:
        return x.float()
    scale = {torch.int8: 2.0**7, torch.int16: 2.0**15, torch.int32: 2.0**31}.get(x.dtype)
    if scale is None:
        if x.dtype == torch.uint8:
            return (x.float() - 128.0) / 128.0
        raise AudioError(
            f"{where}: unsupported sample dtype {x.dtype}; pass float32/float64 in [-1, 1] "
            "or integer PCM (int8/int16/int32)."
        )
    return x.float() / scale


def _check_clip(x: torch.Tensor, where: str, fs: int, min_seconds: float) -> None:
    if x.numel() == 0:
        raise AudioError(f"{where}: the clip is empty (0 samples).")
    if x.shape[-1] < min_seconds * fs:
        raise AudioError(
            f"{where}: the clip is {x.shape[-1] / fs:.3f} s long, shorter than this model's "
            f"minimum of {min_seconds:g} s; pad or drop it."
        )
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise AudioError(f"{where}: the clip has {bad} NaN/Inf sample(s); clean or drop it.")
    if not bool(x.any()):
        warnings.warn(
            f"{where}: the clip is all zeros (digital silence); it is scored, but the score "
            "says little about quality.",
            SilentAudioWarning,
            stacklevel=3,
        )

