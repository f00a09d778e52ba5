"""torchmos in VERSA, the speech/audio evaluation toolkit used by ESPnet.

Two forms live here:

* **VERSA metrics** (:mod:`torchmos.adapters.versa.metrics`): ``BaseMetric`` subclasses and
  ``register_<name>_metric(registry)`` functions, the form current VERSA defines metrics
  in, so a VERSA YAML entry ``- name: torchmos_distillmos`` works. VERSA's scorer finds
  metrics only inside its own package, so run it as ``python -m torchmos.adapters.versa
  <scorer arguments>``, which registers the torchmos metrics and then calls VERSA's own
  scorer (see docs/integrations/versa.md). These names need VERSA, which is not on PyPI:
  using one without it raises an ImportError that says how to install it from source.
* **The legacy function pair** ``torchmos_setup`` / ``torchmos_metric``, in the shape older
  VERSA metric modules had (``*_setup(...)`` loads the model once, ``*_metric(model,
  pred_x, fs)`` scores one utterance); it needs no VERSA and suits scripts written that way.

>>> import numpy as np
>>> handle = torchmos_setup("distillmos")
>>> sorted(torchmos_metric(handle, np.random.default_rng(0).normal(0, 0.1, 16000), 16000))
['distillmos']
"""

from __future__ import annotations

from typing import Any

from .legacy import VERSA_SOURCE as VERSA_SOURCE
from .legacy import missing_versa, mono, torchmos_metric, torchmos_setup

__all__ = ["missing_versa", "mono", "torchmos_metric", "torchmos_setup"]


def __getattr__(name: str) -> Any:
    # The VERSA-form names are imported on first use, so ``import torchmos.adapters.versa``
    # (the legacy pair) works without VERSA, and using them without it names the fix.
    if name.startswith("register_") or (name.startswith("Torchmos") and name.endswith(("Metric", "Metadata"))):
        from . import metrics

        try:
            return getattr(metrics, name)
        except AttributeError:
            pass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
