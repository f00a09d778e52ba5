"""The shared base of the torchmos metrics.

A :class:`MOSMetric` holds a predictor network *outside* its ``state_dict`` (a user's
Lightning checkpoint must not grow by the network's size), moves it with the metric's
device, keeps it in eval mode, and accumulates sum/total states that reduce with
``"sum"`` under DDP. With ``per_utterance=True`` it also keeps every score (a ``"cat"``
state) and the clip ids.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from .. import audio, functional, hub, models

__all__ = ["MOSMetric"]


class MOSMetric(Metric):
    """Base class: mean predicted quality over every clip seen since :meth:`reset`.

    Subclasses set ``card_name`` (and may override :meth:`_scores` for other inputs).

    Args:
        fs: sample rate of the audio passed to :meth:`update`; resampled to the model's.
        checkpoint: a local weight file instead of the card's official one.
        sha256: pin the weight file's checksum.
        per_utterance: also keep every clip's score; :meth:`compute` then returns a dict
            ``{"mean", "scores", "ids"}``.
        model_kwargs: options for the predictor (e.g. ``precision="bf16"``).
        kwargs: the usual ``torchmetrics.Metric`` options (``sync_on_compute`` ...).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound: float | None = 1.0
    plot_upper_bound: float | None = 5.0
    card_name: str = ""

    sum_score: Tensor
    total: Tensor

    def __init__(
        self,
        fs: int = 16000,
        checkpoint: str | os.PathLike | None = None,
        sha256: str | None = None,
        per_utterance: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fs = audio.check_sample_rate(fs, type(self).__name__)
        self.card = hub.get_card(self.card_name)
        self.per_utterance = bool(per_utterance)
        net = self._build(checkpoint, sha256, **(model_kwargs or {}))
        # Kept out of nn.Module's registry on purpose: not in state_dict, not in parameters().
        object.__setattr__(self, "_net", net.eval())
        self.add_state("sum_score", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        if self.per_utterance:
            self.add_state("scores", [], dist_reduce_fx="cat")
        self._ids: list[str] = []

    def _build(self, checkpoint: Any, sha256: str | None, **model_kwargs: Any) -> nn.Module:
        return models.load(self.card.name, checkpoint=checkpoint, sha256=sha256, **model_kwargs)

    @property
    def net(self) -> nn.Module:
        """The predictor network (on the metric's device, in eval mode)."""
        return self._net

    def _apply(self, fn: Any, exclude_state: Sequence[str] = "") -> nn.Module:
        this = super()._apply(fn, exclude_state)
        self._net.to(self.device)  # follow the device, never a dtype change
        return this

    def train(self, mode: bool = True) -> MOSMetric:
        super().train(mode)
        self._net.eval()
        return self

    # -- torchmetrics API ------------------------------------------------------------

    def update(self, preds: Any, lengths: Any = None, ids: Sequence[str] | None = None) -> None:
        """Score a batch: (T,), (B, T) (+ ``lengths``) or a list of 1-D clips at ``fs``.

        ``ids`` (optional) name the clips in errors and in per-utterance results.
        """
        scores = self._scores(preds, lengths, ids)
        self._accumulate(scores, ids)

    def _scores(self, preds: Any, lengths: Any, ids: Sequence[str] | None) -> Tensor:
        return functional.score(self._net, self.card, preds, self.fs, lengths, names=ids)

    def _accumulate(self, scores: Tensor, ids: Sequence[str] | None) -> None:
        scores = scores.detach().to(self.device)
        self.sum_score += scores.double().sum()
        self.total += scores.numel()
        if self.per_utterance:
            self.scores.append(scores.float())
            if ids is not None and len(ids) != scores.numel():
                raise ValueError(f"{len(ids)} ids for a batch of {scores.numel()} clips.")
            start = len(self._ids)
            self._ids.extend(list(ids) if ids is not None else [str(start + i) for i in range(scores.numel())])

    def compute(self) -> Tensor | dict[str, Any]:
        """Mean score (a scalar tensor); with ``per_utterance`` a dict with every score."""
        mean = (self.sum_score / self.total).float() if self.total > 0 else torch.tensor(float("nan"), device=self.device)
        if not self.per_utterance:
            return mean
        scores = self.scores
        if isinstance(scores, list):
            scores = torch.cat(scores) if scores else torch.zeros(0, device=self.device)
        return {"mean": mean, "scores": scores, "ids": self._gather_ids()}

    def _wrap_compute(self, compute: Any) -> Any:
        # torchmetrics squeezes every one-element tensor of a compute() result to 0-d; the
        # per-utterance scores of a single clip must stay a (1,) vector like any other.
        wrapped = super()._wrap_compute(compute)

        @functools.wraps(wrapped)
        def per_utterance_shapes(*args: Any, **kwargs: Any) -> Any:
            value = wrapped(*args, **kwargs)
            if isinstance(value, dict) and isinstance(value.get("scores"), Tensor) and value["scores"].ndim == 0:
                value = {**value, "scores": value["scores"].reshape(1)}
            return value

        return per_utterance_shapes

    def _gather_ids(self) -> list[str]:
        dist = torch.distributed
        if self._to_sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[list[str]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(parts, self._ids)  # rank order, as torchmetrics cats states
            return [i for p in parts for i in p]
        return list(self._ids)

    def reset(self) -> None:
        super().reset()
        self._ids = []

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: Any = None) -> Any:
        """Plot a single or multiple values (see ``torchmetrics.Metric._plot``)."""
        if val is None:
            val = self.compute()
        if isinstance(val, dict):
            val = val["mean"]
        return self._plot(val, ax)

    def extra_repr(self) -> str:
        return f"model={self.card.name!r}, fs={self.fs}, per_utterance={self.per_utterance}"
