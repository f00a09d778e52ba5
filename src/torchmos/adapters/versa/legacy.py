"""What needs no VERSA: the legacy ``torchmos_setup`` / ``torchmos_metric`` pair, the
audio conversion VERSA's metrics share with it, and the error that says how to get VERSA."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ... import audio
from .._scoring import Scorer

__all__ = ["missing_versa", "mono", "torchmos_metric", "torchmos_setup"]

VERSA_SOURCE = "https://github.com/wavlab-speech/versa"


def missing_versa(error: BaseException | None = None) -> ImportError:
    """The ImportError raised when the VERSA-form metrics are used without VERSA."""
    return ImportError(
        "torchmos' VERSA metrics need VERSA, which is not installed (or failed to import"
        f"{': ' + str(error) if error else ''}). VERSA is not on PyPI; install it from its source: "
        f"git clone {VERSA_SOURCE} && pip install -e ./versa "
        "(its scorer also imports kaldiio, pyyaml, tqdm, scipy and soundfile). "
        "The legacy torchmos_setup / torchmos_metric pair needs no VERSA."
    )


def torchmos_setup(model: str = "distillmos", use_gpu: bool = False, **options: Any) -> Scorer:
    """Load the predictor ``model`` (a torchmos card name) once; returns its handle."""
    device = "cuda" if use_gpu else "cpu"
    scorer = Scorer(model, device=device, **options)
    scorer.network(device)  # load now, not on the first utterance
    return scorer


def torchmos_metric(model: Scorer, pred_x: np.ndarray, fs: int, gt_x: np.ndarray | None = None,
                    key: str | None = None) -> dict[str, float]:
    """Score one utterance; ``{key or card name: score}``.

    ``pred_x`` is a 1-D array (a 2-D ``(time, channel)`` array is averaged over channels);
    ``gt_x`` is the reference, used only by reference models.
    """
    x = mono(pred_x, "pred_x")
    ref = mono(gt_x, "gt_x") if (gt_x is not None and model.card.mode == "ref") else None
    score = model([x], fs, refs=[ref] if ref is not None else None)
    return {key or model.name: float(score.reshape(-1)[0])}


def mono(x: Any, where: str = "pred_x") -> torch.Tensor:
    """One utterance as a 1-D float tensor: a ``(time, channel)`` array is averaged over
    channels, integer PCM is scaled to [-1, 1] (:func:`torchmos.audio.to_float`)."""
    t = audio.to_float(x if isinstance(x, (np.ndarray, torch.Tensor)) else np.asarray(x), where)
    if t.dim() > 2:
        raise ValueError(f"{where}: expected one utterance, (time,) or (time, channel); got shape {tuple(t.shape)}.")
    return t.mean(dim=1) if t.dim() == 2 else t
