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

No model logic lives here. Every adapter scores through :class:`Scorer` and
:func:`score_with` (defined in ``torchmos.adapters._scoring``, a leaf that a toolkit's
module imports them from): the cached networks of :func:`torchmos.functional.get_model`
and the preparation of :mod:`torchmos.functional`, references included, so a clip gets
the same score in every toolkit.

This package imports only the standard library and torchmos' own modules; the hook below
registers the transformers pipeline when transformers is first imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from typing import Any

from ._scoring import Scorer, missing_extra, score_with
from ._scoring import _to_device as _to_device

__all__ = ["Scorer", "install_transformers_hook", "missing_extra", "score_with"]


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
