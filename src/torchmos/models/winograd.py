"""3x3 convolutions with Winograd's F(4, 3) along time, for inference on CPU.

DistillMOS's CNN is five 3x3 convolutions with stride 1 in time (and 1 or 2 in
frequency) before its last one. Direct convolution spends 9 multiply-adds per weight and
output; Winograd's minimal filtering algorithm F(4, 3) (Lavin and Gray, "Fast Algorithms
for Convolutional Neural Networks", 2016), applied along time only, computes 4 outputs
of a 3-tap filter from 6 inputs with 6 products instead of 12:

* each tile of 6 input frames (starting every 4 frames) is transformed by ``B^T`` into
  6 frames, a few additions per value;
* the 3 time taps of the kernel are transformed by ``G`` into 6 (once per set of weights);
* the 6 transformed inputs are convolved with the 6 transformed kernels, each a 3x1
  convolution over frequency: the same GEMMs as before, on a third of the taps and half
  the frames, so half the multiply-adds;
* ``A^T`` turns the 6 results back into 4 output frames.

In exact arithmetic the result is the convolution's; in float32 it differs by rounding
(about 3e-6 of a layer's largest output with DistillMOS's weights), and DistillMOS's
scores by far less than the 1e-4 the exact mode keeps to the reference
(``tests/unit/test_winograd.py``, ``benchmarks/bench_distillmos.py``). It is used only for
float32 on CPU where no gradient is recorded and no autocast is active: elsewhere (CUDA,
bf16, training, the MOS loss) the convolution runs as written, and so it does on a CPU
with AVX-512, where oneDNN's direct convolution is faster than F(4, 3) (:func:`pays_here`).
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn

__all__ = ["BLOCK", "MIN_CHANNELS", "MIN_FRAMES", "applies", "conv2d", "eligible", "pays_here"]

M, R = 4, 3  # outputs per tile, filter taps
A = M + R - 1  # inputs per tile
MIN_FRAMES = 8  # narrower inputs run as written (nothing to save)
MIN_CHANNELS = 128
BLOCK = 96  # tiles per pass of the transforms (384 frames; fewer cost time in per-call overhead)

# F(4, 3) at the points 0, 1, -1, 2, -2 and infinity
_G = torch.tensor([[1 / 4, 0, 0],
                   [-1 / 6, -1 / 6, -1 / 6],
                   [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6],
                   [1 / 24, -1 / 12, 1 / 6],
                   [0, 0, 1]], dtype=torch.float64)

_cache: weakref.WeakKeyDictionary[nn.Conv2d, tuple[tuple, list[torch.Tensor]]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def pays_here() -> bool:
    """Whether the CPU's kernels are AVX2 ones (``torch.backends.cpu.get_cpu_capability()``),
    where F(4, 3) beats oneDNN's direct convolution. With AVX-512 oneDNN's direct
    convolution is about twice as fast, and F(4, 3) is slower than it
    (``benchmarks/results/distillmos.json``, settings ``avx2`` and ``native``)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX2"


def applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`conv2d` runs ``conv(x)``: on a CPU where it pays (:func:`pays_here`),
    a convolution it can run (:func:`eligible`)."""
    return eligible(conv, x) and pays_here()


def eligible(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`conv2d` can run ``conv(x)``: a plain 3x3 convolution with stride 1 and
    padding 1 in time, float32 on CPU, no gradient recorded, no autocast, an input of at
    least :data:`MIN_FRAMES` frames, and at least :data:`MIN_CHANNELS` input and output
    channels (below that the transforms, which grow with the channels, cost about as much
    as the products saved, which grow with their product: DistillMOS's layers 1-3, with 2
    or 64 input channels, run as written)."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride[1] == 1
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and conv.padding[1] == 1 and conv.in_channels >= MIN_CHANNELS
            and conv.out_channels >= MIN_CHANNELS
            and x.dim() == 4 and x.device.type == "cpu" and x.dtype == torch.float32
            and conv.weight.dtype == torch.float32 and x.shape[-1] >= MIN_FRAMES
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"))


def _kernels(conv: nn.Conv2d) -> list[torch.Tensor]:
    """The 6 transformed kernels (O, I, 3, 1), computed in float64 once per set of weights
    (recomputed when a parameter is replaced or changed in place)."""
    w = conv.weight
    key = (w.data_ptr(), w._version, w.dtype, str(w.device))
    hit = _cache.get(conv)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.inference_mode(False), torch.no_grad():
        u = torch.einsum("jk,oifk->joif", _G, w.detach().double()).to(w.dtype)
        kernels = [u[j].unsqueeze(-1).contiguous(memory_format=torch.channels_last) for j in range(A)]
    with _lock:
        _cache[conv] = (key, kernels)
    return kernels


def conv2d(conv: nn.Conv2d, x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """``conv(x)`` for (N, C, F, T) ``x`` where :func:`eligible`; channels-last output.

    The tiles are taken ``block`` at a time, so the transforms' temporaries stay a fixed
    size (a few MB) whatever the input's length, and in cache.

    >>> conv = nn.Conv2d(128, 128, 3, stride=(2, 1), padding=(0, 1))
    >>> x = torch.randn(1, 128, 9, 30)
    >>> with torch.no_grad():
    ...     eligible(conv, x), bool((conv2d(conv, x) - conv(x)).abs().max() < 1e-4)
    (True, True)
    """
    n, _, _, t = x.shape
    tiles = -(-t // M)
    # time padding: 1 on the left (the convolution's), zeros on the right up to whole tiles
    xl = nn.functional.pad(x, (1, tiles * M + R - 1 - t - 1)).permute(0, 2, 3, 1)  # (N, F, T', C)
    if not xl.is_contiguous():
        xl = xl.contiguous()
    kernels = _kernels(conv)
    fo = (x.shape[2] + 2 * conv.padding[0] - 3) // conv.stride[0] + 1
    out = torch.empty((n, fo, tiles, M, conv.out_channels), dtype=x.dtype, device=x.device)
    for lo in range(0, tiles, block):
        hi = min(lo + block, tiles)
        _tiles(conv, kernels, xl[:, :, M * lo : M * hi + R - 1], out[:, :, lo:hi])
    out = out.view(n, fo, tiles * M, conv.out_channels)
    if tiles * M != t:
        out = out[:, :, :t].contiguous()
    return out.permute(0, 3, 1, 2)  # (N, O, F', T), channels-last in memory


def _tiles(conv: nn.Conv2d, kernels: list[torch.Tensor], xl: torch.Tensor, out: torch.Tensor) -> None:
    """F(4, 3) over the tiles of ``xl`` (N, F, 4 k + 2, C), into ``out`` (N, F', k, 4, O)."""
    k = out.shape[2]
    d = [xl[:, :, j : j + M * (k - 1) + 1 : M] for j in range(A)]  # (N, F, k, C) each
    stride, pad = (conv.stride[0], 1), (conv.padding[0], 0)

    def product(j: int, v: torch.Tensor) -> torch.Tensor:
        # a 3x1 convolution over frequency; the bias rides on m1 (see below)
        return nn.functional.conv2d(v.permute(0, 3, 1, 2), kernels[j], conv.bias if j == 1 else None,
                                    stride=stride, padding=pad).permute(0, 2, 3, 1)

    # B^T d, each transformed input used as soon as it is made
    m0 = product(0, torch.add(d[4], d[2], alpha=-5).add_(d[0], alpha=4))
    m5 = product(5, torch.add(d[5], d[3], alpha=-5).add_(d[1], alpha=4))
    s34, s12 = d[3] + d[4], d[1] + d[2]
    m1 = product(1, torch.add(s34, s12, alpha=-4))
    del s34, s12
    d34, d12 = d[4] - d[3], d[1] - d[2]
    m2 = product(2, torch.add(d34, d12, alpha=4))
    del d34, d12
    e, f = d[4] - d[2], d[3] - d[1]
    m3 = product(3, torch.add(e, f, alpha=2))
    m4 = product(4, torch.add(e, f, alpha=-2))
    del e, f, d
    # A^T m; m1 carries the bias, and each output takes m1 exactly once
    s12, d12 = m1 + m2, m1.sub_(m2)
    del m1, m2
    s34, d34 = m3 + m4, m3.sub_(m4)
    del m3, m4
    torch.add(m0, s12, out=out[:, :, :, 0]).add_(s34)
    torch.add(d12, d34, alpha=2, out=out[:, :, :, 1])
    torch.add(s12, s34, alpha=4, out=out[:, :, :, 2])
    torch.add(d12, d34, alpha=8, out=out[:, :, :, 3]).add_(m5)
