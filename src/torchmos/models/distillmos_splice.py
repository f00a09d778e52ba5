"""DistillMOS's CNN without the work on zero padding, exactly.

A clip shorter than 7.68 s is zero-padded to 7.68 s, and the CNN runs over the whole
crop. The padding's spectrum is exactly zero: a crop's samples are peak-normalised
(zero stays zero) and each STFT frame ``t`` reads the samples ``[160 t - 80, 160 t + 240)``
(the 80-sample reflect padding at either end reads inside the crop, and on the right only
samples that frame 767 reads anyway), so every frame from ``ceil((end + 80) / 160)`` on,
where ``end`` is one past the crop's last non-zero sample, is exactly zero.

A CNN output frame depends only on the input frames of its receptive field in time. Every
output frame whose receptive field lies in the zero frames is therefore the same number
for every input: the output, at that frame, of the CNN run over an all-zero spectrum. It
depends on the weights only, and is computed once per set of weights (per device, dtype
and autocast; recomputed when a parameter is replaced, moved or changed in place).

The splice runs the CNN over the first ``W`` frames only, where ``W`` is the smallest
width whose leading outputs are all exact (on the right of a truncated input, a layer
reads its convolution's zero padding where the full run would read the constants, so the
last few outputs of each layer are wrong; they are not used) up to the first constant
output frame, and takes the constants from there on. Same arithmetic on the same numbers:
the result is the unspliced one (tests/unit/test_distillmos_splice.py checks it at the
boundary lengths, to 1e-6).

Everything is derived from the CNN's own convolutions (kernel, stride, padding and
dilation in time), so it holds for any width or depth. It is used only where no gradient
is recorded through the CNN: the constants depend on the weights, and the zero frames
would get no gradient through them.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from . import winograd

__all__ = ["SplicePlan", "TailSplice", "content_end", "first_zero_frame", "leading_zeros", "run_layers"]

# elementwise modules that may sit between the convolutions
_ELEMENTWISE = (nn.LeakyReLU, nn.ReLU, nn.GELU, nn.SiLU, nn.ELU, nn.PReLU, nn.Tanh, nn.Sigmoid, nn.Identity)


def run_layers(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``seq(x)``, with the leaky ReLUs in place where no gradient is recorded (same values,
    no copies), and the 3x3 convolutions by Winograd's F(4, 3) along time in float32 on
    CPU (:mod:`~torchmos.models.winograd`: the same convolution, to float rounding)."""
    inplace = not torch.is_grad_enabled()
    for m in seq:
        if inplace and isinstance(m, nn.LeakyReLU):
            x = nn.functional.leaky_relu(x, m.negative_slope, inplace=True)
        elif inplace and winograd.applies(m, x):
            x = winograd.conv2d(m, x)
        else:
            x = m(x)
    return x


def content_end(crops: torch.Tensor) -> int:
    """One past the last non-zero sample of any row of ``crops`` (N, L); 0 if all zero."""
    nz = crops.ne(0)
    if nz.dim() == 2:
        nz = nz.any(0)
    if nz.numel() and bool(nz[-1]):  # the common case of a full crop: no search
        return nz.numel()
    idx = nz.nonzero()
    return int(idx[-1]) + 1 if idx.numel() else 0


def first_zero_frame(end: int, hop: int, win: int, lead: int = 0) -> int:
    """The first STFT frame (``center=False`` over a signal reflect-padded by
    ``(win - hop) // 2`` on each side) that reads no sample before ``end``, with a
    window whose first ``lead`` taps are zero (a periodic Hann window: 1); every frame
    from there on is exactly zero when the samples from ``end`` on are.

    >>> first_zero_frame(0, 160, 320), first_zero_frame(1, 160, 320), first_zero_frame(80, 160, 320)
    (0, 1, 1)
    >>> first_zero_frame(81, 160, 320), first_zero_frame(81, 160, 320, lead=1)
    (2, 1)
    """
    if end <= 0:
        return 0
    pad = (win - hop) // 2
    # frame t reads the signal from sample hop * t - pad + lead on; frame 0 (which also
    # reads samples 1..pad, reflected) is never zero when sample 0 is not
    return max(1, math.ceil((end + pad - lead) / hop))


def leading_zeros(window: torch.Tensor) -> int:
    """How many of the window's first taps are exactly zero."""
    nz = window.ne(0).nonzero()
    return int(nz[0]) if nz.numel() else int(window.numel())


@dataclass(frozen=True)
class SplicePlan:
    """Run the CNN over the first ``width`` input frames; keep its first ``keep`` output
    frames and take the constants from there on."""

    width: int
    keep: int


def _time_geometry(seq: nn.Sequential) -> tuple[tuple[int, int, int, int], ...] | None:
    """(kernel, stride, padding, dilation) in time of each convolution of ``seq``, or None
    when ``seq`` holds anything the splice does not understand."""
    geom = []
    for m in seq:
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                return None
            geom.append((m.kernel_size[1], m.stride[1], m.padding[1], m.dilation[1]))
        elif not isinstance(m, _ELEMENTWISE):
            return None
    return tuple(geom)


def _out_width(width: int, k: int, s: int, p: int, d: int) -> int:
    return (width + 2 * p - d * (k - 1) - 1) // s + 1


def _exact_prefix(geom: tuple[tuple[int, int, int, int], ...], width: int) -> int:
    """How many leading output frames are exact when the input is cut to its first
    ``width`` frames and every frame beyond is zero."""
    exact = None  # None: every output of the first layer is exact (it reads true zeros)
    for k, s, p, d in geom:
        out = _out_width(width, k, s, p, d)
        # output v reads inputs v*s - p .. v*s - p + d*(k - 1): all must be exact
        e = out if exact is None else max(0, min(out, (exact - 1 + p - d * (k - 1)) // s + 1))
        exact, width = e, out
    return width if exact is None else exact


def _first_constant(geom: tuple[tuple[int, int, int, int], ...], t0: int, out_frames: int) -> int:
    """The first output frame whose receptive field starts at or after input frame ``t0``."""
    for u in range(out_frames + 1):
        lo = u
        for _k, s, p, _d in reversed(geom):
            lo = lo * s - p
        if lo >= t0:
            return u
    return out_frames


@lru_cache(maxsize=4096)
def _plan(geom: tuple[tuple[int, int, int, int], ...], t0: int, frames: int) -> SplicePlan | None:
    out_frames = frames
    for k, s, p, d in geom:
        out_frames = _out_width(out_frames, k, s, p, d)
    u0 = _first_constant(geom, t0, out_frames)
    if u0 >= out_frames:
        return None
    for width in range(max(t0, 1), frames):
        if _exact_prefix(geom, width) >= u0:  # (a new width costs oneDNN no measurable set-up)
            return SplicePlan(width, u0)
    return None


class TailSplice:
    """The constants of one CNN (an ``nn.Sequential`` of convolutions and elementwise
    activations) over an all-zero input of ``frames`` frames, and the plans that use them."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self._const: dict[tuple, torch.Tensor] = {}
        self._lock = threading.Lock()  # a cached model is shared by threads

    def __getstate__(self) -> dict:  # copies and pickles start with no constants (and a new lock)
        return {"frames": self.frames}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["frames"])

    def plan(self, seq: nn.Sequential, zero_from: int, spec: torch.Tensor | None = None) -> SplicePlan | None:
        """How to run ``seq`` over a spectrum whose frames from ``zero_from`` on are exactly
        zero; None when the splice would save nothing, ``seq`` is not spliceable, or a
        gradient is being recorded through the CNN's parameters or ``spec``: the constants
        depend on the weights, and the zero frames (padding, or a clip's digital silence)
        would get no gradient through them."""
        if torch.is_grad_enabled() and (any(p.requires_grad for p in seq.parameters())
                                        or (spec is not None and spec.requires_grad)):
            return None
        geom = _time_geometry(seq)
        if not geom:
            return None
        return _plan(geom, int(zero_from), self.frames)

    def frames_needed(self, seq: nn.Sequential, zero_from: int, spec: torch.Tensor | None = None) -> int:
        """How many leading frames of the spectrum :meth:`__call__` reads (``spec``: the
        crops or spectrum it will be given, when they may need a gradient)."""
        plan = self.plan(seq, zero_from, spec)
        return self.frames if plan is None else plan.width

    def constants(self, seq: nn.Sequential, like: torch.Tensor) -> torch.Tensor:
        """``run_layers(seq, zeros)`` for one all-zero input shaped like ``like`` (1 row, all
        ``frames`` frames), cached for the current weights, device, dtype and autocast."""
        params = tuple((p.data_ptr(), p._version, p.dtype) for p in seq.parameters())
        dev = like.device
        autocast = torch.is_autocast_enabled(dev.type)
        key = (params, str(dev), like.dtype, tuple(like.shape[1:-1]), autocast,
               torch.get_autocast_dtype(dev.type) if autocast else None)
        hit = self._const.get(key)
        if hit is not None:
            return hit
        shape = (1, *like.shape[1:-1], self.frames)
        # an ordinary tensor (not an inference tensor) that needs no gradient
        with torch.inference_mode(False), torch.no_grad():
            zeros = torch.zeros(shape, device=dev, dtype=like.dtype)
            if like.dim() == 4:
                zeros = zeros.contiguous(memory_format=torch.channels_last)
            const = run_layers(seq, zeros)
        with self._lock:
            while len(self._const) >= 4:  # old weights, devices or dtypes
                self._const.pop(next(iter(self._const)))
            self._const[key] = const
        return const

    def __call__(self, seq: nn.Sequential, spec: torch.Tensor, zero_from: int) -> torch.Tensor:
        """``run_layers(seq, full_spec)`` where ``spec`` holds (at least) the leading
        :meth:`frames_needed` frames of a ``frames``-frame spectrum that is exactly zero from
        frame ``zero_from`` on."""
        plan = self.plan(seq, zero_from, spec)
        if plan is None:
            if spec.shape[-1] < self.frames:
                spec = nn.functional.pad(spec, (0, self.frames - spec.shape[-1]))
            return run_layers(seq, spec)
        if spec.shape[-1] < plan.width:
            raise ValueError(f"the spectrum holds {spec.shape[-1]} frames; the splice needs {plan.width}.")
        head = run_layers(seq, spec[..., : plan.width])[..., : plan.keep]
        const = self.constants(seq, spec)
        tail = const[..., plan.keep :].expand(head.shape[0], *const.shape[1:-1], -1)
        return torch.cat([head, tail.to(head.dtype)], dim=-1)
