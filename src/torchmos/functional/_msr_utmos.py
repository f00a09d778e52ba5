"""MSR-UTMOS of each clip at its own rate, statelessly (the twin of :class:`torchmos.MsrUtmos`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from .. import hub
from ._cache import get_model
from ._core import resolve_device, score

__all__ = ["msr_utmos"]

CARD_NAME = "msr-utmos"


def need_checkpoint(where: str) -> hub.HubError:
    """The error for an MSR-UTMOS built or called without ``checkpoint=``."""
    return hub.HubError(
        f"{where}: MSR-UTMOS has no released weights, so checkpoint= is required: a model trained "
        "with `torchmos train sfi-distill` then `torchmos train msr-utmos` (runs/msr/model.pt), or "
        "the authors' Lightning checkpoint converted with "
        "torchmos.models.msr_utmos.MsrUtmosModel.from_lightning(ckpt).save('model.pt')."
    )


def model_options(listener_ids: Sequence[int] | None) -> dict[str, Any]:
    """The predictor options of an MSR-UTMOS metric or call."""
    return {"listener_ids": tuple(listener_ids)} if listener_ids is not None else {}


def msr_utmos(preds: Any, fs: int = 16000, lengths: Any = None, checkpoint: str | os.PathLike | None = None,
              device: str | torch.device | None = None, *, sha256: str | None = None,
              listener_ids: Sequence[int] | None = None) -> torch.Tensor:
    """MSR-UTMOS of each clip at its native rate ``fs`` (no resampling): a tensor (B,) of MOS.

    Args:
        preds: (T,), (B, T) (with ``lengths`` if padded), or a list of 1-D clips.
        fs: their sample rate, e.g. 48000 (the model's rate too).
        lengths: valid samples per row of a padded (B, T) tensor.
        checkpoint: the model file (required: no weights are released; see
            ``docs/metrics/msr-utmos.md`` for training your own or converting the authors').
        device: where to run (default: the device of ``preds``).
        sha256: pin the file's checksum.
        listener_ids: listener ids averaged at inference (default 1-10, as the authors).

    >>> try:
    ...     msr_utmos([torch.zeros(16000)], fs=16000)
    ... except hub.HubError as e:
    ...     "checkpoint= is required" in str(e)
    True
    """
    if checkpoint is None:
        raise need_checkpoint("msr_utmos")
    model = get_model(CARD_NAME, checkpoint, sha256, device=resolve_device(device, preds),
                      **model_options(listener_ids))
    return score(model, hub.get_card(CARD_NAME), preds, fs, lengths)
