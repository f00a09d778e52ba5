"""VERSA-style metric functions: ``torchmos_setup`` and ``torchmos_metric``.

VERSA (the speech/audio evaluation toolkit used by ESPnet) wraps each metric as a
``*_setup(...)`` function that loads the model once and a ``*_metric(model, pred_x, fs)``
function that scores one utterance (a 1-D numpy array) and returns a dict of named
scores. These two follow that shape, so a VERSA metric module or any script built the
same way can call torchmos; VERSA itself is not needed.

>>> import numpy as np
>>> handle = torchmos_setup("distillmos")
>>> sorted(torchmos_metric(handle, np.random.default_rng(0).normal(0, 0.1, 16000), 16000))
['distillmos']
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import audio
from . import Scorer

__all__ = ["torchmos_metric", "torchmos_setup"]


def torchmos_setup(model: str = "distillmos", use_gpu: bool = False, **options: Any) -> Scorer:
    """Load the predictor ``model`` (a torchmos card name) once; returns its handle."""
    device = "cuda" if use_gpu else "cpu"
    scorer = Scorer(model, device=device, **options)
    scorer.network(device)  # load now, not on the first utterance
    return scorer


def torchmos_metric(model: Scorer, pred_x: np.ndarray, fs: int, gt_x: np.ndarray | None = None,
                    key: str | None = None) -> dict[str, float]:
    """Score one utterance; ``{key or card name: score}``.

    ``pred_x`` is a 1-D array (a 2-D ``(time, channel)`` array is averaged over channels,
    as VERSA's readers return multichannel audio); ``gt_x`` is the reference, used only by
    reference models.
    """
    x = _mono(pred_x)
    ref = _mono(gt_x) if (gt_x is not None and model.card.mode == "ref") else None
    score = model([x], fs, refs=[ref] if ref is not None else None)
    return {key or model.name: float(score.reshape(-1)[0])}


def _mono(x: Any) -> torch.Tensor:
    t = audio.to_float(x if isinstance(x, (np.ndarray, torch.Tensor)) else np.asarray(x), "pred_x")
    return t.mean(dim=1) if t.dim() == 2 else t
