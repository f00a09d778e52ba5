"""transformers adapter: any torchmos predictor as a ``PreTrainedModel``, natively and as a pipeline.

* :class:`TorchmosConfig` / :class:`TorchmosForAudioQuality`: a ``PreTrainedConfig`` and
  ``PreTrainedModel`` wrapping a torchmos network, in transformers' conventions for a
  regression head (``problem_type="regression"``, one label, ``logits`` (B, 1));
  ``save_pretrained`` writes safetensors;
* :class:`TorchmosFeatureExtractor`: mono float waveforms at the model's rate, padded,
  with an attention mask (no normalisation: the torchmos models do their own);
* :class:`AudioQualityPipeline`, registered as the task ``"audio-quality"``.

Importing this module registers the classes with ``AutoConfig``, ``AutoModel``,
``AutoModelForAudioClassification``, ``AutoFeatureExtractor`` and the pipeline with
``PIPELINE_REGISTRY``. ``import torchmos`` arranges that on its own as soon as
``transformers.pipelines`` is imported (see :func:`torchmos.adapters.install_transformers_hook`),
without importing transformers. A saved directory then works with

* ``pipeline("audio-quality", model=dir)``: ``{"score": float, "model": name}`` per input;
* ``pipeline("audio-classification", model=dir)``: transformers' own pipeline, which returns
  ``[{"score": float, "label": name}]`` per input, the score being the model's output
  itself (a regression head's logits are not passed through softmax);
* ``pipeline(model=dir)``: the task inferred offline from ``config.json``: ``"audio-quality"``.

>>> from transformers import pipeline                                    # doctest: +SKIP
>>> TorchmosForAudioQuality.from_torchmos("distillmos").save_pretrained("dmos")  # doctest: +SKIP
>>> pipeline("audio-quality", model="dmos")("speech.wav")                # doctest: +SKIP
{'score': 3.21..., 'model': 'distillmos'}
>>> pipeline("audio-classification", model="dmos")(waveform_16k)         # doctest: +SKIP
[{'score': 3.21..., 'label': 'distillmos'}]

A saved directory is self-contained: ``config.json`` records the network's architecture
(``architecture``), so ``from_pretrained`` rebuilds it with empty weights and fills every
one from ``model.safetensors``, strictly, with no torchmos weight file, cache or network
(a trained or resized SCOREQ, VQScore or MSR-UTMOS model reloads offline).

A saved directory is ready for ``push_to_hub``: ``config.json`` carries ``auto_map`` and
``custom_pipelines`` pointing at a two-line module ``torchmos_hf.py`` saved beside it, so
``pipeline("audio-quality", model="user/repo", trust_remote_code=True)`` works for users who
have torchmos installed but did not import it.

The code lives in ``hf_config`` (config), ``hf_features`` (feature extractor),
``hf_model`` (model) and ``hf_pipeline`` (pipeline); import it from here.
"""

from __future__ import annotations

from ._scoring import missing_extra

try:  # first, so that a missing transformers is reported by this module
    import transformers  # noqa: F401
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("hf", "transformers>=5.4,<6", _e) from _e

from transformers import (  # noqa: E402
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
)
from transformers.pipelines import PIPELINE_REGISTRY  # noqa: E402

from .hf_config import SHIM_MODULE, TASK, TorchmosConfig  # noqa: E402
from .hf_features import TorchmosFeatureExtractor  # noqa: E402
from .hf_model import AudioQualityOutput, TorchmosForAudioQuality  # noqa: E402
from .hf_pipeline import AudioQualityPipeline  # noqa: E402

__all__ = [
    "SHIM_MODULE",
    "TASK",
    "AudioQualityOutput",
    "AudioQualityPipeline",
    "TorchmosConfig",
    "TorchmosFeatureExtractor",
    "TorchmosForAudioQuality",
    "register",
]


def register() -> None:
    """Register the torchmos classes with transformers' auto classes and pipeline registry."""
    AutoConfig.register(TorchmosConfig.model_type, TorchmosConfig, exist_ok=True)
    AutoModel.register(TorchmosConfig, TorchmosForAudioQuality, exist_ok=True)
    AutoModelForAudioClassification.register(TorchmosConfig, TorchmosForAudioQuality, exist_ok=True)
    AutoFeatureExtractor.register(TorchmosConfig, TorchmosFeatureExtractor, exist_ok=True)
    current = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if current is None or current.get("impl") is not AudioQualityPipeline:
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=AudioQualityPipeline,
                                            pt_model=TorchmosForAudioQuality, type="audio")


register()
