"""torchmetrics.Metric subclasses, thin over :mod:`torchmos.models`."""

from .base import MOSMetric
from .distillmos import DistillMOS
from .msr_utmos import MsrUtmos
from .scoreq import ScoreqNR, ScoreqRef
from .vqscore import VQScore

__all__ = ["DistillMOS", "MOSMetric", "MsrUtmos", "ScoreqNR", "ScoreqRef", "VQScore"]
