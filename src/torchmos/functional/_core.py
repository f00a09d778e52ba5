"""The shared core of every functional twin and metric: where a call runs, the precision
guard, and the preparation of clips (alone or paired with references) for a model card.

The native-rate rule lives here and only here: a card with ``sample_rate == 0``
(MSR-UTMOS) is never resampled, and its network is given the rate, ``net(clips, fs)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import audio, hub

__all__ = ["device_of", "full_precision", "model_rate", "prepare_pair", "resolve_device", "score", "score_pair"]


@contextlib.contextmanager
def full_precision(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the enclosed code as if no reduced-precision context were active.

    Inside, ``torch.autocast`` is off (for CPUs and for ``device``'s type) and the default
    dtype is float32; both are restored on exit. Every :class:`~torchmos.MOSMetric` scores
    each batch inside this context, and the model cache builds every network inside it,
    so a Lightning Trainer's ``precision="bf16-mixed"`` / ``"16-mixed"`` (autocast) or
    ``"bf16-true"`` (which makes bfloat16 the default dtype while a step runs) cannot
    change a metric's score. A model's own opt-in ``precision="bf16"`` enters its own
    autocast inside and still applies. A functional call scores in its caller's context.

    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     with full_precision():
    ...         (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.float32
    """
    kinds = {"cpu", torch.device(device).type}
    previous = torch.get_default_dtype()
    with contextlib.ExitStack() as stack:
        for kind in sorted(kinds):
            if torch.amp.is_autocast_available(kind):
                stack.enter_context(torch.autocast(kind, enabled=False))
        torch.set_default_dtype(torch.float32)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


def device_of(preds: Any) -> torch.device:
    """The device of a tensor or of the first tensor of a list; CPU for anything else.

    >>> device_of([torch.zeros(3)]), device_of("clip.wav")
    (device(type='cpu'), device(type='cpu'))
    """
    if isinstance(preds, torch.Tensor):
        return preds.device
    if isinstance(preds, (list, tuple)) and preds and isinstance(preds[0], torch.Tensor):
        return preds[0].device
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None, preds: Any) -> torch.device:
    """``device`` if given, else the device of ``preds`` (where a functional call runs)."""
    return torch.device(device) if device is not None else device_of(preds)


def model_rate(card: hub.ModelCard) -> int | None:
    """The rate clips are resampled to for ``card``: ``None`` (kept as given) for a
    native-rate card (``sample_rate == 0``)."""
    return card.sample_rate or None


def score(model: nn.Module, card: hub.ModelCard, preds: Any, fs: int, lengths: Any = None,
          names: Sequence[str] | None = None) -> torch.Tensor:
    """Check and resample ``preds`` for ``card``, score them with ``model``: a tensor (B,).

    A native-rate card (``sample_rate == 0``, MSR-UTMOS) is never resampled; its model is
    given the rate: ``model(clips, fs)``.

    >>> from torchmos import hub, models
    >>> net = models.load("distillmos")
    >>> score(net, hub.get_card("distillmos"), torch.randn(2, 8000) * 0.1, fs=8000).shape
    torch.Size([2])
    """
    clips = audio.prepare(preds, fs, model_rate(card), lengths, min_seconds=card.min_seconds, names=names)
    return model(clips, audio.check_sample_rate(fs)) if card.sample_rate == 0 else model(clips)


def prepare_pair(card: hub.ModelCard, preds: Any, target: Any, fs: int, lengths: Any = None,
                 target_lengths: Any = None, names: Sequence[str] | None = None,
                 target_fs: int | None = None, target_arg: str = "target",
                 who: str = "full-reference scoring") -> tuple[list[Tensor], list[Tensor]]:
    """Clips and their references, paired by position, checked and resampled for ``card``.

    ``target[b]`` is the reference of ``preds[b]``: both take every form
    :func:`torchmos.audio.prepare` takes (``target_lengths`` for a padded ``target``,
    ``target_fs`` when its rate differs from ``fs``); ``names`` name the pairs in errors.
    A different number of clips is an :class:`~torchmos.audio.AudioError`.

    >>> from torchmos import hub
    >>> clips, refs = prepare_pair(hub.get_card("scoreq-ref-natural"), torch.randn(2, 8000),
    ...                            torch.randn(2, 8000), fs=8000, target_lengths=[8000, 6000])
    >>> [r.shape[0] for r in refs]
    [16000, 12000]
    """
    rate = model_rate(card)
    clips = audio.prepare(preds, fs, rate, lengths, min_seconds=card.min_seconds, names=names, arg="preds")
    refs = audio.prepare(target, target_fs or fs, rate, target_lengths, min_seconds=card.min_seconds,
                         names=names, arg=target_arg)
    if len(refs) != len(clips):
        raise audio.AudioError(
            f"{len(clips)} clips in preds but {len(refs)} in {target_arg}; {who} pairs preds[b] with "
            f"{target_arg}[b] (one reference per clip)."
        )
    return clips, refs


def score_pair(model: nn.Module, card: hub.ModelCard, preds: Any, target: Any, fs: int, lengths: Any = None,
               target_lengths: Any = None, names: Sequence[str] | None = None, target_fs: int | None = None,
               target_arg: str = "target", who: str = "full-reference scoring") -> Tensor:
    """Score each clip against its reference (:func:`prepare_pair`): ``model.distance(clips,
    refs)`` (SCOREQ's reference models), or ``model(clips, refs)`` for a network without
    ``distance``."""
    clips, refs = prepare_pair(card, preds, target, fs, lengths, target_lengths, names, target_fs, target_arg, who)
    distance = getattr(model, "distance", None)
    return distance(clips, refs) if callable(distance) else model(clips, refs)
