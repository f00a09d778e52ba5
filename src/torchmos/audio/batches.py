"""Batches of clips: what a user passes to a metric, checked and converted; padding.

:func:`prepare` turns a tensor, a numpy array or a list of clips of any lengths
(optionally with explicit ``lengths``) into a list of mono float32 1-D tensors at the
model's sample rate; :func:`pad_batch` pads clips back into one tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .checks import AudioError, _check_clip, check_sample_rate, to_float
from .resampling import resample

__all__ = ["pad_batch", "prepare"]



def _name(names: Sequence[str] | None, i: int, arg: str) -> str:
    if names is not None and i < len(names):
        return f"{arg}[{i}] ({names[i]})" if arg else str(names[i])
    return f"{arg}[{i}]"


def prepare(
    preds: Any,
    fs: Any,
    target_fs: int | None,
    lengths: Any = None,
    *,
    min_seconds: float = 0.0,
    names: Sequence[str] | None = None,
    arg: str = "preds",
) -> list[torch.Tensor]:
    """Check and convert a batch of clips into mono float32 1-D tensors at ``target_fs``.

    Args:
        preds: a 1-D tensor/array (one clip), a 2-D ``(B, T)`` tensor/array (B clips, with
            ``lengths`` if they are padded), or a list/tuple of 1-D tensors/arrays of any
            lengths. Integer PCM is scaled to [-1, 1].
        fs: sample rate of ``preds`` in Hz.
        target_fs: the model's rate; clips are resampled to it (``None`` keeps ``fs``).
        lengths: valid samples per row of a 2-D ``preds`` (at ``fs``); padding beyond a
            row's length is never seen by a model.
        min_seconds: the model's minimum duration; shorter clips are refused.
        names: optional ids used in error messages instead of bare indices.
        arg: the argument name used in error messages (``""`` with ``names``: items are
            named by their names alone, e.g. file paths).

    Returns:
        list of B float32 1-D tensors, on the device of the input.

    >>> clips = prepare(torch.randn(2, 8000), fs=8000, target_fs=16000, lengths=[8000, 4000])
    >>> [c.shape[0] for c in clips]
    [16000, 8000]
    """
    fs = check_sample_rate(fs, arg)
    if isinstance(preds, (list, tuple)):
        if lengths is not None:
            raise AudioError(f"{arg}: lengths= is only for a padded 2-D tensor; a list already has lengths.")
        if len(preds) == 0:
            raise AudioError(f"{arg}: the batch is empty.")
        clips = []
        for i, p in enumerate(preds):
            where = _name(names, i, arg)
            p = to_float(p, where) if isinstance(p, (torch.Tensor, np.ndarray)) else _not_audio(p, where)
            if p.dim() != 1:
                raise AudioError(
                    f"{where}: expected a 1-D clip, got shape {tuple(p.shape)}; "
                    "mix multichannel audio down first (e.g. x.mean(0))."
                )
            clips.append(p)
    else:
        x = to_float(preds, arg) if isinstance(preds, (torch.Tensor, np.ndarray)) else _not_audio(preds, arg)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2:
            raise AudioError(
                f"{arg}: expected shape (T,) or (B, T), got {tuple(x.shape)}; pass a list of "
                "1-D clips, or mix channels down first (e.g. x.mean(1))."
            )
        if x.shape[0] == 0:
            raise AudioError(f"{arg}: the batch is empty.")
        if lengths is None:
            clips = list(x.unbind(0))
        else:
            try:
                lens = torch.as_tensor(lengths).reshape(-1).tolist()
            except (TypeError, ValueError, RuntimeError) as e:
                raise AudioError(
                    f"{arg}: lengths= must be whole numbers of samples, one per row ({e})."
                ) from None
            if len(lens) != x.shape[0]:
                raise AudioError(f"{arg}: {len(lens)} lengths for a batch of {x.shape[0]} clips.")
            clips = []
            for i, n in enumerate(lens):
                if (
                    isinstance(n, bool)
                    or not isinstance(n, (int, float))
                    or not math.isfinite(n)
                    or n != int(n)
                    or not 0 <= int(n) <= x.shape[1]
                ):
                    raise AudioError(
                        f"{_name(names, i, arg)}: length {n} is not a whole number of samples "
                        f"in [0, {x.shape[1]}]."
                    )
                clips.append(x[i, : int(n)])
    out = []
    for i, c in enumerate(clips):
        _check_clip(c, _name(names, i, arg), fs, min_seconds)
        out.append(resample(c, fs, target_fs, where=_name(names, i, arg)) if target_fs else c)
    return out


def _not_audio(p: Any, where: str) -> torch.Tensor:
    raise AudioError(f"{where}: expected a torch.Tensor or numpy array, got {type(p).__name__}.")


def pad_batch(clips: Sequence[torch.Tensor], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D clips at the end into ``(B, T)`` (T rounded up to ``multiple``) + lengths.

    >>> x, n = pad_batch([torch.ones(3), torch.ones(5)], multiple=4)
    >>> x.shape, n.tolist()
    (torch.Size([2, 8]), [3, 5])
    """
    if len(clips) == 0:
        raise AudioError("pad_batch: no clips to pad.")
    lengths = torch.tensor([c.shape[-1] for c in clips], dtype=torch.long)
    t = int(lengths.max())
    t = -(-t // multiple) * multiple
    out = clips[0].new_zeros(len(clips), t)
    for i, c in enumerate(clips):
        out[i, : c.shape[-1]] = c
    return out, lengths

