"""DistillMOS of each clip, statelessly (the twin of :class:`torchmos.DistillMOS`)."""

from __future__ import annotations

import os
from typing import Any

import torch

from .. import hub
from ._cache import get_model
from ._core import resolve_device, score

__all__ = ["distillmos"]


def distillmos(preds: Any, fs: int = 16000, lengths: Any = None, checkpoint: str | os.PathLike | None = None,
               precision: str = "fp32", device: str | torch.device | None = None) -> torch.Tensor:
    """DistillMOS of each clip: a tensor (B,) of MOS in [1, 5].

    Args:
        preds: (T,), (B, T) (with ``lengths`` if padded), or a list of 1-D clips.
        fs: their sample rate; anything other than 16 kHz is resampled.
        lengths: valid samples per row of a padded (B, T) tensor.
        checkpoint: a local weight file instead of the official one.
        precision: "fp32" (faithful) or "bf16" (faster on CPUs with bf16; see docs).
        device: where to run (default: the device of ``preds``).

    >>> import torch, torchmos.functional as F
    >>> F.distillmos([torch.randn(16000) * 0.1, torch.randn(8000) * 0.1], fs=16000).shape
    torch.Size([2])
    """
    model = get_model("distillmos", checkpoint, device=resolve_device(device, preds), precision=precision)
    return score(model, hub.get_card("distillmos"), preds, fs, lengths)
