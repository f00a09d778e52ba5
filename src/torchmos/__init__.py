"""torchmos: learned speech-quality predictors (MOS estimators) for the PyTorch audio ecosystem.

``import torchmos`` is cheap: it loads torch, numpy, soundfile and torchmos' own light
modules (``audio``, ``hub``, ``models``, ``functional``). The metric classes load on
first use (they need torchmetrics), the training recipes only when one runs, and
torchaudio only when a clip must be resampled.

>>> from torchmos import DistillMOS
>>> DistillMOS.higher_is_better
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import audio, functional, hub, models
from .audio import AudioError
from .hub import HubError

__version__ = "0.1.0"

# name -> module that defines it; imported on first attribute access (PEP 562)
_LAZY: dict[str, str] = {
    "DistillMOS": "torchmos.metrics",
    "MOSMetric": "torchmos.metrics",
    "MsrUtmos": "torchmos.metrics",
    "ScoreqNR": "torchmos.metrics",
    "ScoreqRef": "torchmos.metrics",
    "VQScore": "torchmos.metrics",
}
_SUBMODULES = ("adapters", "cli", "losses", "metrics", "report", "stats", "synth", "training")

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .metrics import DistillMOS, MOSMetric, MsrUtmos, ScoreqNR, ScoreqRef, VQScore

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


from .adapters import install_transformers_hook as _install_transformers_hook  # noqa: E402

# pipeline("audio-quality") is registered as soon as transformers.pipelines is imported
# (never imported from here: an import hook, or at once if already imported).
_install_transformers_hook()
