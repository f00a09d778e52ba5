"""Predicted quality as a training loss: :class:`MOSLoss` (re-exported by :mod:`torchmos.losses`).

Kept apart from :mod:`torchmos.losses` (the SCOREQ objectives, which need no network)
because it uses the shared model cache of :mod:`torchmos.functional`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import audio, hub
from .functional._cache import get_model
from .functional._core import device_of
from .functional._scoreq import card_name, model_options, reference_clips
from .models import gradients

__all__ = ["MOSLoss"]

_SHORT = {"scoreq-nr": "nr", "scoreq_nr": "nr", "scoreq-ref": "ref", "scoreq_ref": "ref"}


def _card(model: str, domain: str) -> hub.ModelCard:
    """The card of ``model``: ``"distillmos"``, a SCOREQ card name, or ``"scoreq-nr"`` /
    ``"scoreq-ref"`` with ``domain``."""
    if not isinstance(model, str):
        raise TypeError(f"MOSLoss: model must be a model name such as 'distillmos', got {type(model).__name__}.")
    name = card_name(_SHORT[model], domain, "MOSLoss") if model in _SHORT else model
    card = hub.get_card(name)
    if card.family not in ("distillmos", "scoreq"):
        raise ValueError(
            f"MOSLoss: {name!r} has no gradient path; use 'distillmos', 'scoreq-nr' or 'scoreq-ref' "
            "(with domain='natural' or 'synthetic')."
        )
    return card


class _Shared:
    """A handle on the cached network, outside ``state_dict``/``parameters()``; copies of
    the loss (``copy.deepcopy``) share it instead of copying the weights."""

    def __init__(self) -> None:
        self.nets: dict[str, nn.Module] = {}

    def __copy__(self) -> _Shared:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self


class MOSLoss(nn.Module):
    """Predicted quality as a loss to minimise, differentiable w.r.t. the waveform.

    * no-reference models (DistillMOS, SCOREQ NR): ``5 - MOS`` of each clip;
    * SCOREQ REF: the distance (in [0, 2]) of each clip's embedding to its clean
      ``target`` given to :meth:`forward`, or to a fixed set of clean ``references=``.

    The predictor is the frozen network of the model cache
    (:func:`torchmos.functional.get_model`), shared with the metrics and functional calls
    that use the same model, checkpoint and options: in eval mode, its weights never
    require or receive gradients, and it is not in this module's ``state_dict`` or
    ``parameters()`` (an optimiser over a model that holds this loss never sees it).
    Every clip is scored by its own length, as the metrics score it: padding past
    ``lengths`` is never seen, a clip shorter than the model's window is zero-padded
    inside the model as in inference, and the gradient is finite there.

    **It is easy to fool.** A few dozen gradient steps on a waveform raise its DistillMOS
    from about 2.4 to 4.9 without making it any closer to the clean speech. Use it as an
    auxiliary term beside a reconstruction loss, check with a measure the loss does not
    optimise (PESQ, SI-SDR, listening), and see docs/training/mos-loss.md for the
    measurements.

    Args:
        model: ``"distillmos"`` (default), ``"scoreq-nr"`` or ``"scoreq-ref"`` (with
            ``domain``), or a SCOREQ card name (``"scoreq-nr-natural"``, ...).
        fs: sample rate of ``preds`` (resampled to 16 kHz, differentiably).
        domain: SCOREQ's ``"natural"`` (default) or ``"synthetic"``.
        checkpoint, sha256: a local weight file (the official format) and its checksum.
        references: SCOREQ REF only: a set of clean clips (tensors at ``fs``, or audio
            files) to measure the distance to when :meth:`forward` gets no ``target``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (one value per clip).
        checkpoint_cnn: DistillMOS: recompute the CNN's activations in the backward pass
            instead of keeping them (measured in benchmarks/results/mos_loss.json).
        crops_per_batch: DistillMOS: 7.68 s crops per network call (memory vs speed).
        options: the predictor's options, as the metrics take them: ``precision``
            (``"fp32"`` or ``"bf16"``); SCOREQ's ``backbone_config``.

    Shapes: ``preds`` (B, L) zero-padded past ``lengths`` (or (L,), or a list of 1-D
    clips); returns a scalar (``"none"``: (B,)).

    >>> import torch
    >>> loss_fn = MOSLoss("distillmos", fs=16000)
    >>> x = (torch.randn(2, 16000) * 0.1).requires_grad_()
    >>> loss = loss_fn(x, lengths=[16000, 12000])
    >>> loss.backward()
    >>> bool(x.grad.isfinite().all()), bool(x.grad[1, 12000:].eq(0).all())
    (True, True)
    """

    def __init__(self, model: str = "distillmos", fs: int = 16000, *, domain: str = "natural",
                 checkpoint: str | os.PathLike | None = None, sha256: str | None = None,
                 references: Any = None, reduction: str = "mean", checkpoint_cnn: bool = False,
                 crops_per_batch: int | None = None, **options: Any) -> None:
        super().__init__()
        self.card = _card(model, domain)
        self.fs = audio.check_sample_rate(fs, "MOSLoss")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"MOSLoss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        if crops_per_batch is not None and (isinstance(crops_per_batch, bool) or int(crops_per_batch) < 1):
            raise ValueError(f"MOSLoss: crops_per_batch must be a positive number, got {crops_per_batch!r}.")
        self.reduction = reduction
        self.checkpoint_cnn = bool(checkpoint_cnn)
        self.crops_per_batch = crops_per_batch
        self.mode = self.card.mode
        if self.card.family == "scoreq":
            if checkpoint_cnn:
                raise ValueError("MOSLoss: checkpoint_cnn is a DistillMOS option.")
            unknown = set(options) - {"precision", "backbone_config", "chunk_seconds"}
            if unknown:
                raise TypeError(f"MOSLoss: unknown SCOREQ options {sorted(unknown)}.")
            options = model_options(options.get("chunk_seconds"), options.get("precision", "fp32"),
                                    options.get("backbone_config"))
            if options["chunk_seconds"] is not None:
                raise ValueError("MOSLoss: chunk_seconds is an inference option; the loss embeds each clip whole.")
        else:
            unknown = set(options) - {"precision"}
            if unknown:
                raise TypeError(f"MOSLoss: unknown DistillMOS options {sorted(unknown)}.")
            options = {"precision": options.get("precision", "fp32")}
        if references is not None and self.mode != "ref":
            raise ValueError("MOSLoss: references= is for SCOREQ REF (model='scoreq-ref').")
        self._spec = (checkpoint, sha256, options)
        self._shared = _Shared()
        self._ref_emb: Tensor | None = None
        if references is not None:
            net = self.network("cpu")
            with torch.no_grad():
                self._ref_emb = gradients.embed(net, reference_clips(references, self.fs, self.card)[0])

    def network(self, device: str | torch.device = "cpu") -> nn.Module:
        """The frozen, shared predictor on ``device`` (loaded there on first use)."""
        key = str(torch.device(device))
        net = self._shared.nets.get(key)
        if net is None:
            checkpoint, sha256, options = self._spec
            net = get_model(self.card.name, checkpoint, sha256, device=device, **options)
            self._shared.nets[key] = net
        return net

    def scores(self, preds: Any, lengths: Any = None, target: Any = None, target_lengths: Any = None) -> Tensor:
        """(B,) differentiable scores: MOS (no-reference models) or distances (REF)."""
        _check_tensors(preds, "preds")
        net = self.network(device_of(preds))
        rate, least = self.card.sample_rate, self.card.min_seconds
        clips = audio.prepare(preds, self.fs, rate, lengths, min_seconds=least, arg="preds")
        if self.mode != "ref":
            if target is not None or target_lengths is not None:
                raise ValueError(f"MOSLoss: {self.card.name} is a no-reference model; it takes no target.")
            return gradients.mos(net, clips, checkpoint_cnn=self.checkpoint_cnn,
                                 crops_per_batch=self.crops_per_batch)
        if target is None:
            if target_lengths is not None:
                raise ValueError("MOSLoss: target_lengths= was given without a target.")
            if self._ref_emb is None:
                raise ValueError("MOSLoss: a SCOREQ REF loss needs target= (each clip's clean counterpart) "
                                 "or references= at construction (a set of clean clips).")
            return gradients.distance_to_set(net, clips, self._ref_emb)
        if self._ref_emb is not None:
            raise ValueError("MOSLoss: this loss was built with references=; forward() takes no target.")
        _check_tensors(target, "target")
        refs = audio.prepare(target, self.fs, rate, target_lengths, min_seconds=least, arg="target")
        if len(refs) != len(clips):
            raise audio.AudioError(f"{len(clips)} clips in preds but {len(refs)} in target; MOSLoss pairs "
                                   "preds[b] with target[b].")
        return gradients.distance(net, clips, [r.detach() for r in refs])

    def forward(self, preds: Any, lengths: Any = None, target: Any = None, target_lengths: Any = None) -> Tensor:
        """The loss: mean (or sum, or each) of ``5 - MOS``, or of the REF distances."""
        s = self.scores(preds, lengths, target, target_lengths)
        per = s if self.mode == "ref" else 5.0 - s
        return per.mean() if self.reduction == "mean" else per.sum() if self.reduction == "sum" else per

    def extra_repr(self) -> str:
        return (f"model={self.card.name!r}, fs={self.fs}, reduction={self.reduction!r}, "
                f"checkpoint_cnn={self.checkpoint_cnn}")


def _check_tensors(x: Any, arg: str) -> None:
    """A loss needs tensors (gradients cannot flow back to arrays or files)."""
    items: Sequence[Any] = x if isinstance(x, (list, tuple)) else [x]
    for i, item in enumerate(items):
        if not isinstance(item, Tensor):
            where = arg if not isinstance(x, (list, tuple)) else f"{arg}[{i}]"
            raise TypeError(f"MOSLoss: {where} must be a torch.Tensor (gradients flow back to tensors only), "
                            f"got {type(item).__name__}.")
        if not item.is_floating_point():
            where = arg if not isinstance(x, (list, tuple)) else f"{arg}[{i}]"
            raise TypeError(f"MOSLoss: {where} must be a float tensor (gradients need floats), got {item.dtype}.")
