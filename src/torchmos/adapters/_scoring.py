"""What every adapter scores through: :class:`Scorer` and :func:`score_with`.

A leaf of :mod:`torchmos.adapters` (it imports no adapter), so a toolkit's module can
import from here without importing the package that registers the toolkits. Scores are
those of :mod:`torchmos.functional`: the same cached networks, the same preparation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .. import functional, hub
from ..functional._core import score_pair

__all__ = ["Scorer", "missing_extra", "score_with"]


# the extra that installs each adapter's toolkit (transformers is a dependency: no extra)
EXTRAS = {"speechbrain": "speechbrain", "espnet": "espnet", "lightning": "lightning", "ray": "ray",
          "datasets": "datasets", "lhotse": "lhotse"}


def missing_extra(toolkit: str, package: str, error: ImportError | None = None) -> ImportError:
    """The ImportError an adapter raises when its toolkit is not installed: it names the
    extra to install (``pip install 'torchmos[espnet]'``), or the package when there is none.

    >>> print(missing_extra("espnet", "espnet (and kaldiio)"))  # doctest: +ELLIPSIS
    torchmos.adapters.espnet needs espnet (and kaldiio), which is not installed... pip install -e '.[espnet]' ...
    """
    extra = EXTRAS.get(toolkit)
    how = (f"pip install -e '.[{extra}]' in a torchmos checkout (or '.[integrations]' for every toolkit)"
           if extra else f"pip install '{package}'")
    return ImportError(f"torchmos.adapters.{toolkit} needs {package}, which is not installed (or failed to "
                       f"import{': ' + str(error) if error else ''}). Install it with: {how}")


def score_with(net: Any, card: Any, preds: Any, fs: int, lengths: Any = None,
               names: Sequence[str] | None = None, refs: Any = None, ref_lengths: Any = None,
               ref_fs: int | None = None) -> Any:
    """Score with a given network: :func:`torchmos.functional.score`, plus references.

    A no-reference card refuses ``refs``; a reference card (``card.mode == "ref"``)
    requires them (one per clip, at ``ref_fs``, default ``fs``) and scores the pairs as
    the functional twins do (:func:`torchmos.functional._core.score_pair`:
    ``net.distance(clips, ref_clips)``, or ``net(clips, ref_clips)`` for a network without
    ``distance``); a different number of references is an
    :class:`~torchmos.audio.AudioError` (a ``ValueError``).
    """
    if card.mode != "ref":
        if refs is not None:
            raise ValueError(
                f"model {card.name!r} is a no-reference predictor; it takes no references "
                "(drop refs= / --reference, or pick a reference model such as a 'scoreq-ref-*' card)."
            )
        return functional.score(net, card, preds, fs, lengths, names=names)
    if refs is None:
        raise ValueError(
            f"model {card.name!r} compares each clip with a reference; pass refs= "
            "(one clean reference clip per clip)."
        )
    return score_pair(net, card, preds, refs, fs, lengths, ref_lengths, names, target_fs=ref_fs, target_arg="refs",
                      who=f"model {card.name!r}")


def _to_device(x: Any, device: Any) -> Any:
    """Tensors (alone or in a list) onto ``device``; anything else as it is."""
    if hasattr(x, "to") and hasattr(x, "device"):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return [c.to(device) if hasattr(c, "to") and hasattr(c, "device") else c for c in x]
    return x


class Scorer:
    """A torchmos predictor chosen by card name, scoring batches as :mod:`torchmos.functional`.

    The network is the cached one of :func:`torchmos.functional.get_model` (loaded once per
    device), so building many scorers is cheap and every adapter shares one copy.

    Args:
        model: a card name (``torchmos.hub.list_cards()``), e.g. ``"distillmos"``.
        checkpoint: a local weight file instead of the card's official one.
        sha256: pin the weight file's checksum.
        device: where the network runs; ``None`` follows the input (CPU for arrays).
        options: options for the predictor (e.g. ``precision="bf16"``).

    A reference model (``card.mode == "ref"``) needs ``refs=`` (one reference clip per
    clip, paired by position); see :func:`score_with`.

    >>> import torch
    >>> s = Scorer("distillmos")
    >>> s([torch.randn(16000) * 0.1], fs=16000).shape
    torch.Size([1])
    """

    def __init__(self, model: str = "distillmos", checkpoint: str | os.PathLike | None = None,
                 sha256: str | None = None, device: Any = None, **options: Any) -> None:
        self.card = hub.get_card(model)
        self.checkpoint = checkpoint
        self.sha256 = sha256
        self.device = device
        self.options = options

    @property
    def name(self) -> str:
        return self.card.name

    def network(self, device: Any = "cpu") -> Any:
        """The (cached) predictor network on ``device``."""
        return functional.get_model(self.card.name, self.checkpoint, self.sha256, device=device, **self.options)

    def __call__(self, preds: Any, fs: int, lengths: Any = None, names: Sequence[str] | None = None,
                 refs: Any = None, ref_lengths: Any = None, ref_fs: int | None = None) -> Any:
        """Scores (B,) of ``preds`` (anything :func:`torchmos.audio.prepare` takes) at ``fs``."""
        if self.device is None:
            device = functional.device_of(preds)
        else:
            device = self.device
            preds, refs = _to_device(preds, device), _to_device(refs, device)
        return score_with(self.network(device), self.card, preds, fs, lengths, names, refs, ref_lengths, ref_fs)

    def __repr__(self) -> str:
        return f"Scorer(model={self.card.name!r})"
