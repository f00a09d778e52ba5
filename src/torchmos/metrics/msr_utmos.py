"""The MSR-UTMOS metric and its functional twin: MOS at the audio's own sampling rate."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import audio, functional, hub
from ..models.msr_utmos import CARD, MsrUtmosModel
from .base import MOSMetric

__all__ = ["MsrUtmos", "msr_utmos"]


def _need_checkpoint(where: str) -> hub.HubError:
    return hub.HubError(
        f"{where}: MSR-UTMOS has no released weights, so checkpoint= is required: a model trained "
        "with `torchmos train sfi-distill` then `torchmos train msr-utmos` (runs/msr/model.pt), or "
        "the authors' Lightning checkpoint converted with "
        "torchmos.models.msr_utmos.MsrUtmosModel.from_lightning(ckpt).save('model.pt')."
    )


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

    card_name = CARD.name

    def __init__(self, fs: int = 16000, checkpoint: str | os.PathLike | None = None, sha256: str | None = None,
                 listener_ids: Sequence[int] | None = None, per_utterance: bool = False,
                 **kwargs: Any) -> None:
        if checkpoint is None:
            raise _need_checkpoint("MsrUtmos")
        model_kwargs = {"listener_ids": tuple(listener_ids)} if listener_ids is not None else {}
        super().__init__(fs=fs, checkpoint=checkpoint, sha256=sha256, per_utterance=per_utterance,
                         model_kwargs=model_kwargs, **kwargs)

    def _build(self, checkpoint: Any, sha256: str | None, **model_kwargs: Any) -> nn.Module:
        return MsrUtmosModel.from_pretrained(checkpoint=checkpoint, sha256=sha256, card=self.card.name,
                                             **model_kwargs)

    def _scores(self, preds: Any, lengths: Any, ids: Sequence[str] | None) -> Tensor:
        clips = audio.prepare(preds, self.fs, None, lengths, min_seconds=self.card.min_seconds, names=ids)
        return self._net(clips, self.fs)


def msr_utmos(preds: Any, fs: int, lengths: Any = None, checkpoint: str | os.PathLike | None = None,
              device: str | torch.device | None = None) -> Tensor:
    """MSR-UTMOS of each clip at its native rate ``fs`` (no resampling): a tensor (B,) of MOS.

    Args:
        preds: (T,), (B, T) (with ``lengths`` if padded), or a list of 1-D clips.
        fs: their sample rate, e.g. 48000.
        lengths: valid samples per row of a padded (B, T) tensor.
        checkpoint: the model file (required: no weights are released).
        device: where to run (default: the device of ``preds``).
    """
    if checkpoint is None:
        raise _need_checkpoint("msr_utmos")
    dev = torch.device(device) if device is not None else functional.device_of(preds)
    model = functional.get_model(CARD.name, checkpoint, device=dev)
    card = hub.get_card(CARD.name)
    clips = audio.prepare(preds, fs, None, lengths, min_seconds=card.min_seconds)
    return model(clips, audio.check_sample_rate(fs))
