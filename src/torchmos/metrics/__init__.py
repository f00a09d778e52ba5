"""torchmetrics.Metric subclasses, thin over :mod:`torchmos.models`."""

from .base import MOSMetric
from .distillmos import DistillMOS

__all__ = ["DistillMOS", "MOSMetric"]
