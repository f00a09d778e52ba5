"""What a metric does about its caller's context: reduced precision and Lightning's logger.

Kept apart from :mod:`torchmos.metrics.base` so that both stay short; nothing here
imports torchmetrics or Lightning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["full_precision"]


@contextlib.contextmanager
def full_precision(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the enclosed code as if no reduced-precision context were active.

    Inside, ``torch.autocast`` is off (for CPUs and for ``device``'s type) and the default
    dtype is float32; both are restored on exit. Every :class:`~torchmos.MOSMetric` builds its
    network and scores each batch inside this context, so a Lightning Trainer's
    ``precision="bf16-mixed"`` / ``"16-mixed"`` (autocast) or ``"bf16-true"`` (which makes
    bfloat16 the default dtype while a step runs) cannot change a score. A model's own
    opt-in ``precision="bf16"`` enters its own autocast inside and still applies.

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
    """A computed result on ``device``, every tensor keeping its own dtype."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _own_dtypes(v, device) for k, v in value.items()}
    return value
