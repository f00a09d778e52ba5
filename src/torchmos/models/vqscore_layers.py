"""VQScore's encoder and decoder (SPECS §3): 1-D convolutions over magnitude spectra, with
instance norms that use each clip's own frames, so that a padded batch scores as its
clips alone. Module names follow the authors' ``VQVAE_QE`` (``conv_enc1`` ...), so their
checkpoint loads strictly."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IN_EPS", "N_FFT", "N_FREQ", "SLOPE"]

N_FFT = 512
N_FREQ = N_FFT // 2 + 1
IN_EPS = 1e-5  # InstanceNorm1d's default
SLOPE = 0.3  # LeakyReLU negative slope


def _instance_norm(x: Tensor, mask: Tensor | None, count: Tensor | None) -> Tensor:
    """InstanceNorm1d (no affine, no running stats) over the valid frames only."""
    if mask is None:
        return F.instance_norm(x, eps=IN_EPS)
    mean = (x * mask).sum(dim=-1, keepdim=True) / count
    centred = (x - mean) * mask
    var = (centred * centred).sum(dim=-1, keepdim=True) / count
    return centred * torch.rsqrt(var + IN_EPS)


def _convs(*widths: int) -> list[nn.Conv1d]:
    """The chain of kernel-7 "same" convolutions ``widths[0] -> widths[1] -> ...``."""
    return [nn.Conv1d(a, b, kernel_size=7, stride=1, padding=3) for a, b in zip(widths[:-1], widths[1:])]


class _Encoder(nn.Module):
    """|X| (B, 257, T) -> z (B, dim, T); instance norm on the input and after every layer."""

    def __init__(self, channels: Sequence[int] = (128, 64), dim: int = 32) -> None:
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        (self.conv_enc1, self.conv_enc2, self.conv_enc3, self.conv_enc4, self.conv_enc5,
         self.conv_enc6) = _convs(N_FREQ, c1, c1, c2, c2, dim, dim)

    def forward(self, mag: Tensor, mask: Tensor | None = None) -> Tensor:
        count = None if mask is None else mask.sum(dim=-1, keepdim=True)

        def norm(t: Tensor) -> Tensor:  # masked output is exactly zero beyond each clip
            return _instance_norm(t, mask, count)

        def act(t: Tensor) -> Tensor:
            return F.leaky_relu(t, SLOPE)

        x = norm(mag)
        e1 = norm(act(self.conv_enc1(x)))
        e2 = norm(act(self.conv_enc2(e1)))
        e3 = norm(act(self.conv_enc3(e1 + e2)))
        e4 = norm(act(self.conv_enc4(e3)))
        e5 = norm(act(self.conv_enc5(e3 + e4)))
        return norm(self.conv_enc6(e5))


class _Decoder(nn.Module):
    """zq (B, dim, T) -> reconstructed |X| (B, 257, T), non-negative."""

    def __init__(self, channels: Sequence[int] = (128, 64), dim: int = 32) -> None:
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        (self.conv_dec1, self.conv_dec2, self.conv_dec3, self.conv_dec4, self.conv_dec5,
         self.conv_dec6) = _convs(dim, dim, c2, c2, c1, c1, N_FREQ)

    def forward(self, zq: Tensor, mask: Tensor | None = None) -> Tensor:
        def act(t: Tensor) -> Tensor:  # zero beyond each clip, as a lone clip's conv padding
            t = F.leaky_relu(t, SLOPE)
            return t if mask is None else t * mask

        zq = zq if mask is None else zq * mask
        d1 = act(self.conv_dec1(zq))
        d2 = act(self.conv_dec2(d1))
        d3 = act(self.conv_dec3(d2))
        d4 = act(self.conv_dec4(d3 + d2))
        d5 = act(self.conv_dec5(d4))
        out = F.relu(self.conv_dec6(d5 + d4))
        return out if mask is None else out * mask
