"""The DistillMOS metric."""

from __future__ import annotations

import os
from typing import Any

from .base import MOSMetric

__all__ = ["DistillMOS"]


class DistillMOS(MOSMetric):
    """DistillMOS: no-reference MOS of natural speech, in [1, 5] (higher is better).

    A CNN + transformer of 4,133,226 parameters (counted by tests/unit/test_distillmos.py),
    distilled from an XLS-R based predictor (Stahl & Gamper, ICASSP 2025). Official
    weights ship in the ``distillmos`` package, so it works offline. Clips shorter than
    7.68 s are zero-padded; longer ones are scored as the mean of overlapping 7.68 s crops.
    Trained on natural speech (noise suppression, codecs, packet loss); weak on TTS and
    voice conversion.

    Args:
        fs: sample rate of the audio given to :meth:`update` (resampled to 16 kHz).
        checkpoint: a local weight file instead of the official one.
        precision: ``"fp32"`` (faithful to the reference within 1e-4) or ``"bf16"``
            (opt-in and approximate: the CNN in bfloat16 on CPUs with native bf16; its speed
            and error are measured in docs/performance.md).
        per_utterance: also keep every clip's score (compute() returns a dict).
        differentiable: score through the network's gradient path, so the value
            ``forward`` returns carries gradients w.r.t. the audio
            (``is_differentiable`` is then True; the accumulated state never holds a graph,
            and ``update`` alone scores as without it). For a training loss see
            :class:`torchmos.losses.MOSLoss`.
        kwargs: ``torchmetrics.Metric`` options.

    Example:
        >>> import torch
        >>> from torchmos import DistillMOS
        >>> metric = DistillMOS(fs=16000)
        >>> g = torch.Generator().manual_seed(0)
        >>> metric.update(torch.randn(2, 16000, generator=g) * 0.1)
        >>> metric.update([torch.randn(24000, generator=g) * 0.1])
        >>> float(metric.compute()) > 1.0
        True
    """

    card_name = "distillmos"

    def __init__(self, fs: int = 16000, checkpoint: str | os.PathLike | None = None,
                 precision: str = "fp32", per_utterance: bool = False, differentiable: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(fs=fs, checkpoint=checkpoint, per_utterance=per_utterance,
                         model_kwargs={"precision": precision}, **kwargs)
        object.__setattr__(self, "is_differentiable", bool(differentiable))  # a torchmetrics "const"
