"""Adapters: torchmos in the conventions of each toolkit.

One module per toolkit, each imported only when asked for, so ``import torchmos`` never
imports SpeechBrain, ESPnet, transformers or Lightning:

* :mod:`torchmos.adapters.speechbrain` -- ``MOSStats`` (a ``MetricStats``) and ``MOSEstimator``
  (a ``speechbrain.inference`` interface);
* :mod:`torchmos.adapters.espnet` -- the ``wav.scp`` scoring stage and a training monitor;
* :mod:`torchmos.adapters.hf` -- ``pipeline("audio-quality")`` and ``TorchmosForAudioQuality``;
* :mod:`torchmos.adapters.versa` -- VERSA metrics (``BaseMetric`` subclasses and their
  registration; ``python -m torchmos.adapters.versa``) and the legacy setup/metric pair.

(Lightning needs no adapter: every torchmos metric is a ``torchmetrics.Metric``, so
``self.log("val/mos", self.mos)`` works as it is; see ``integrations/lightning``.)

No model logic lives here. Every adapter scores through :class:`Scorer`, which calls
:func:`torchmos.functional.get_model` and the same preparation as
:func:`torchmos.functional.score`, so a clip gets the same score in every toolkit.

This module imports only the standard library and torchmos' own modules.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .. import audio, functional, hub

__all__ = ["Scorer", "install_transformers_hook", "missing_extra", "score_with"]


def missing_extra(toolkit: str, package: str, error: ImportError | None = None) -> ImportError:
    """The ImportError an adapter raises when its toolkit is not installed."""
    msg = (
        f"torchmos.adapters.{toolkit} needs {package}, which is not installed (or failed to import"
        f"{': ' + str(error) if error else ''}). Install it with: pip install -e '.[integrations]' in a torchmos checkout"
    )
    return ImportError(msg)


def score_with(net: Any, card: Any, preds: Any, fs: int, lengths: Any = None,
               names: Sequence[str] | None = None, refs: Any = None, ref_lengths: Any = None,
               ref_fs: int | None = None) -> Any:
    """Score with a given network: :func:`torchmos.functional.score`, plus references.

    A no-reference card refuses ``refs``; a reference card (``card.mode == "ref"``)
    requires them, prepares them like ``preds`` and calls ``net.distance(clips, ref_clips)``
    (or ``net(clips, ref_clips)`` for a network without ``distance``).
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
    clips = audio.prepare(preds, fs, card.sample_rate, lengths, min_seconds=card.min_seconds, names=names)
    ref_clips = audio.prepare(refs, ref_fs or fs, card.sample_rate, ref_lengths, min_seconds=card.min_seconds,
                              names=names, arg="refs")
    if len(ref_clips) != len(clips):
        raise ValueError(f"{len(ref_clips)} references for {len(clips)} clips; pass one per clip.")
    distance = getattr(net, "distance", None)  # e.g. SCOREQ's reference models
    return distance(clips, ref_clips) if callable(distance) else net(clips, ref_clips)


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


# ----------------------------------------------------------------------------- transformers hook


class _RegisterAfterExec(importlib.abc.Loader):
    """Wraps a module's loader: runs it, then a callback (a post-import hook).

    The callback runs only once the module has executed without error, so a failed
    import leaves the hook armed for the next attempt."""

    def __init__(self, loader: Any, callback: Callable[[], None]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._callback()

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Calls ``callback`` right after the module ``target`` is first imported.

    It stays on ``sys.meta_path`` until the target has been imported *and* the callback
    has run: a bare ``importlib.util.find_spec(target)`` (which finds but does not import)
    or an import that fails midway leaves it armed. It removes itself afterwards.
    """

    def __init__(self, target: str, callback: Callable[[], None]) -> None:
        self.target = target
        self.callback = callback

    def _done(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.callback()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.target:
            return None
        spec = None
        for finder in list(sys.meta_path):
            if finder is self or isinstance(finder, _PostImportHook):
                continue
            find = getattr(finder, "find_spec", None)
            if find is not None and (spec := find(fullname, path, target)) is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisterAfterExec(spec.loader, self._done)
        return spec


def _register_hf() -> None:
    try:
        from importlib.metadata import version

        if int(version("transformers").split(".")[0]) < 5:
            return  # the adapter targets transformers 5; stay silent on older ones
        importlib.import_module("torchmos.adapters.hf")
    except Exception as e:  # never break the user's import of transformers
        warnings.warn(f"torchmos could not register the 'audio-quality' pipeline: {e}", RuntimeWarning,
                      stacklevel=2)


def install_transformers_hook() -> None:
    """Register ``pipeline("audio-quality")`` with transformers, without importing it.

    If ``transformers.pipelines`` is already imported, registers now; otherwise, if
    transformers is installed, registers right after ``transformers.pipelines`` is first
    imported (``from transformers import pipeline`` does that). Costs nothing when
    transformers is absent or never used. Called once by ``import torchmos``.
    """
    if "transformers.pipelines" in sys.modules:
        _register_hf()
        return
    if any(isinstance(f, _PostImportHook) for f in sys.meta_path):
        return
    if "transformers" not in sys.modules:
        try:
            if importlib.util.find_spec("transformers") is None:
                return
        except (ImportError, ValueError):  # absent, or a broken installation: nothing to hook
            return
    sys.meta_path.insert(0, _PostImportHook("transformers.pipelines", _register_hf))
