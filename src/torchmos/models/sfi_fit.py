"""Initialising an SFI convolution (:mod:`torchmos.models.sfi`) from an ordinary kernel:
fitting its analog filters so that the kernel it generates at the reference rate matches
a pretrained 16 kHz model's first convolution."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .sfi_filters import ModulatedGaussian

if TYPE_CHECKING:
    from .sfi import SFIConv1d

__all__ = ["fit_to_kernel"]


def fit_to_kernel(layer: SFIConv1d, weight: Tensor, steps: int = 300, lr: float | None = None) -> float:
    """Fit the analog filters so that the kernel generated at the reference rate matches
    ``weight`` (out, in, K0), e.g. the first conv of a pretrained 16 kHz model.

    Neural filters fit the kernels themselves (normalised squared error); what they do
    above ``F0/2`` is left to distillation (asking them to be silent there, as the
    16 kHz model's band-limited input would suggest, made 48 kHz features worse in our
    trials: a sharp edge at ``F0/2`` cannot be realised in the short window). Modulated
    Gaussians have unit peak gain and can only match a kernel's shape: they are
    initialised at each kernel's spectral peak (centre, width, phase) and then fit
    ``1 - cosine similarity``; the gain is lost, which a following per-channel
    normalisation (wav2vec 2.0's GroupNorm) makes irrelevant. Returns the final mean
    loss. Leaves the layer's mode and the kernel cache consistent.
    """
    f0 = layer.ref_sample_rate
    target = weight.detach().to(torch.float32).reshape(-1, layer.ref_kernel_size)
    if target.shape[0] != layer.in_channels * layer.out_channels:
        raise ValueError(f"weight has {target.shape[0]} kernels, this layer {layer.in_channels * layer.out_channels}.")
    p0 = next(layer.analog.parameters())
    target = target.to(p0.device)
    gauss = isinstance(layer.analog, ModulatedGaussian)
    if gauss:
        _init_gauss_from(layer, target)
    groups = ([{"params": [layer.analog.mu, layer.analog.sigma], "lr": lr or 3e-3},
               {"params": [layer.analog.phi], "lr": 10 * (lr or 3e-3)}] if gauss
              else [{"params": list(layer.analog.parameters()), "lr": lr or 3e-3}])
    opt = torch.optim.Adam(groups)
    tnorm = target.norm(dim=1).clamp_min(1e-12)
    loss = torch.tensor(float("nan"))
    with torch.enable_grad():
        for _ in range(max(0, int(steps))):
            w = layer._generate(f0)[0].reshape(target.shape)
            if gauss:
                cos = (w * target).sum(1) / (w.norm(dim=1).clamp_min(1e-12) * tnorm)
                loss = (1 - cos).mean()
            else:
                loss = (((w - target) ** 2).sum(1) / tnorm**2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    layer.clear_cache()
    return float(loss.detach())


@torch.no_grad()
def _init_gauss_from(layer: SFIConv1d, target: Tensor) -> None:
    """Centre, width and phase of each kernel's spectral peak (reference-rate DTFT)."""
    f0 = layer.ref_sample_rate
    om = layer.omega(f0, device=target.device, dtype=torch.float64)
    d = layer.delays(f0)[0].to(target.device)
    spec = target.double().to(torch.complex128) @ torch.exp(-1j * d[:, None] * om[None, :])  # (n, M)
    mag = spec.abs()
    peak = torch.argmax(mag, dim=1)
    mu = om[peak]
    phi = torch.angle(spec[torch.arange(len(peak)), peak])
    p2 = mag**2
    var = (p2 * (om[None, :] - mu[:, None]) ** 2).sum(1) / p2.sum(1).clamp_min(1e-30)
    unit = 2 * math.pi * layer.analog.unit_hz
    sigma = var.sqrt().clamp(2 * math.pi * 50.0, math.pi * f0)
    layer.analog.mu.copy_((mu / unit).to(layer.analog.mu.dtype))
    layer.analog.sigma.copy_((sigma / unit).to(layer.analog.sigma.dtype))
    layer.analog.phi.copy_(phi.to(layer.analog.phi.dtype))
