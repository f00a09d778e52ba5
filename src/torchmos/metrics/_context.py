"""What a metric does about its caller's context: reduced precision and Lightning's logger.

Kept apart from :mod:`torchmos.metrics.base` so that both stay short; nothing here
imports torchmetrics or Lightning. The precision guard itself,
:func:`~torchmos.functional.full_precision`, lives one floor down (the model cache
builds every network inside it) and is importable from here as before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..functional._core import full_precision as full_precision

__all__ = ["full_precision"]


# The module of Lightning's ``_ResultMetric``, which holds a metric passed to
# ``LightningModule.log`` and accepts only a tensor from its ``compute()``.
_LIGHTNING_RESULT = frozenset({
    "lightning.pytorch.trainer.connectors.logger_connector.result",
    "pytorch_lightning.trainer.connectors.logger_connector.result",
})


def _lightning_logs(frame: Any) -> bool:
    """Whether ``frame`` is Lightning's logger computing a metric it was given by ``self.log``."""
    return frame is not None and frame.f_code.co_name == "compute" \
        and frame.f_globals.get("__name__") in _LIGHTNING_RESULT


def _own_dtypes(value: Any, device: torch.device) -> Any:
    """A computed result on ``device``, every tensor keeping its own dtype.

    >>> out = _own_dtypes({"mean": torch.tensor(3.0), "ids": ["a"]}, torch.device("cpu"))
    >>> out["mean"].dtype, out["ids"]
    (torch.float32, ['a'])
    """
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _own_dtypes(v, device) for k, v in value.items()}
    return value
