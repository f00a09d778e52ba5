"""The only door for audio into torchmos.

Everything that reads, checks, converts or resamples audio lives here, and every error
about bad input is raised here, as an :class:`AudioError` that names the file or the batch
item and says what to do.

Two entry points cover the library:

* :func:`prepare` turns what a user passes to a metric (a tensor, a numpy array, a list of
  clips of any lengths, optionally with explicit ``lengths``) into a list of mono float32
  1-D tensors at the model's sample rate.
* :func:`read` reads one file (anything ``soundfile`` reads, or a Kaldi pipe entry) into a
  mono float32 tensor and its sample rate, block by block (with ``target_fs``, each block
  is resampled as it arrives, and ``progress`` reports how far it got), so a long file never
  sits in memory at its own rate; :func:`find_audio` expands files, folders, Kaldi
  ``wav.scp`` files and plain lists into :class:`AudioEntry` items.

No input can exhaust memory here: :func:`resample` keeps its filters and work buffers to a
few tens of MB for any pair of rates (see its docstring), and refuses, naming the item,
the rates it could not resample within that.
"""

from __future__ import annotations

import functools
import io
import math
import os
import subprocess
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf
import torch

__all__ = [
    "AudioError",
    "AudioEntry",
    "Loaded",
    "SilentAudioWarning",
    "check_sample_rate",
    "find_audio",
    "load",
    "pad_batch",
    "prepare",
    "read",
    "resample",
    "source_key",
    "to_float",
]


class AudioError(ValueError):
    """Bad audio input. The message names the file or batch item and says what to do."""


class SilentAudioWarning(UserWarning):
    """An all-zero clip was scored; its score is rarely meaningful."""


# ----------------------------------------------------------------------------- checks


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


# ----------------------------------------------------------------------------- resampling
#
# The filter is torchaudio's default windowed sinc (Hann window, 6 zero crossings, rolloff
# 0.99). Reduced by their gcd, the rates say that every period of ``o`` input samples gives
# ``n`` output samples; output ``k*n + p`` (phase ``p``) is a dot product of the filter's
# phase-``p`` taps with the input window that starts at ``k*o - width``. torchaudio stores
# each phase over the whole period (an ``n x (2*width + o)`` kernel), which is small for
# the usual rates (44.1 -> 16 kHz: 160 x 475) but not when the rates share no factor
# (7919 -> 16 kHz: 16000 x 7933 taps, 44101 Hz: 16000 x 44135, 2.8 GB in float32).
#
# * dense path (kernel of at most DENSE_MAX_TAPS taps: every rate in common use, and any
#   rate whose reduced ratio is small): torchaudio's own kernel (built by
#   ``torchaudio.transforms.Resample``: float64, stored in float32) and its own
#   pad + strided conv1d, so results are bit-identical to the reference packages.
# * compact path (larger kernels): the same filter function, evaluated with the same
#   float64 operations, but only on the ``2*width + 2`` taps around each phase's centre
#   (the others are clamped to zero by the window) and applied by gathering input windows
#   a bounded number of taps at a time. The table has about ``12 * max(o, n)`` taps: under
#   19 MB for any rate up to 384 kHz -> 16 kHz. It agrees with torchaudio to float32
#   rounding of the sums (~1e-7); a table over TABLE_MAX_BYTES (rates beyond ~1.3 MHz
#   sharing no factor with the other) is refused with an AudioError naming the item.
#
# Long signals are resampled in blocks of periods, each carrying the ``width`` samples of
# context either side that its window needs, so a block's outputs are those of the whole
# signal; on CPU float32 a block is never shorter than the size (20481 samples) above which
# conv1d takes oneDNN's path, as a long whole signal does, and the results match the
# whole-signal call exactly (they are at least within 1e-6 whatever conv1d does).

_ZEROS = 6  # torchaudio's default lowpass_filter_width
_ROLLOFF = 0.99  # torchaudio's default rolloff
DENSE_MAX_TAPS = 1 << 20  # torchaudio kernel up to 4 MB (float32); 11.025 -> 16 kHz has 291200
TABLE_MAX_BYTES = 64 << 20  # a compact table larger than this is refused
MIN_RESAMPLE_RATE = 1000  # Hz: a lower rate is no speech recording but a corrupt header, and
# upsampling it would multiply the clip's size (a "1 Hz" header: 16000 samples per sample)
CACHE_MAX_BYTES = 32 << 20  # filters kept for reuse, all together
BLOCK_SAMPLES = 1 << 18  # input samples per row resampled (or frames read) at a time
_ONEDNN_MIN = 20481  # conv1d input size from which torch takes the oneDNN path (1 row)
_GATHER_TAPS = 1 << 18  # taps gathered at a time by the compact path (~1 MB)


class _Filter:
    """One immutable resampling filter, shared between callers through the cache."""

    def __init__(self, o: int, n: int, width: int, dense: torch.Tensor | None = None,
                 taps: torch.Tensor | None = None, starts: torch.Tensor | None = None) -> None:
        self.o, self.n, self.width = o, n, width
        self.dense, self.taps, self.starts = dense, taps, starts
        if dense is not None:
            self.span = dense.shape[-1]  # 2*width + o input samples per period's window
        else:
            assert taps is not None and starts is not None
            self.span = (o * (n - 1)) // n + taps.shape[-1]
        self.nbytes = sum(t.numel() * t.element_size() for t in (dense, taps, starts) if t is not None)

    def out_len(self, length: int) -> int:
        """Output samples for ``length`` input samples, exactly as torchaudio counts them
        (it takes the ceil in the default float dtype, float32: beyond 2**24 output samples,
        about 17 minutes at 16 kHz, the count can be a few samples off the exact ceil)."""
        want = int(torch.ceil(torch.as_tensor(self.n * length / self.o)))
        return min(want, self.n * (length // self.o + 1))

    def whole(self, x: torch.Tensor) -> torch.Tensor:
        """Resample ``x`` (rows, T) in one go; on the dense path, torchaudio's own computation."""
        length = x.shape[-1]
        if self.dense is not None:
            xp = torch.nn.functional.pad(x, (self.width, self.width + self.o))
            y = torch.nn.functional.conv1d(xp[:, None], self.dense, stride=self.o)
            return y.transpose(1, 2).reshape(x.shape[0], -1)[..., : self.out_len(length)]
        total = self.out_len(length)
        count = -(-total // self.n)
        right = max(0, (count - 1) * self.o + self.span - self.width - length)
        xp = torch.nn.functional.pad(x, (self.width, right))
        return self.periods(xp, count)[..., :total]

    def periods(self, seg: torch.Tensor, count: int) -> torch.Tensor:
        """Outputs of ``count`` periods, ``(rows, count*n)``, from the padded input window
        ``seg`` (rows, (count-1)*o + span) that starts where the first period's does."""
        o, n = self.o, self.n
        if count <= 0:
            return seg.new_zeros(seg.shape[0], 0)
        if self.dense is not None:
            if seg.shape[-1] < _ONEDNN_MIN:  # take conv1d's path for long signals: zeros, dropped
                seg = torch.nn.functional.pad(seg, (0, _ONEDNN_MIN - seg.shape[-1]))
            y = torch.nn.functional.conv1d(seg[:, None], self.dense, stride=o)
            return y.transpose(1, 2).reshape(seg.shape[0], -1)[..., : count * n]
        taps, starts = self.taps, self.starts
        assert taps is not None and starts is not None
        rows, width = seg.shape[0], taps.shape[-1]
        windows = seg.unfold(-1, width, 1)  # a view: (rows, positions, taps)
        out = seg.new_empty(rows, count * n)
        step = max(1, _GATHER_TAPS // (width * rows))
        for j0 in range(0, count * n, step):
            j = torch.arange(j0, min(j0 + step, count * n), device=seg.device)
            k, p = j // n, j % n
            picked = windows[:, k * o + starts[p]]  # (rows, step, taps)
            out[:, j0 : j0 + j.shape[0]] = (picked * taps[p]).sum(-1)
        return out


def _sinc_table(o: int, n: int, width: int, base: float, dtype: torch.dtype | None) -> torch.Tensor:
    """Taps ``[p, l]`` of phase ``p`` at window offsets ``(o*p)//n + l``, ``l < 2*width + 2``.

    The same float64 operations, in the same order, as torchaudio's
    ``_get_sinc_resample_kernel`` (``dtype=None``: computed in float64, stored in float32;
    the phase offsets ``-p/n`` in the default float dtype, as there), evaluated a bounded
    number of phases at a time. Window offsets outside these ``2*width + 2`` are at least
    ``width + 1`` samples from the phase centre, where the clamped window is zero.
    """
    ntaps = 2 * width + 2
    table = torch.empty(n, ntaps, dtype=torch.float32 if dtype is None else dtype)
    offsets = torch.arange(ntaps)
    chunk = max(1, (1 << 16) // ntaps)
    for p0 in range(0, n, chunk):
        p1 = min(n, p0 + chunk)
        m = (torch.arange(p0, p1) * o // n)[:, None] + offsets  # torchaudio's window offsets
        idx = (m - width).to(torch.float64 if dtype is None else dtype) / o
        t = torch.arange(-p0, -p1, -1, dtype=dtype)[:, None] / n + idx
        t *= base
        t = t.clamp_(-_ZEROS, _ZEROS)
        window = torch.cos(t * math.pi / _ZEROS / 2) ** 2
        t *= math.pi
        kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
        kernels *= window * (base / o)
        table[p0:p1] = kernels
    return table


def import_torchaudio() -> Any:
    """``import torchaudio``, or an ImportError that says which torch it needs.

    PyPI's torchaudio wheels load only beside the torch builds they were made for, and
    pip does not know it: torchaudio 2.11.1 needs torch 2.13 or 2.14 (with torch 2.11 or
    2.12 its libraries miss symbols), torchaudio 2.11.0 needs torch 2.11 or 2.12, and
    torchaudio 2.11.1 does not load beside a CPU-only torch (docs/install.md has the
    measured matrix)."""
    try:
        import torchaudio
    except OSError as e:  # the C++ extension does not load beside this torch
        import importlib.metadata as md

        try:
            version = md.version("torchaudio")
        except md.PackageNotFoundError:  # pragma: no cover - imported, so it is installed
            version = "?"
        fix = ("pip install 'torch>=2.13,<2.15'" if version.startswith("2.11.1") else
               "pip install 'torchaudio==2.11.1' 'torch>=2.13,<2.15'")
        raise ImportError(
            f"torchaudio {version} does not load beside torch {torch.__version__} (built for another "
            f"torch, or this torch is CPU-only: {str(e)[-160:]}). torchmos needs it to resample audio "
            f"that is not at the model's rate. Install a pair that loads together: {fix} (or "
            "torchaudio==2.11.0 with torch 2.11/2.12); see docs/install.md."
        ) from e
    return torchaudio


def _build_filter(orig: int, new: int, dtype: torch.dtype, device: torch.device, where: str) -> _Filter:
    if orig < MIN_RESAMPLE_RATE:
        raise AudioError(
            f"{where}: cannot resample {orig} Hz to {new} Hz: rates below {MIN_RESAMPLE_RATE} Hz "
            "are not speech audio (a corrupt header?); check the file, or convert it to a "
            "standard rate (e.g. 16000 Hz)."
        )
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    base = min(o, n) * _ROLLOFF
    width = math.ceil(_ZEROS * o / base)
    kernel_dtype = torch.float64 if dtype == torch.float64 else None
    if n * (2 * width + o) <= DENSE_MAX_TAPS:
        # torchaudio is imported here, on the first clip that needs resampling, and never
        # by ``import torchmos`` or by scoring audio already at the model's rate.
        kernel = import_torchaudio().transforms.Resample(orig, new, dtype=kernel_dtype).kernel
        return _Filter(o, n, width, dense=kernel.to(device=device, dtype=dtype))
    size = n * (2 * width + 2) * max(4, torch.empty(0, dtype=dtype).element_size())
    if size > TABLE_MAX_BYTES:
        raise AudioError(
            f"{where}: cannot resample {orig} Hz to {new} Hz: the two rates have no large common "
            f"factor (greatest: {g}), so the filter would need {size / 2**20:.0f} MB. A sample "
            f"rate of {orig if o > n else new} Hz is most likely a wrong or corrupt header: "
            "check it, or convert the audio to a standard rate (e.g. 16000 or 48000 Hz) first."
        )
    taps = _sinc_table(o, n, width, base, kernel_dtype).to(device=device, dtype=dtype)
    starts = (torch.arange(n) * o // n).to(device)
    return _Filter(o, n, width, taps=taps, starts=starts)


class _FilterCache:
    """Least-recently-used filters, bounded by their total size in bytes (thread-safe)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[tuple, _Filter] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, orig: int, new: int, dtype: torch.dtype, device: torch.device, where: str) -> _Filter:
        key = (orig, new, dtype, device)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        made = _build_filter(orig, new, dtype, device, where)  # outside the lock: may be slow
        with self._lock:
            if key in self._items:  # another thread built it meanwhile
                return self._items[key]
            if made.nbytes <= self.max_bytes:
                self._items[key] = made
                self.nbytes += made.nbytes
                while self.nbytes > self.max_bytes:
                    self.nbytes -= self._items.popitem(last=False)[1].nbytes
        return made

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)


_FILTERS = _FilterCache(CACHE_MAX_BYTES)


class _Stream:
    """Resample a signal of known length pushed in consecutive blocks: the outputs are those
    of one call on the whole signal. Holds at most one block plus a period's window."""

    def __init__(self, filt: _Filter, length: int, rows: int, like: torch.Tensor) -> None:
        self.f, self.length = filt, length
        self.total = filt.out_len(length)
        self.count = -(-self.total // filt.n)  # periods to compute
        self.done = 0  # periods computed
        self.emitted = 0
        self.buf = like.new_zeros(rows, filt.width)  # the zero-padded input from period `done`
        self.small = length < _ONEDNN_MIN  # short: resampled in one go, as a whole call is
        self.pending: list[torch.Tensor] = []

    def push(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        """Feed the next input samples ``(rows, m)``; returns the outputs now complete."""
        f = self.f
        if self.small:
            self.pending.append(x)
            if not last:
                return x.new_zeros(x.shape[0], 0)
            return f.whole(torch.cat(self.pending, dim=-1))
        buf = torch.cat([self.buf, x], dim=-1)
        if last:
            need = (self.count - self.done - 1) * f.o + f.span
            if buf.shape[-1] < need:
                buf = torch.nn.functional.pad(buf, (0, need - buf.shape[-1]))
        elif buf.shape[-1] < _ONEDNN_MIN + f.o + f.span:
            self.buf = buf
            return buf.new_zeros(buf.shape[0], 0)
        count = 0
        if buf.shape[-1] >= f.span:
            count = min(self.count - self.done, (buf.shape[-1] - f.span) // f.o + 1)
        y = f.periods(buf[:, : max(0, count - 1) * f.o + f.span], count)
        self.buf = buf[:, count * f.o :].clone()
        self.done += count
        y = y[:, : self.total - self.emitted]
        self.emitted += y.shape[-1]
        return y


def resample(x: torch.Tensor, orig_fs: int, new_fs: int, *, where: str = "input") -> torch.Tensor:
    """Resample along the last axis with torchaudio's default windowed-sinc resampler.

    Memory stays bounded whatever the rates: for rates in common use (and any whose reduced
    ratio is small) this is exactly torchaudio's computation, so results are bit-identical
    to ``torchaudio.transforms.Resample(orig_fs, new_fs)``; rates that share (almost) no
    factor, e.g. a corrupt 44101 Hz header, use a compact form of the same filter (equal to
    float32 rounding, ~1e-7) that keeps its table under ~19 MB for any rate up to 384 kHz.
    A rate whose filter would exceed ``TABLE_MAX_BYTES``, or a source rate below
    ``MIN_RESAMPLE_RATE`` (1 kHz), is refused with an :class:`AudioError` naming ``where``.
    Signals longer than ``BLOCK_SAMPLES`` are resampled a block at a time into the output,
    with the same result. Filters are cached for reuse, at most ``CACHE_MAX_BYTES`` of them
    in all.

    >>> resample(torch.zeros(48000), 48000, 16000).shape
    torch.Size([16000])
    """
    if orig_fs == new_fs:
        return x
    orig, new = check_sample_rate(orig_fs, where), check_sample_rate(new_fs, where)
    if not x.is_floating_point():
        raise AudioError(f"{where}: resampling needs float samples, got {x.dtype}; use to_float() first.")
    filt = _FILTERS.get(orig, new, x.dtype, x.device, where)
    rows = x.reshape(-1, x.shape[-1])
    length = rows.shape[-1]
    if length <= BLOCK_SAMPLES:
        y = filt.whole(rows)
    else:
        stream = _Stream(filt, length, rows.shape[0], rows)
        y = rows.new_empty(rows.shape[0], stream.total)
        at = 0
        for start in range(0, length, BLOCK_SAMPLES):
            part = stream.push(rows[:, start : start + BLOCK_SAMPLES], last=start + BLOCK_SAMPLES >= length)
            y[:, at : at + part.shape[-1]] = part
            at += part.shape[-1]
    return y.reshape(*x.shape[:-1], y.shape[-1])


# ----------------------------------------------------------------------------- batches


def _name(names: Sequence[str] | None, i: int, arg: str) -> str:
    if names is not None and i < len(names):
        return f"{arg}[{i}] ({names[i]})" if arg else str(names[i])
    return f"{arg}[{i}]"


def prepare(
    preds: Any,
    fs: Any,
    target_fs: int | None,
    lengths: Any = None,
    *,
    min_seconds: float = 0.0,
    names: Sequence[str] | None = None,
    arg: str = "preds",
) -> list[torch.Tensor]:
    """Check and convert a batch of clips into mono float32 1-D tensors at ``target_fs``.

    Args:
        preds: a 1-D tensor/array (one clip), a 2-D ``(B, T)`` tensor/array (B clips, with
            ``lengths`` if they are padded), or a list/tuple of 1-D tensors/arrays of any
            lengths. Integer PCM is scaled to [-1, 1].
        fs: sample rate of ``preds`` in Hz.
        target_fs: the model's rate; clips are resampled to it (``None`` keeps ``fs``).
        lengths: valid samples per row of a 2-D ``preds`` (at ``fs``); padding beyond a
            row's length is never seen by a model.
        min_seconds: the model's minimum duration; shorter clips are refused.
        names: optional ids used in error messages instead of bare indices.
        arg: the argument name used in error messages (``""`` with ``names``: items are
            named by their names alone, e.g. file paths).

    Returns:
        list of B float32 1-D tensors, on the device of the input.

    >>> clips = prepare(torch.randn(2, 8000), fs=8000, target_fs=16000, lengths=[8000, 4000])
    >>> [c.shape[0] for c in clips]
    [16000, 8000]
    """
    fs = check_sample_rate(fs, arg)
    if isinstance(preds, (list, tuple)):
        if lengths is not None:
            raise AudioError(f"{arg}: lengths= is only for a padded 2-D tensor; a list already has lengths.")
        if len(preds) == 0:
            raise AudioError(f"{arg}: the batch is empty.")
        clips = []
        for i, p in enumerate(preds):
            where = _name(names, i, arg)
            p = to_float(p, where) if isinstance(p, (torch.Tensor, np.ndarray)) else _not_audio(p, where)
            if p.dim() != 1:
                raise AudioError(
                    f"{where}: expected a 1-D clip, got shape {tuple(p.shape)}; "
                    "mix multichannel audio down first (e.g. x.mean(0))."
                )
            clips.append(p)
    else:
        x = to_float(preds, arg) if isinstance(preds, (torch.Tensor, np.ndarray)) else _not_audio(preds, arg)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2:
            raise AudioError(
                f"{arg}: expected shape (T,) or (B, T), got {tuple(x.shape)}; pass a list of "
                "1-D clips, or mix channels down first (e.g. x.mean(1))."
            )
        if x.shape[0] == 0:
            raise AudioError(f"{arg}: the batch is empty.")
        if lengths is None:
            clips = list(x.unbind(0))
        else:
            try:
                lens = torch.as_tensor(lengths).reshape(-1).tolist()
            except (TypeError, ValueError, RuntimeError) as e:
                raise AudioError(
                    f"{arg}: lengths= must be whole numbers of samples, one per row ({e})."
                ) from None
            if len(lens) != x.shape[0]:
                raise AudioError(f"{arg}: {len(lens)} lengths for a batch of {x.shape[0]} clips.")
            clips = []
            for i, n in enumerate(lens):
                if (
                    isinstance(n, bool)
                    or not isinstance(n, (int, float))
                    or not math.isfinite(n)
                    or n != int(n)
                    or not 0 <= int(n) <= x.shape[1]
                ):
                    raise AudioError(
                        f"{_name(names, i, arg)}: length {n} is not a whole number of samples "
                        f"in [0, {x.shape[1]}]."
                    )
                clips.append(x[i, : int(n)])
    out = []
    for i, c in enumerate(clips):
        _check_clip(c, _name(names, i, arg), fs, min_seconds)
        out.append(resample(c, fs, target_fs, where=_name(names, i, arg)) if target_fs else c)
    return out


def _not_audio(p: Any, where: str) -> torch.Tensor:
    raise AudioError(f"{where}: expected a torch.Tensor or numpy array, got {type(p).__name__}.")


def pad_batch(clips: Sequence[torch.Tensor], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D clips at the end into ``(B, T)`` (T rounded up to ``multiple``) + lengths.

    >>> x, n = pad_batch([torch.ones(3), torch.ones(5)], multiple=4)
    >>> x.shape, n.tolist()
    (torch.Size([2, 8]), [3, 5])
    """
    if len(clips) == 0:
        raise AudioError("pad_batch: no clips to pad.")
    lengths = torch.tensor([c.shape[-1] for c in clips], dtype=torch.long)
    t = int(lengths.max())
    t = -(-t // multiple) * multiple
    out = clips[0].new_zeros(len(clips), t)
    for i, c in enumerate(clips):
        out[i, : c.shape[-1]] = c
    return out, lengths


# ----------------------------------------------------------------------------- files


def _is_pipe(source: str) -> bool:
    return source.rstrip().endswith("|")


def _wav_declared_frames(head: bytes) -> int | None:
    """Frames the data chunk of a RIFF/WAVE header declares, or None when unknown.

    libsndfile silently shortens a WAV whose data chunk runs past the end of the file, so
    a truncated copy would be scored as if it were whole; this reads the declaration. Sizes
    that streaming writers use as placeholders (0, >= 0x7FFF0000) mean "unknown".
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block = 12, 0
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if cid == b"fmt " and pos + 22 <= len(head):
            block = int.from_bytes(head[pos + 20 : pos + 22], "little")  # nBlockAlign
        elif cid == b"data":
            if block <= 0 or size == 0 or size >= 0x7FFF0000:
                return None
            return size // block
        pos += 8 + size + (size & 1)
    return None


class Loaded(NamedTuple):
    """What :func:`load` returns: the samples, their rate, the file's own rate, and how
    many frames the file held (so its duration is ``frames / file_rate`` exactly)."""

    samples: torch.Tensor
    rate: int
    file_rate: int
    frames: int


def read(
    source: str | os.PathLike,
    name: str | None = None,
    *,
    target_fs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    block_frames: int = BLOCK_SAMPLES,
) -> tuple[torch.Tensor, int]:
    """``(samples, rate)`` of one file: :func:`load` without the file's own rate."""
    loaded = load(source, name, target_fs=target_fs, progress=progress, block_frames=block_frames)
    return loaded.samples, loaded.rate


def load(
    source: str | os.PathLike,
    name: str | None = None,
    *,
    target_fs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    block_frames: int = BLOCK_SAMPLES,
) -> Loaded:
    """Read one file (or Kaldi pipe entry ``"cmd ... |"``) as a mono float32 tensor.

    Integer PCM is scaled to [-1, 1]; channels are averaged. Raises :class:`AudioError`
    naming the file (or ``name``, when given: a pipe entry is named by its utterance id,
    not by its command) for missing, unreadable, truncated or empty files.

    The file is read ``block_frames`` frames at a time, and with ``target_fs`` each block
    is resampled as it arrives (the result equals :func:`resample` of the whole file), so
    memory holds the output plus one block, never the whole file at its own rate: an hour
    at 48 kHz read with ``target_fs=16000`` needs the 230 MB of 16 kHz output and a few
    tens of MB more. ``progress(frames_done, frames_total)`` is called after each block,
    in frames of the file. Pipe entries and FIFOs are held in memory as their bytes
    (libsndfile needs to seek).

    Returns:
        ``Loaded(samples, rate, file_rate, frames)``: ``rate`` is ``target_fs`` when
        given, else the file's own ``file_rate``.

    >>> import os, tempfile, soundfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> soundfile.write(path, torch.zeros(48000).numpy(), 48000)
    >>> got = load(path, target_fs=16000)
    >>> got.samples.shape, got.rate, got.file_rate, got.frames
    (torch.Size([16000]), 16000, 48000, 48000)
    """
    source = os.fspath(source)
    label = name or source
    if target_fs is not None:
        target_fs = check_sample_rate(target_fs, f"{label}: target_fs")
    if isinstance(block_frames, bool) or not isinstance(block_frames, int) or block_frames < 1:
        raise ValueError(f"block_frames must be a positive int, got {block_frames!r}.")
    try:
        if _is_pipe(source):
            cmd = source.rstrip()[:-1]
            proc = subprocess.run(cmd, shell=True, capture_output=True, check=False)
            if proc.returncode != 0:
                raise AudioError(
                    f"{label}: the pipe command {cmd.strip()!r} failed (exit {proc.returncode}): "
                    f"{proc.stderr.decode(errors='replace').strip()[:300]}"
                )
            fh: Any = io.BytesIO(proc.stdout)
            head = proc.stdout[:65536]
        else:
            if not os.path.exists(source):
                raise AudioError(f"{source}: no such file.")
            if os.path.isdir(source):
                raise AudioError(f"{source}: is a directory, not an audio file.")
            with open(source, "rb") as raw:
                if os.path.isfile(source):
                    fh, head = source, raw.read(65536)
                else:  # a FIFO, e.g. bash's <(sox ... -t wav -): libsndfile needs to seek
                    stream = raw.read()
                    fh, head = io.BytesIO(stream), stream[:65536]
        f = sf.SoundFile(fh)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise AudioError(f"{label}: cannot be read as audio ({e}).") from e
    with f:
        return _read_blocks(f, head, label, target_fs, progress, block_frames)


def _read_blocks(
    f: sf.SoundFile,
    head: bytes,
    label: str,
    target_fs: int | None,
    progress: Callable[[int, int], None] | None,
    block_frames: int,
) -> Loaded:
    sr, total = int(f.samplerate), int(f.frames)
    declared = max(total, _wav_declared_frames(head) or 0)
    if total < declared:  # libsndfile shortened a WAV whose data chunk runs past the end
        _truncated(label, declared, total, sr)
    stream = None
    if target_fs is not None and target_fs != sr and total > 0:
        filt = _FILTERS.get(check_sample_rate(sr, label), target_fs, torch.float32, torch.device("cpu"), label)
        stream = _Stream(filt, total, 1, torch.empty(0))
    try:
        out = torch.empty(stream.total if stream is not None else total)
    except (RuntimeError, MemoryError) as e:
        raise AudioError(
            f"{label}: the header declares {total} frames ({total / sr / 3600:.1f} h at {sr} Hz) "
            f"and there is not enough memory for them ({e}); check the file (a corrupt header?), "
            "or split it."
        ) from None
    done = at = 0
    while done < total:
        try:
            data = f.read(min(block_frames, total - done), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
            raise AudioError(f"{label}: cannot be read as audio ({e}).") from e
        if data.shape[0] == 0:
            break
        done += data.shape[0]
        x = torch.from_numpy(data)
        x = x.mean(dim=1) if x.shape[1] > 1 else x.reshape(-1)
        if stream is not None:
            x = stream.push(x[None], last=done >= total)[0]
        out[at : at + x.shape[0]] = x
        at += x.shape[0]
        if progress is not None:
            progress(done, total)
    if done < declared:
        _truncated(label, declared, done, sr)
    if done == 0:
        raise AudioError(f"{label}: the file holds no audio samples.")
    return Loaded(out, target_fs if stream is not None else sr, sr, done)


def _truncated(label: str, declared: int, present: int, sr: int) -> None:
    raise AudioError(
        f"{label}: truncated file: the header declares {declared} frames "
        f"({declared / sr:.3f} s) but only {present} are present; the file was "
        "cut short (an interrupted copy or export?): re-create it, or drop it."
    )


@functools.lru_cache(maxsize=1)
def audio_extensions() -> frozenset[str]:
    """File extensions (lower case, with dot) of the formats this soundfile build reads."""
    exts = {"." + k.lower() for k in sf.available_formats()}
    exts |= {".aif", ".aiff", ".oga", ".opus"}
    return frozenset(exts - {".raw"})


@dataclass(frozen=True)
class AudioEntry:
    """One item to score: a stable ``id`` and where its audio comes from."""

    id: str
    source: str

    @property
    def label(self) -> str:
        """How messages name this entry: its path, or for a pipe its utterance id."""
        return f"utterance {self.id!r}" if _is_pipe(self.source) else self.source

    def read(self) -> tuple[torch.Tensor, int]:
        """Read this entry at its own rate (see :func:`read`)."""
        return read(self.source, name=self.label)

    def load(
        self, target_fs: int | None = None, *, progress: Callable[[int, int], None] | None = None
    ) -> Loaded:
        """Read this entry, with the file's own rate (see :func:`load`)."""
        return load(self.source, name=self.label, target_fs=target_fs, progress=progress)


_LIST_SUFFIXES = {".txt", ".lst", ".list", ".scp"}


def find_audio(inputs: Iterable[str | os.PathLike] | str | os.PathLike) -> list[AudioEntry]:
    """Expand files, folders (recursive), Kaldi ``wav.scp`` files and plain lists.

    * an audio file: id = its path as given (without extension);
    * a folder: every audio file below it, id = path relative to the folder, without
      extension (so ``enhanced/a/b.wav`` and ``clean/a/b.wav`` share the id ``a/b``);
    * a ``*.scp`` file: Kaldi lines ``<utt-id> <path or "cmd |">``, id = utt-id;
    * a ``.txt``/``.lst``/``.list`` file: one path per line.

    Relative paths in lists resolve against the current folder when they exist there (the
    Kaldi convention), else against the list's own folder.

    Ids stay unique and readable. When two files would share an id (``a/x.wav`` and
    ``b/x.wav`` given as folders ``a`` and ``b``, or ``x.wav`` and ``x.flac``), each of
    them is named by its path relative to their common folder instead (``a/x``, ``b/x``;
    the extension is kept only when it is what tells them apart). The same file listed
    more than once is kept each time (a training list may repeat a file on purpose); its
    repeats are named ``id#2``, ``id#3``.

    Raises :class:`AudioError` for a missing input, a folder with no audio files, an empty
    list, or a Kaldi utterance id used twice.
    """
    if isinstance(inputs, (str, os.PathLike)):  # one path, not an iterable of characters
        inputs = [inputs]
    entries: list[AudioEntry] = []
    exts = audio_extensions()
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in exts)
            if not found:
                raise AudioError(
                    f"{p}: the folder holds no audio files (looked for {', '.join(sorted(exts))})."
                )
            entries += [AudioEntry(q.relative_to(p).with_suffix("").as_posix(), str(q)) for q in found]
        elif not p.exists():
            raise AudioError(f"{p}: no such file or folder.")
        elif p.suffix.lower() in _LIST_SUFFIXES:
            listed = _read_list(p)
            if not listed:
                raise AudioError(f"{p}: the list holds no entries.")
            entries += listed
        else:
            entries.append(AudioEntry(str(p.with_suffix("")), str(p)))
    return _unique_ids(entries)


def _unique_ids(entries: list[AudioEntry]) -> list[AudioEntry]:
    """Rename colliding ids by relative path; a repeated listing of one file gets ``#n``."""
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault(e.id, []).append(i)
    out = list(entries)
    for uid, idx in groups.items():
        members = [entries[i] for i in idx]
        keys = {source_key(m.source) for m in members}
        if len(keys) == 1:  # one file (or command) listed again: numbered below
            continue
        if any(_is_pipe(m.source) for m in members):
            raise AudioError(f"the utterance id {uid!r} is used {len(idx)} times ("
                             + "; ".join(m.source for m in members) + "); ids in a wav.scp must be unique.")
        paths = [os.path.abspath(m.source) for m in members]
        base = os.path.commonpath([os.path.dirname(p) for p in paths])
        stems = [Path(os.path.relpath(p, base)).with_suffix("").as_posix() for p in paths]
        if len({(st, source_key(m.source)) for st, m in zip(stems, members)}) > len(set(stems)):
            stems = [Path(os.path.relpath(p, base)).as_posix() for p in paths]  # only the extension differs
        for i, new_id in zip(idx, stems):
            out[i] = AudioEntry(new_id, entries[i].source)
    seen: dict[str, int] = {}
    by_id: dict[str, str] = {}
    for i, e in enumerate(out):
        key = source_key(e.source)
        if e.id in by_id and by_id[e.id] != key:  # a renamed id met an id given elsewhere
            raise AudioError(f"the id {e.id!r} would name both {e.source} and another file; rename one "
                             "of them, or score the inputs in separate runs.")
        by_id[e.id] = key
        n = seen[e.id] = seen.get(e.id, 0) + 1
        if n > 1:
            out[i] = AudioEntry(f"{e.id}#{n}", e.source)
    return out


def source_key(source: str) -> str:
    """What identifies an entry's audio: the real path of a file, or a pipe's command.

    >>> source_key("sox take1.flac -t wav - | ")
    'sox take1.flac -t wav - |'
    """
    return source.strip() if _is_pipe(source) else os.path.realpath(source)


def _read_list(p: Path) -> list[AudioEntry]:
    out = []
    first_line: dict[str, tuple[int, str]] = {}  # Kaldi id -> (line, source) where first seen
    kaldi = p.suffix.lower() == ".scp"
    for lineno, raw in enumerate(p.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if kaldi:
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise AudioError(f"{p}:{lineno}: expected '<utt-id> <path>' in a Kaldi scp file, got {line!r}.")
            uid, src = parts
            if not _is_pipe(src) and ".ark:" in src:
                raise AudioError(
                    f"{p}:{lineno}: '{src}' is a Kaldi ark offset; score it through the ESPnet "
                    "stage (torchmos.adapters.espnet), which uses ESPnet's own readers."
                )
        else:
            src = line
            uid = ""
        if not _is_pipe(src) and not os.path.isabs(src) and not os.path.exists(src):
            src = str(p.parent / src)  # relative to the current folder first, else to the list
        if kaldi:
            prev = first_line.setdefault(uid, (lineno, source_key(src)))
            if prev[1] != source_key(src):
                raise AudioError(f"{p}:{lineno}: the utterance id {uid!r} already names another entry "
                                 f"on line {prev[0]}; ids in a wav.scp must be unique.")
        out.append(AudioEntry(uid or str(Path(src).with_suffix("")), src))
    return out
