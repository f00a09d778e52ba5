"""torchmos: learned speech-quality predictors (MOS estimators) for the PyTorch audio ecosystem.

>>> from torchmos import DistillMOS
>>> DistillMOS.higher_is_better
True
"""

from . import audio, functional, hub, models
from .audio import AudioError
from .hub import HubError
from .metrics import DistillMOS, MOSMetric, MsrUtmos, ScoreqNR, ScoreqRef, VQScore

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "DistillMOS",
    "HubError",
    "MOSMetric",
    "MsrUtmos",
    "ScoreqNR",
    "ScoreqRef",
    "VQScore",
    "audio",
    "functional",
    "hub",
    "models",
]

from .adapters import install_transformers_hook as _install_transformers_hook

# pipeline("audio-quality") is registered as soon as transformers.pipelines is imported
# (never imported from here: a one-shot import hook, or at once if already imported).
_install_transformers_hook()
