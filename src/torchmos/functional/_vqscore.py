"""VQScore of each clip, statelessly (the twin of :class:`torchmos.VQScore`)."""

from __future__ import annotations

import os
from typing import Any

import torch

from .. import hub
from ._cache import get_model
from ._core import resolve_device, score

__all__ = ["vqscore"]


def vqscore(preds: Any, fs: int = 16000, lengths: Any = None, checkpoint: str | os.PathLike | None = None,
            device: str | torch.device | None = None, *, sha256: str | None = None,
            max_batch_frames: int = 8192) -> torch.Tensor:
    """VQScore of each clip: a tensor (B,), roughly in [0, 1], higher is better.

    Args:
        preds: (T,), (B, T) (with ``lengths`` if padded), or a list of 1-D clips.
        fs: their sample rate; anything other than 16 kHz is resampled.
        lengths: valid samples per row of a padded (B, T) tensor.
        checkpoint: a local model file (authors' layout or torchmos ``vqscore.pt``)
            instead of the authors' released model.
        device: where to run (default: the device of ``preds``).
        sha256: pin the weight file's checksum.
        max_batch_frames: clips are scored in groups of at most this many padded STFT
            frames (memory bound; results do not depend on it).

    >>> import os, tempfile, torch
    >>> from torchmos.models.vqscore import VQScoreModel
    >>> path = os.path.join(tempfile.mkdtemp(), "vq.pt")
    >>> _ = VQScoreModel(codebook_size=64, kmeans_init=False).save(path)
    >>> vqscore(torch.randn(2, 16000) * 0.1, fs=16000, lengths=[16000, 8000], checkpoint=path).shape
    torch.Size([2])
    """
    model = get_model("vqscore", checkpoint, sha256, device=resolve_device(device, preds),
                      max_batch_frames=max_batch_frames)
    return score(model, hub.get_card("vqscore"), preds, fs, lengths)
