"""The latent analog filters of an SFI convolution (:mod:`torchmos.models.sfi`): continuous
frequency responses ``H(omega)`` from which the layer generates digital kernels at any
sample rate.

* :class:`ModulatedGaussian`: a Gaussian in frequency, modulated (centre ``mu``, width
  ``sigma``, phase ``phi`` learnable per filter), ERB-spaced at initialisation;
* :class:`NeuralAnalogFilter`: an MLP on random Fourier features of the normalised
  frequency, for all filters at once.

>>> g = ModulatedGaussian(4)
>>> re, im = g.response(torch.linspace(0, 3.14e4, 5))
>>> re.shape, bool((g.centre_hz() <= 8000.5).all())
(torch.Size([4, 5]), True)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ModulatedGaussian", "NeuralAnalogFilter", "erb_to_hz", "hz_to_erb"]


def hz_to_erb(f: Tensor | float) -> Tensor:
    """ERB-rate (Glasberg & Moore 1990) of frequencies in Hz: ``9.265 ln(1 + f / 228.8)``."""
    f = torch.as_tensor(f, dtype=torch.float64)
    return 9.265 * torch.log1p(f / (24.7 * 9.265))


def erb_to_hz(e: Tensor | float) -> Tensor:
    """Inverse of :func:`hz_to_erb`."""
    e = torch.as_tensor(e, dtype=torch.float64)
    return 24.7 * 9.265 * torch.expm1(e / 9.265)


# ----------------------------------------------------------------------------- analog filters


class ModulatedGaussian(nn.Module):
    """``n`` modulated Gaussian analog filters (real impulse responses).

    Args:
        n_filters: number of filters.
        ref_sample_rate: ``F0``; ``mu`` and ``sigma`` are in units of ``F0 / 2`` Hz.
        freq_range: (low, high) Hz of the ERB-spaced initial centres (default 50 Hz to ``F0/2``).
        init_sigma_hz: initial ``sigma`` in Hz (standard deviation of the Gaussian in frequency).
        min_sigma_hz: lower bound of ``sigma`` in Hz.
    """

    def __init__(self, n_filters: int, ref_sample_rate: int = 16000, freq_range: tuple[float, float] | None = None,
                 init_sigma_hz: float = 400.0, min_sigma_hz: float = 1.0) -> None:
        super().__init__()
        self.unit_hz = ref_sample_rate / 2.0
        lo, hi = freq_range or (50.0, ref_sample_rate / 2.0)
        erb = torch.linspace(float(hz_to_erb(lo)), float(hz_to_erb(hi)), n_filters, dtype=torch.float64)
        self.mu = nn.Parameter((erb_to_hz(erb) / self.unit_hz).float())
        self.sigma = nn.Parameter(torch.full((n_filters,), init_sigma_hz / self.unit_hz))
        self.phi = nn.Parameter(torch.rand(n_filters) * math.pi)
        self.min_sigma = min_sigma_hz / self.unit_hz

    @property
    def n_filters(self) -> int:
        return self.mu.shape[0]

    def _rad(self) -> tuple[Tensor, Tensor]:
        scale = 2 * math.pi * self.unit_hz  # unit -> rad/s
        return self.mu * scale, self.sigma.abs().clamp_min(self.min_sigma) * scale

    def response(self, omega: Tensor) -> tuple[Tensor, Tensor]:
        """(Re H, Im H) at angular frequencies ``omega`` (rad/s), each (n, len(omega))."""
        mu, sigma = self._rad()
        w = omega[None, :]
        g1 = torch.exp(-((w - mu[:, None]) ** 2) / (2 * sigma[:, None] ** 2))
        g2 = torch.exp(-((w + mu[:, None]) ** 2) / (2 * sigma[:, None] ** 2))
        c, s = torch.cos(self.phi)[:, None], torch.sin(self.phi)[:, None]
        return (g1 + g2) * c, (g1 - g2) * s

    def impulse(self, t: Tensor) -> Tensor:
        """Analog impulse response ``h(t)`` (per second) at times ``t`` (s): (n, len(t))."""
        mu, sigma = self._rad()
        env = (2 * sigma[:, None] / math.sqrt(2 * math.pi)) * torch.exp(-(sigma[:, None] * t[None, :]) ** 2 / 2)
        return env * torch.cos(mu[:, None] * t[None, :] + self.phi[:, None])

    def centre_hz(self) -> Tensor:
        """Centre frequencies in Hz, (n,)."""
        return (self.mu * self.unit_hz).abs()

    def extra_repr(self) -> str:
        return f"n_filters={self.n_filters}, unit_hz={self.unit_hz:g}"


class _GridNorm(nn.Module):
    """``GroupNorm(1, C)`` over (features x the whole frequency grid), as the authors' NAF."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # (M, C)
        mean = x.mean()
        var = x.var(unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class NeuralAnalogFilter(nn.Module):
    """``n`` neural analog filters: an MLP on random Fourier features of normalised frequency.

    ``nu = f / norm_freq`` (default ``F0 / 2``, so ``nu`` is 1 at the reference Nyquist);
    features ``[cos(b nu), sin(b nu)]`` with learnable ``b`` (``n_rff`` of them, drawn
    from ``N(0, (2 pi rff_scale)^2)``); hidden layers ``Linear -> norm -> ReLU``; the last
    layer gives ``Re H`` of every filter then ``Im H`` of every filter.

    Args:
        norm: ``"layer"`` (per frequency: ``H`` is a function of frequency alone) or
            ``"grid"`` (over the whole frequency grid, as the authors' ``GroupNorm(1, C)``).
    """

    def __init__(self, n_filters: int, ref_sample_rate: int = 16000, n_rff: int = 128,
                 hidden: tuple[int, ...] = (224, 224), rff_scale: float = 10.0, norm: str = "layer",
                 norm_freq: float | None = None) -> None:
        super().__init__()
        if norm not in ("layer", "grid"):
            raise ValueError(f"norm must be 'layer' or 'grid', got {norm!r}.")
        self.n = int(n_filters)
        self.norm_kind = norm
        self.norm_freq = float(norm_freq or ref_sample_rate / 2.0)
        self.rff = nn.Parameter(torch.randn(n_rff) * (2 * math.pi * rff_scale))
        layers: list[nn.Module] = []
        width = 2 * n_rff
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h) if norm == "layer" else _GridNorm(h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 2 * self.n))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def n_filters(self) -> int:
        return self.n

    def response(self, omega: Tensor) -> tuple[Tensor, Tensor]:
        """(Re H, Im H) at angular frequencies ``omega`` (rad/s), each (n, len(omega))."""
        nu = omega / (2 * math.pi * self.norm_freq)
        z = nu[:, None] * self.rff[None, :]
        out = self.net(torch.cat([torch.cos(z), torch.sin(z)], dim=1))  # (M, 2n)
        return out[:, : self.n].T, out[:, self.n :].T

    def extra_repr(self) -> str:
        return f"n_filters={self.n}, n_rff={self.rff.shape[0]}, norm={self.norm_kind!r}, norm_freq={self.norm_freq:g}"

