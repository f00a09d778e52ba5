"""Bounded-memory resampling with torchaudio's default windowed-sinc filter.

:func:`resample` keeps its filters and work buffers to a few tens of MB for any pair of
rates, and refuses, naming the item, the rates it could not resample within that.
:func:`import_torchaudio` is the lazy door to torchaudio: it is imported on the first clip
that needs resampling, never by ``import torchmos``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any

import torch

from .checks import AudioError, check_sample_rate

__all__ = [
    "BLOCK_SAMPLES",
    "CACHE_MAX_BYTES",
    "DENSE_MAX_TAPS",
    "MIN_RESAMPLE_RATE",
    "TABLE_MAX_BYTES",
    "import_torchaudio",
    "resample",
]

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

