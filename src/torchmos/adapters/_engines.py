"""What the corpus engines share (Ray Data, Hugging Face datasets, Lhotse).

One row's audio as a mono clip (:func:`clip_from_path`, :func:`clip_from_array`), and a
batch of rows scored through :class:`~torchmos.adapters._scoring.Scorer` with a result or
an error per row (:class:`EngineScorer`), so that one unreadable file never stops a job.

Scores are those of :mod:`torchmos.functional`: each clip is scored at its own rate
(rows are grouped by rate), so a row gets the score ``torchmos.functional`` gives its
clip, whatever else is in its batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from .. import audio, hub
from ._scoring import Scorer

__all__ = ["Clip", "EngineScorer", "check_model", "clip_from_array", "clip_from_path", "default_device"]


class Clip(NamedTuple):
    """One row's audio: mono float32 samples and their rate."""

    samples: torch.Tensor
    rate: int


def mono(x: Any, where: str) -> torch.Tensor:
    """A 1-D clip, or a ``(channels, samples)`` array averaged over its channels.

    >>> mono(np.ones((2, 4), dtype=np.int16) * 16384, "row 0").tolist()
    [0.5, 0.5, 0.5, 0.5]
    """
    if isinstance(x, (list, tuple)):  # e.g. a datasets column of arrays, given as Python lists
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise audio.AudioError(
                f"{where}: the samples came as a Python list of {x.dtype} values; integer PCM in a list has lost "
                "its width: store float samples in [-1, 1], or pass numpy arrays (int16/int32 PCM)."
            )
        x = x.astype(np.float32, copy=False)
    x = audio.to_float(x, where)
    if x.dim() == 2:
        if x.shape[0] > x.shape[1]:
            raise audio.AudioError(
                f"{where}: a 2-D clip must be (channels, samples), got shape {tuple(x.shape)}; "
                "transpose it (x.T) or mix it down first."
            )
        x = x.mean(0)
    if x.dim() != 1:
        raise audio.AudioError(f"{where}: expected a 1-D clip or (channels, samples), got shape {tuple(x.shape)}.")
    return x


def clip_from_path(path: Any, scorer: Scorer, where: str | None = None) -> Clip:
    """Read a file (anything :func:`torchmos.audio.load` reads) at the model's rate.

    The file is read in blocks, each resampled as it arrives (bounded memory for long
    files); the result equals resampling the whole file, as :mod:`torchmos.functional`
    does. A native-rate model (``sample_rate == 0``) gets the file's own rate.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise audio.AudioError(f"{where or 'row'}: expected a file path, got {type(path).__name__}.")
    got = audio.load(path, name=where, target_fs=scorer.card.sample_rate or None)
    return Clip(got.samples, got.rate)


def clip_from_array(samples: Any, fs: Any, where: str) -> Clip:
    """A decoded array (1-D, or ``(channels, samples)``) and its rate."""
    return Clip(mono(samples, where), audio.check_sample_rate(fs, f"{where}: sample rate"))


def default_device(rank: int | None = None) -> torch.device:
    """``cuda:rank % count`` when CUDA is available (``cuda:0`` without a rank), else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", (rank or 0) % torch.cuda.device_count())
    return torch.device("cpu")


def check_model(model: str) -> Any:
    """The card of ``model``, refused unless it is a no-reference model (the engines score
    one clip per row)."""
    card = hub.get_card(model)
    if card.mode == "ref":
        raise ValueError(
            f"model {card.name!r} compares each clip with a reference; the corpus engines score "
            "no-reference models (e.g. 'distillmos', 'scoreq-nr-natural'). Score reference "
            "pairs with `torchmos score --reference DIR` or torchmos.functional.scoreq_ref."
        )
    return card


def _message(e: BaseException, where: str) -> str:
    """The error of row ``where``, naming it once (a batch's ``preds[i] (where)`` is ``where``)."""
    text = str(e)
    if not isinstance(e, (audio.AudioError, ValueError)):
        text = f"{type(e).__name__}: {text}"
    tag = f"] ({where})"
    if text.startswith("preds[") and tag in text:
        text = where + text[text.index(tag) + len(tag):]
    return text if where in text else f"{where}: {text}"


class EngineScorer:
    """A :class:`Scorer` for engines: its network loaded now, results or errors per row.

    Args:
        model: a card name (``torchmos.hub.list_cards()``); a no-reference model.
        device: where the network runs (``None``: :func:`default_device`).
        checkpoint, sha256, options: as for :class:`Scorer`.

    The network is the cached one of :func:`torchmos.functional.get_model`: one copy per
    process and device however many scorers a process builds.
    """

    def __init__(self, model: str = "distillmos", device: Any = None, checkpoint: Any = None,
                 sha256: str | None = None, **options: Any) -> None:
        check_model(model)
        self.device = torch.device(device) if device is not None else default_device()
        self.scorer = Scorer(model, checkpoint=checkpoint, sha256=sha256, device=self.device, **options)
        self.scorer.network(self.device)  # load now: a bad model name or file fails the job at once

    @property
    def name(self) -> str:
        return self.scorer.card.name

    def score(self, clips: Sequence[Clip | BaseException], labels: Sequence[str]
              ) -> tuple[list[float | None], list[str | None]]:
        """Scores and errors of the rows: ``clips[i]`` is a :class:`Clip` or the error
        met while reading row ``i``; each row gets a score or an error message naming it."""
        scores: list[float | None] = [None] * len(clips)
        errors: list[str | None] = [None] * len(clips)
        by_rate: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            if isinstance(c, BaseException):
                errors[i] = _message(c, labels[i])
            else:
                by_rate.setdefault(c.rate, []).append(i)
        for rate, idx in by_rate.items():
            try:
                got = self._run([clips[i].samples for i in idx], rate, [labels[i] for i in idx])
            except Exception:  # find the rows at fault, one at a time
                for i in idx:
                    try:
                        scores[i] = self._run([clips[i].samples], rate, [labels[i]])[0]
                    except Exception as e:
                        errors[i] = _message(e, labels[i])
                continue
            for i, s in zip(idx, got):
                scores[i] = s
        return scores, errors

    def _run(self, samples: list[torch.Tensor], rate: int, labels: list[str]) -> list[float]:
        # the network is fetched (and, if the cache dropped it, loaded) outside inference
        # mode: a network built inside it would hold inference tensors for every later caller
        self.scorer.network(self.device)
        with torch.inference_mode():
            return [float(s) for s in self.scorer(samples, rate, names=labels).tolist()]
