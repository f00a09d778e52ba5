"""The shared base of the torchmos metrics: a thin stateful shell over :mod:`torchmos.functional`.

A :class:`MOSMetric` scores with the frozen network of the functional model cache
(:func:`torchmos.functional.get_model`), shared with every other metric, functional call
and adapter that asks for the same model, checkpoint, options and device. The network is
*outside* its ``state_dict`` (a user's Lightning checkpoint must not grow by the
network's size) and is never copied, moved, converted or put in train mode by a metric:
``copy.deepcopy``/``clone()`` share it, and ``.to(device)`` takes the cached network of
the new device. The metric accumulates sum/total states that reduce with ``"sum"`` under
DDP. With ``per_utterance=True`` it also keeps every score and every
clip id as ``"cat"`` states, so torchmetrics itself resets, syncs (within the metric's
``process_group``), merges and shares them, in ``forward``, ``merge_state``, compute
groups of a ``MetricCollection`` and DDP alike.

Every update runs in the precision the metric was built with, whatever the caller's
context (:func:`torchmos.metrics._context.full_precision`), so a metric inside a bf16
Lightning Trainer keeps the documented fidelity.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from .. import audio, functional, hub
from ..functional._cache import _device_key
from ..models import gradients
from ._context import _lightning_logs, _own_dtypes, full_precision

__all__ = ["MOSMetric"]

# States whose dtype is chosen by the metric, never by ``set_dtype``: the accumulators
# (see :func:`_accumulator_dtype`), the clip count, the kept scores and the encoded ids.
_SUM, _TOTAL, _SCORES, _ID_BYTES, _ID_META = "sum_score", "total", "scores", "id_bytes", "id_meta"


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the score sum on ``device``: float64, so that a mean over millions of
    clips keeps every digit a float32 score has. Apple's MPS backend has no float64
    tensors at all, so there (only there) the sum falls back to float32."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _clip_count(preds: Any) -> int | None:
    """How many clips ``preds`` holds, when its form says so without reading it."""
    if isinstance(preds, (list, tuple)):
        return len(preds)
    if isinstance(preds, (Tensor, np.ndarray)) and preds.ndim in (1, 2):
        return 1 if preds.ndim == 1 else int(preds.shape[0])
    return None  # audio.prepare names the problem


def _check_ids(ids: Any, preds: Any = None) -> list[str] | None:
    """``ids`` as a list of strings, refused (before anything is scored) if malformed."""
    if ids is None:
        return None
    if isinstance(ids, (str, bytes)):
        raise TypeError(
            f"ids= got a single string {ids!r}; give a list with one id per clip "
            f"(e.g. ids=[{ids!r}] for one clip)."
        )
    try:
        ids = list(ids)
    except TypeError:
        raise TypeError(f"ids= must be a list of strings, one per clip, got {type(ids).__name__}.") from None
    for i, name in enumerate(ids):
        if not isinstance(name, str):
            raise TypeError(
                f"ids[{i}] is a {type(name).__name__} ({name!r}); ids must be strings "
                "(e.g. [str(i) for i in ...])."
            )
    n = _clip_count(preds)
    if n is not None and n != len(ids):
        raise ValueError(f"{len(ids)} ids for a batch of {n} clips; give one id per clip.")
    return ids


class _SharedNetwork:
    """A metric's handle on a cached network: ``copy.copy`` and ``copy.deepcopy`` (so
    ``Metric.clone`` and ``MetricCollection.clone``) return the handle itself, so a copied
    metric shares the network instead of copying its parameters. A metric that changes
    device takes a new handle; it never changes this one, which other copies hold."""

    def __init__(self, module: nn.Module, device: str) -> None:
        self.module = module
        self.device = device  # the cache's key of the device the network is on

    def __copy__(self) -> _SharedNetwork:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedNetwork:
        return self


class MOSMetric(Metric):
    """Base class: mean predicted quality over every clip seen since :meth:`reset`.

    Subclasses set ``card_name`` (and may override :meth:`_scores` for other inputs).

    State. ``sum_score`` (float64) and ``total`` (int64) reduce with ``"sum"``; with
    ``per_utterance`` the scores (float32) and the clip ids are ``"cat"`` states. An id is
    kept as its UTF-8 bytes (``id_bytes``, uint8) and one ``id_meta`` row ``(byte length,
    rank)``: a length of -1 marks a clip given no id, and the rank is the global rank of
    the process that scored it (-1 outside a multi-process run). torchmetrics keeps
    these in step with the scores through ``reset``, ``forward``, ``merge_state``,
    compute groups and DDP sync (within ``process_group``). :meth:`update` checks
    everything before it changes any state, so a rejected batch leaves no trace.

    Default ids are given at :meth:`compute`: a clip's position among the clips its
    process scored, ``"0"``, ``"1"``, ... (counting named clips too), prefixed
    ``"r<rank>-"`` in a multi-process run, so they are unique across ranks. A
    ``forward`` step's value numbers the clips of that batch alone.

    Network. :attr:`net` is the cached network of :func:`torchmos.functional.get_model`
    for the metric's model, checkpoint, options and device: frozen (eval mode, no
    gradients), shared, and never in ``state_dict`` or ``parameters()``. ``.to(device)``
    gives this metric the cached network of that device (loaded there on first use) and
    leaves every other holder's network where it is; ``train()`` leaves it in eval mode;
    ``copy.deepcopy(metric)`` and ``clone()`` share it. Use ``torchmos.models.load`` for a
    network of your own to change.

    Precision. ``set_dtype`` and ``.to(dtype)`` (e.g. by a parent module, as Lightning's
    ``precision="bf16-true"`` does) change :attr:`dtype` but neither these states nor the
    network: the sum stays float64 (float32 on Apple MPS, which has no float64), the count
    an integer, the kept scores float32, and :meth:`compute` returns float32. The network
    is built and run inside :func:`~torchmos.metrics._context.full_precision`, so an
    enclosing autocast or a bf16 default dtype changes no score: it runs in the precision
    the metric was built with (fp32 unless a ``precision="bf16"`` option asked otherwise).

    Lightning. ``self.log(name, metric)`` works in both modes: with ``per_utterance``,
    Lightning (which accepts only a scalar tensor from a logged metric) is given the
    ``"mean"`` of the dict that :meth:`compute` returns to everyone else. Read the scores
    with ``metric.compute()`` in ``on_validation_epoch_end``, before Lightning resets the
    metric; log a per-utterance metric at epoch level (``on_step=False``).

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
        self._network_spec = (checkpoint, sha256, dict(model_kwargs or {}))
        # Not an nn.Module attribute on purpose: not in state_dict, parameters() or train().
        self._shared = self._network(self.device)
        acc = _accumulator_dtype(self.device)
        self.add_state(_SUM, torch.tensor(0.0, dtype=acc, device=self.device), dist_reduce_fx="sum")
        self.add_state(_TOTAL, torch.tensor(0, dtype=torch.long, device=self.device), dist_reduce_fx="sum")
        if self.per_utterance:
            self.add_state(_SCORES, [], dist_reduce_fx="cat")
            self.add_state(_ID_BYTES, [], dist_reduce_fx="cat")
            self.add_state(_ID_META, [], dist_reduce_fx="cat")

    def _network(self, device: torch.device) -> _SharedNetwork:
        """A handle on the cached network of this metric's model on ``device`` (built in
        full precision by the cache, e.g. inside Lightning's ``init_module()`` under bf16-true)."""
        checkpoint, sha256, options = self._network_spec
        net = functional.get_model(self.card.name, checkpoint, sha256, device=device, **options)
        return _SharedNetwork(net, _device_key(device))

    @property
    def net(self) -> nn.Module:
        """The predictor network: the shared, frozen network of the model cache on the
        metric's device (in eval mode; callers must not change it)."""
        return self._shared.module

    @property
    def _net(self) -> nn.Module:
        return self._shared.module

    def _state_dtypes(self) -> dict[str, torch.dtype]:
        """The states whose dtype the metric fixes (on its current device)."""
        fixed = {_SUM: _accumulator_dtype(self.device), _TOTAL: torch.long}
        if self.per_utterance:
            fixed.update({_SCORES: torch.float32, _ID_BYTES: torch.uint8, _ID_META: torch.long})
        return fixed

    def _apply(self, fn: Any, exclude_state: Sequence[str] = ()) -> nn.Module:
        exclude_state = (exclude_state,) if isinstance(exclude_state, str) else tuple(exclude_state)
        fixed = [k for k in self._state_dtypes() if k in self._defaults and k not in exclude_state]
        computed, forward_cache = self._computed, self._forward_cache
        this = super()._apply(fn, exclude_state=(*exclude_state, *fixed))
        # torchmetrics has set self.device; the fixed states follow it with their own dtype.
        dtypes = self._state_dtypes()
        for key in fixed:
            dtype = dtypes[key]
            default, value = this._defaults[key], getattr(this, key)
            if isinstance(default, Tensor):
                this._defaults[key] = default.to(self.device, dtype)
            if isinstance(value, Tensor):
                setattr(this, key, value.to(self.device, dtype))
            else:
                setattr(this, key, [v.to(self.device, dtype) for v in value])
        if computed is not None:  # nor is a cached result rounded
            this._computed = _own_dtypes(computed, self.device)
        if forward_cache is not None:
            this._forward_cache = _own_dtypes(forward_cache, self.device)
        shared = self.__dict__.get("_shared")
        if shared is not None and shared.device != _device_key(self.device):
            # the cached network of the new device; never a move or a dtype change of the
            # one this metric held, which other metrics and calls share
            self._shared = self._network(self.device)
        return this

    # -- torchmetrics API ------------------------------------------------------------

    def update(self, preds: Any, lengths: Any = None, ids: Sequence[str] | None = None) -> None:
        """Score a batch: (T,), (B, T) (+ ``lengths``) or a list of 1-D clips at ``fs``.

        ``ids`` (optional): a list of strings, one per clip; they name the clips in errors
        and in per-utterance results. A wrong count or a plain string is an error, and a
        batch that raises changes no state.
        """
        ids = _check_ids(ids, preds)
        scores = self._scores(preds, lengths, ids)
        self._accumulate(scores, ids)

    def _scores(self, preds: Any, lengths: Any, ids: Sequence[str] | None) -> Tensor:
        if self.is_differentiable and torch.is_grad_enabled():  # forward() of a differentiable=True metric
            clips = audio.prepare(preds, self.fs, self.card.sample_rate, lengths, min_seconds=self.card.min_seconds,
                                  names=ids)
            return gradients.mos(self._net, clips)
        return functional.score(self._net, self.card, preds, self.fs, lengths, names=ids)

    def _accumulate(self, scores: Tensor, ids: list[str] | None) -> None:
        """Add a scored batch: every new value is built first, then the state is changed
        by steps that cannot fail. A differentiable metric keeps the graph in the sum only
        (the batch value of ``forward``; torchmetrics merges it into the state without it)."""
        summed = scores.reshape(-1) if self.is_differentiable else scores.detach().reshape(-1)
        scores = scores.detach().reshape(-1)
        n = scores.numel()
        if ids is not None and len(ids) != n:
            raise ValueError(f"{len(ids)} ids for a batch of {n} clips; give one id per clip.")
        new_sum = self.sum_score + summed.to(self.sum_score.device, self.sum_score.dtype).sum()
        new_total = self.total + n
        if self.per_utterance:
            kept = scores.to(self.device, torch.float32)
            id_bytes, id_meta = self._encode_ids(ids, n)
        self.sum_score = new_sum
        self.total = new_total
        if self.per_utterance:
            self.scores.append(kept)
            self.id_bytes.append(id_bytes)
            self.id_meta.append(id_meta)

    def _encode_ids(self, ids: list[str] | None, n: int) -> tuple[Tensor, Tensor]:
        """ids -> (uint8 bytes, (n, 2) int64 rows of (byte length or -1, rank))."""
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else -1
        if ids is None:
            data, sizes = b"", [-1] * n
        else:
            encoded = [i.encode("utf-8") for i in ids]
            data, sizes = b"".join(encoded), [len(e) for e in encoded]
        id_bytes = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone() if data else torch.zeros(0, dtype=torch.uint8)
        id_meta = torch.tensor([[s, rank] for s in sizes], dtype=torch.long).reshape(n, 2)
        return id_bytes.to(self.device), id_meta.to(self.device)

    def _decode_ids(self) -> list[str]:
        data = bytes(_cat(self.id_bytes, torch.uint8).cpu().numpy().tobytes())
        meta = _cat(self.id_meta, torch.long).reshape(-1, 2).tolist()
        ids, pos, seen = [], 0, {}
        for size, rank in meta:
            k = seen.get(rank, 0)
            seen[rank] = k + 1
            if size < 0:
                ids.append(str(k) if rank < 0 else f"r{rank}-{k}")
            else:
                ids.append(data[pos : pos + size].decode("utf-8"))
                pos += size
        return ids

    def compute(self) -> Tensor | dict[str, Any]:
        """Mean score (a scalar tensor); with ``per_utterance`` a dict with every score."""
        if self.total > 0:
            mean = (self.sum_score / self.total).float()
        else:
            mean = torch.tensor(float("nan"), dtype=torch.float32, device=self.device)
        if not self.per_utterance:
            return mean
        scores = _cat(self.scores, torch.float32, self.device)
        ids = self._decode_ids()
        if len(ids) != scores.numel():  # cannot happen through the public API
            raise RuntimeError(f"{type(self).__name__}: {len(ids)} ids for {scores.numel()} scores.")
        return {"mean": mean, "scores": scores, "ids": ids}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Score a batch, add it to the state and return the batch's own value.

        A batch that raises leaves the accumulated state as it was (torchmetrics'
        ``forward`` resets the state before it scores the batch)."""
        # update() never changes a state tensor in place and reset() empties lists in place,
        # so tensors plus copies of the lists are a snapshot.
        saved = {key: (list(v) if isinstance(v, list) else v) for key, v in self.metric_state.items()}
        count, on_cpu = self._update_count, self.compute_on_cpu
        try:
            return super().forward(*args, **kwargs)
        except BaseException:
            for key, value in saved.items():
                setattr(self, key, value)
            self._update_count, self.compute_on_cpu = count, on_cpu
            self._is_synced, self._should_unsync, self._to_sync = False, True, self.sync_on_compute
            self._enable_grad, self._computed, self._cache = False, None, None
            raise

    def _wrap_update(self, update: Any) -> Any:
        # torchmetrics counts an update before running it; a rejected batch must not count.
        # Every update (of every subclass, through forward too) scores in full precision.
        wrapped = super()._wrap_update(update)

        @functools.wraps(wrapped)
        def counted_if_accepted(*args: Any, **kwargs: Any) -> None:
            count = self._update_count
            try:
                with full_precision(self.device):
                    wrapped(*args, **kwargs)
            except BaseException:
                self._update_count = count
                raise

        return counted_if_accepted

    def _wrap_compute(self, compute: Any) -> Any:
        # torchmetrics squeezes every one-element tensor of a compute() result to 0-d; the
        # per-utterance scores of a single clip must stay a (1,) vector like any other.
        # Lightning's logger, which takes only a tensor, is given the dict's mean.
        wrapped = super()._wrap_compute(compute)

        @functools.wraps(wrapped)
        def per_utterance_shapes(*args: Any, **kwargs: Any) -> Any:
            value = wrapped(*args, **kwargs)
            if not isinstance(value, dict):
                return value
            if isinstance(value.get("scores"), Tensor) and value["scores"].ndim == 0:
                value = {**value, "scores": value["scores"].reshape(1)}
            return value["mean"] if _lightning_logs(sys._getframe(1)) else value

        return per_utterance_shapes

    def _sync_dist(self, *args: Any, **kwargs: Any) -> None:
        # A rank with no clips would send torchmetrics' placeholder (an empty tensor of the
        # metric's dtype) for every "cat" state; send empties of each state's own dtype and
        # shape instead, or the gathered bytes, rows and scores would not concatenate.
        empty = {_SCORES: (0,), _ID_BYTES: (0,), _ID_META: (0, 2)}
        dtypes = self._state_dtypes()
        for key, shape in empty.items():
            if key in self._defaults and isinstance(getattr(self, key), list) and not getattr(self, key):
                setattr(self, key, [torch.zeros(shape, dtype=dtypes[key], device=self.device)])
        super()._sync_dist(*args, **kwargs)

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: Any = None) -> Any:
        """Plot a single or multiple values (see ``torchmetrics.Metric._plot``); a metric
        with ``per_utterance=True`` plots the distribution of its scores instead."""
        from .plotting import plot_metric

        return plot_metric(self, val, ax)

    def extra_repr(self) -> str:
        return f"model={self.card.name!r}, fs={self.fs}, per_utterance={self.per_utterance}"


def _cat(state: Tensor | list[Tensor], dtype: torch.dtype, device: Any = None) -> Tensor:
    """A "cat" state as one tensor (a list before sync, a tensor after)."""
    if isinstance(state, Tensor):
        return state
    return torch.cat(state) if state else torch.zeros(0, dtype=dtype, device=device)
