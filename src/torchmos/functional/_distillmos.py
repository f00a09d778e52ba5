"""DistillMOS of each clip, statelessly (the twin of :class:`torchmos.DistillMOS`)."""

from __future__ import annotations

import os
from typing import Any

import torch

from .. import audio, hub
from ..models import gradients
from ._cache import get_model
from ._core import model_rate, resolve_device, score

__all__ = ["distillmos"]


def distillmos(preds: Any, fs: int = 16000, lengths: Any = None, checkpoint: str | os.PathLike | None = None,
               precision: str = "fp32", device: str | torch.device | None = None, *,
               differentiable: bool = False) -> torch.Tensor:
    """DistillMOS of each clip: a tensor (B,) of MOS in [1, 5].

    Args:
        preds: (T,), (B, T) (with ``lengths`` if padded), or a list of 1-D clips.
        fs: their sample rate; anything other than 16 kHz is resampled.
        lengths: valid samples per row of a padded (B, T) tensor.
        checkpoint: a local weight file instead of the official one.
        precision: "fp32" (faithful) or "bf16" (faster on CPUs with bf16; see docs).
        device: where to run (default: the device of ``preds``).
        differentiable: when gradients are enabled, score through the network's gradient
            path (:func:`torchmos.models.gradients.mos`): the scores carry gradients
            w.r.t. ``preds``. Without gradients the scores are the inference path's.

    >>> import torch, torchmos.functional as F
    >>> F.distillmos([torch.randn(16000) * 0.1, torch.randn(8000) * 0.1], fs=16000).shape
    torch.Size([2])
    """
    model = get_model("distillmos", checkpoint, device=resolve_device(device, preds), precision=precision)
    card = hub.get_card("distillmos")
    if differentiable and torch.is_grad_enabled():
        return gradients.mos(model, audio.prepare(preds, fs, model_rate(card), lengths, min_seconds=card.min_seconds))
    return score(model, card, preds, fs, lengths)
