"""Stateless twins of the torchmos metrics: one score per clip, shape (B,).

This is the computation; every metric in :mod:`torchmos.metrics` is a thin stateful
shell over it, and every metric option exists here with the same name and meaning. The
package never imports :mod:`torchmos.metrics` (nor torchmetrics):

* ``_core``: where a call runs, the precision guard, the preparation of clips (alone or
  paired with references) and the native-rate rule (:func:`score`);
* ``_cache``: the model cache (:func:`get_model`): one frozen network per model,
  checkpoint, options and device, shared by every metric, call and adapter;
* one module per family: :func:`distillmos`, :func:`scoreq_nr` / :func:`scoreq_ref`,
  :func:`vqscore`, :func:`msr_utmos`.

Networks are loaded once per (model, checkpoint, options, device) and cached; the cache
is thread-safe and its networks are shared, so no call writes anything onto them.

>>> import torch, torchmos.functional as F
>>> F.distillmos(torch.randn(2, 16000) * 0.1, fs=16000).shape
torch.Size([2])
"""

from __future__ import annotations

from .. import audio as audio
from .. import hub as hub
from .. import models as models
from ._cache import _clear_cache as _clear_cache
from ._cache import _device_key as _device_key
from ._cache import get_model
from ._core import device_of as device_of
from ._core import full_precision as full_precision
from ._core import score
from ._distillmos import distillmos
from ._msr_utmos import msr_utmos
from ._scoreq import scoreq_nr, scoreq_ref
from ._vqscore import vqscore

__all__ = ["distillmos", "get_model", "msr_utmos", "score", "scoreq_nr", "scoreq_ref", "vqscore"]
