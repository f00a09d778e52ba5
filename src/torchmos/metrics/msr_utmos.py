"""The MSR-UTMOS metric: MOS at the audio's own sampling rate. Its functional twin
:func:`torchmos.functional.msr_utmos` is importable from here too."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..functional import msr_utmos as msr_utmos
from ..functional._msr_utmos import CARD_NAME, model_options, need_checkpoint
from .base import MOSMetric

__all__ = ["MsrUtmos", "msr_utmos"]


class MsrUtmos(MOSMetric):
    """MSR-UTMOS: no-reference naturalness MOS in [1, 5] at the audio's native rate (higher is better).

    An SSL model (wav2vec 2.0 / HuBERT / WavLM) whose first convolution is
    sampling-frequency independent, with a UTMOS-style head (Nishikawa et al., AudioMOS
    Challenge 2025). Audio is **not resampled**: 8, 16, 24, 44.1 or 48 kHz audio is scored
    as it is, so the band above 8 kHz counts. Clips of the same rate and length share a
    batch; a clip's score never depends on the rest of the batch.

    Args:
        fs: sample rate of the audio given to :meth:`update` (the model's rate too).
        checkpoint: the model file (required: no weights are released; see
            ``docs/metrics/msr-utmos.md`` for training your own or converting the authors').
        sha256: pin the file's checksum.
        listener_ids: listener ids averaged at inference (default 1-10, as the authors).
        per_utterance: also keep every clip's score (compute() returns a dict).
        kwargs: ``torchmetrics.Metric`` options.

    Example:
        >>> from torchmos import MsrUtmos                                 # doctest: +SKIP
        >>> metric = MsrUtmos(fs=48000, checkpoint="runs/msr/model.pt")   # doctest: +SKIP
        >>> metric.update(wavs_48k); metric.compute()                     # doctest: +SKIP
    """

    card_name = CARD_NAME

    def __init__(self, fs: int = 16000, checkpoint: str | os.PathLike | None = None, sha256: str | None = None,
                 listener_ids: Sequence[int] | None = None, per_utterance: bool = False,
                 **kwargs: Any) -> None:
        if checkpoint is None:
            raise need_checkpoint("MsrUtmos")
        super().__init__(fs=fs, checkpoint=checkpoint, sha256=sha256, per_utterance=per_utterance,
                         model_kwargs=model_options(listener_ids), **kwargs)

