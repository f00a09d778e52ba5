"""transformers adapter, part 1: :class:`TorchmosConfig` and what ``config.json`` carries.

Import the public names from :mod:`torchmos.adapters.hf`; this module only holds the config.

The config of a torchmos model is also that of a *regression head* in transformers'
conventions: ``problem_type="regression"``, one label (``num_labels == 1``, ``id2label``
``{0: <card name>}``), so ``pipeline("audio-classification", model=dir)`` returns the
score itself (that pipeline applies no softmax to a regression head's logits).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .. import hub
from ._scoring import missing_extra

try:
    from huggingface_hub.dataclasses import strict
    from transformers import PreTrainedConfig
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("hf", "transformers>=5.4,<6", _e) from _e

__all__ = ["SHIM_MODULE", "TASK", "TorchmosConfig"]

TASK = "audio-quality"
SHIM_MODULE = "torchmos_hf"  # the module saved beside config.json for trust_remote_code users
SHIM_SOURCE = (
    '"""Loads the torchmos classes for transformers\' auto classes (pip install torchmos)."""\n'
    "from torchmos.adapters.hf import (  # noqa: F401\n"
    "    AudioQualityPipeline,\n"
    "    TorchmosConfig,\n"
    "    TorchmosFeatureExtractor,\n"
    "    TorchmosForAudioQuality,\n"
    ")\n"
)
AUTO_MAP = {
    "AutoConfig": f"{SHIM_MODULE}.TorchmosConfig",
    "AutoModel": f"{SHIM_MODULE}.TorchmosForAudioQuality",
    "AutoModelForAudioClassification": f"{SHIM_MODULE}.TorchmosForAudioQuality",
    "AutoFeatureExtractor": f"{SHIM_MODULE}.TorchmosFeatureExtractor",
}
CUSTOM_PIPELINES = {TASK: {"impl": f"{SHIM_MODULE}.AudioQualityPipeline", "pt": ["AutoModel"], "type": "audio"}}


class _InferredTask(Mapping):
    """``config.custom_pipelines`` of a loaded :class:`TorchmosConfig`: names the task, declares no code.

    ``pipeline(model=dir)`` without a task infers it, offline, only from
    ``config.custom_pipelines`` (the first key when there is one); a task that is *in*
    that mapping is then loaded as remote code, which needs ``trust_remote_code=True``.
    This mapping lists ``"audio-quality"`` (so the task is inferred) but reports it as not
    contained (so transformers takes the pipeline that torchmos registered, with no
    remote code). ``tests/integrations/test_integration_transformers.py`` pins that
    behaviour of transformers' ``pipeline()``.
    """

    def __init__(self, task: str, entry: dict[str, Any]) -> None:
        self._task, self._entry = task, entry

    def __getitem__(self, key: str) -> dict[str, Any]:
        if key != self._task:
            raise KeyError(key)
        return dict(self._entry)

    def __iter__(self) -> Iterator[str]:
        return iter((self._task,))

    def __len__(self) -> int:
        return 1

    def __contains__(self, key: object) -> bool:
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._task!r}: registered by torchmos)"


@strict
class TorchmosConfig(PreTrainedConfig):
    """Configuration of a :class:`TorchmosForAudioQuality`: which torchmos predictor it wraps.

    Args:
        mos_model: the torchmos card name (``"distillmos"``, ``"scoreq-nr-natural"``, ...).
        sampling_rate: the predictor's native rate (from the card).
        model_options: options passed to ``torchmos.models.load`` (e.g. ``{"precision": "bf16"}``).
        mode: ``"nr"`` (no reference) or ``"ref"``.
        higher_is_better: whether a higher score means better quality.
        score_range: the score's nominal range.
        architecture: how to build the network without its weights (see
            :func:`torchmos.models.architecture`); ``None`` (directories saved by torchmos before
            it) builds the card's official model first.

    It is a regression head's config: unless given, ``problem_type="regression"`` and
    ``id2label={0: mos_model}`` (so ``num_labels == 1``).

    ``auto_map`` and ``custom_pipelines`` are written into ``config.json`` on save (for Hub
    users) but never loaded as such: ``custom_pipelines`` becomes a hint that makes
    ``pipeline(model=dir)`` infer ``"audio-quality"`` offline, and ``pipeline("audio-quality",
    model=dir)`` uses the registered pipeline without asking for ``trust_remote_code``.

    >>> cfg = TorchmosConfig.from_card("distillmos")
    >>> cfg.problem_type, cfg.num_labels, cfg.id2label
    ('regression', 1, {0: 'distillmos'})
    """

    model_type = "torchmos"

    mos_model: str = "distillmos"
    sampling_rate: int = 16000
    model_options: dict | None = None
    mode: str = "nr"
    higher_is_better: bool = True
    score_range: list[float] | None = None
    architecture: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        kwargs.pop("auto_map", None)
        kwargs.pop("custom_pipelines", None)
        if self.id2label is None and kwargs.get("num_labels") in (None, 1):
            kwargs.pop("num_labels", None)
            self.id2label = {0: self.mos_model}
            self.label2id = {self.mos_model: 0}
        if self.problem_type is None:
            self.problem_type = "regression"
        super().__post_init__(**kwargs)
        self.custom_pipelines = _InferredTask(TASK, CUSTOM_PIPELINES[TASK])

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["auto_map"] = dict(AUTO_MAP)
        out["custom_pipelines"] = {k: dict(v) for k, v in CUSTOM_PIPELINES.items()}
        return out

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoConfig") -> None:
        """No-op: the saved ``auto_map`` points at the ``torchmos_hf`` shim, never at a copy of this file."""

    @classmethod
    def from_card(cls, name: str, **options: Any) -> TorchmosConfig:
        """The config of the card ``name`` (``options`` as for ``torchmos.models.load``)."""
        card = hub.get_card(name)
        return cls(mos_model=card.name, sampling_rate=card.sample_rate, model_options=options or None,
                   mode=card.mode, higher_is_better=card.higher_is_better, score_range=list(card.score_range))
