"""torchmetrics.Metric subclasses, thin over :mod:`torchmos.models`."""

from .base import MOSMetric
from .distillmos import DistillMOS
from .msr_utmos import MsrUtmos

__all__ = ["DistillMOS", "MOSMetric", "MsrUtmos"]
