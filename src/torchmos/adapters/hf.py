"""transformers adapter: any torchmos predictor as a ``PreTrainedModel`` and a pipeline.

* :class:`TorchmosConfig` / :class:`TorchmosForAudioQuality`: a ``PreTrainedConfig`` and
  ``PreTrainedModel`` wrapping a torchmos network; ``save_pretrained`` writes safetensors;
* :class:`TorchmosFeatureExtractor`: mono float waveforms at the model's rate, padded,
  with an attention mask (no normalisation: the torchmos models do their own);
* :class:`AudioQualityPipeline`, registered as the task ``"audio-quality"``.

Importing this module registers the three classes with ``AutoConfig``, ``AutoModel``,
``AutoFeatureExtractor`` and the pipeline with ``PIPELINE_REGISTRY``. ``import torchmos``
arranges that on its own as soon as ``transformers.pipelines`` is imported (see
:func:`torchmos.adapters.install_transformers_hook`), without importing transformers.

>>> from transformers import pipeline                                    # doctest: +SKIP
>>> TorchmosForAudioQuality.from_torchmos("distillmos").save_pretrained("dmos")  # doctest: +SKIP
>>> pipe = pipeline("audio-quality", model="dmos")                       # doctest: +SKIP
>>> pipe("speech.wav")                                                   # doctest: +SKIP
{'score': 3.21..., 'model': 'distillmos'}

A saved directory is self-contained: ``config.json`` records the network's architecture
(``architecture``), so ``from_pretrained`` rebuilds it with empty weights and fills every
one from ``model.safetensors``, strictly, with no torchmos weight file, cache or network
(a trained or resized SCOREQ, VQScore or MSR-UTMOS model reloads offline).

A saved directory is ready for ``push_to_hub``: ``config.json`` carries ``auto_map`` and
``custom_pipelines`` pointing at a two-line module ``torchmos_hf.py`` saved beside it, so
``pipeline("audio-quality", model="user/repo", trust_remote_code=True)`` works for users who
have torchmos installed but did not import it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import audio, hub, models
from . import missing_extra, score_with

try:
    from huggingface_hub.dataclasses import strict
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoModel,
        BatchFeature,
        PreTrainedConfig,
        PreTrainedModel,
        SequenceFeatureExtractor,
    )
    from transformers.pipelines import PIPELINE_REGISTRY, Pipeline
    from transformers.utils import ModelOutput
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("hf", "transformers>=5", _e) from _e

__all__ = [
    "AudioQualityOutput",
    "AudioQualityPipeline",
    "TorchmosConfig",
    "TorchmosFeatureExtractor",
    "TorchmosForAudioQuality",
    "register",
]

TASK = "audio-quality"
SHIM_MODULE = "torchmos_hf"  # the module saved beside config.json for trust_remote_code users
_SHIM_SOURCE = (
    '"""Loads the torchmos classes for transformers\' auto classes (pip install torchmos)."""\n'
    "from torchmos.adapters.hf import (  # noqa: F401\n"
    "    AudioQualityPipeline,\n"
    "    TorchmosConfig,\n"
    "    TorchmosFeatureExtractor,\n"
    "    TorchmosForAudioQuality,\n"
    ")\n"
)
_AUTO_MAP = {
    "AutoConfig": f"{SHIM_MODULE}.TorchmosConfig",
    "AutoModel": f"{SHIM_MODULE}.TorchmosForAudioQuality",
    "AutoFeatureExtractor": f"{SHIM_MODULE}.TorchmosFeatureExtractor",
}
_CUSTOM_PIPELINES = {TASK: {"impl": f"{SHIM_MODULE}.AudioQualityPipeline", "pt": ["AutoModel"], "type": "audio"}}


# ----------------------------------------------------------------------------- config


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

    ``auto_map`` and ``custom_pipelines`` are written into ``config.json`` on save (for Hub
    users) but never set on the object, so ``pipeline("audio-quality", model=dir)`` uses
    the registered pipeline without asking for ``trust_remote_code``.
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
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["auto_map"] = dict(_AUTO_MAP)
        out["custom_pipelines"] = {k: dict(v) for k, v in _CUSTOM_PIPELINES.items()}
        return out

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoConfig") -> None:
        """No-op: the saved ``auto_map`` points at the ``torchmos_hf`` shim, never at a copy of this file."""

    @classmethod
    def from_card(cls, name: str, **options: Any) -> TorchmosConfig:
        card = hub.get_card(name)
        return cls(mos_model=card.name, sampling_rate=card.sample_rate, model_options=options or None,
                   mode=card.mode, higher_is_better=card.higher_is_better, score_range=list(card.score_range))


# ----------------------------------------------------------------------------- architecture

def _build_net(config: TorchmosConfig) -> torch.nn.Module:
    if config.architecture:
        return models.build(config.architecture, config.model_options)
    if hub.get_card(config.mos_model).weights is None:
        raise ValueError(
            f"config.json has no 'architecture' (saved by an older torchmos), and {config.mos_model!r} has no "
            "official model to start from. Wrap the weight file again with TorchmosForAudioQuality."
            f"from_torchmos({config.mos_model!r}, checkpoint=...) and save_pretrained it."
        )
    return models.load(config.mos_model, **(config.model_options or {}))


# ----------------------------------------------------------------------------- model


@dataclass
class AudioQualityOutput(ModelOutput):
    """Output of :class:`TorchmosForAudioQuality`: ``scores`` (B,), one per clip."""

    scores: torch.Tensor | None = None


def _rows(t: Any, idx: list[int]) -> Any:
    return None if t is None else torch.as_tensor(t)[idx]


def _non_persistent_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    names: set[str] = getattr(module, "_non_persistent_buffers_set", set())
    return {n: b.detach().clone() for n, b in module.named_buffers(recurse=False) if n in names and b is not None}


class TorchmosForAudioQuality(PreTrainedModel):
    """A torchmos predictor as a ``PreTrainedModel``; ``forward`` returns one score per clip.

    Build one with :meth:`from_torchmos`; ``save_pretrained`` / ``from_pretrained`` /
    ``push_to_hub`` then work as for any transformers model (weights in safetensors).
    Scores equal :mod:`torchmos.functional` on the same audio.

    ``from_pretrained`` builds the network from ``config.architecture`` (no weight file,
    cache or download involved) and loads every weight from the directory, strictly: a
    missing, unexpected or misshapen weight is an error. Directories without
    ``architecture`` (older torchmos) build the card's official model first.
    """

    config_class = TorchmosConfig
    base_model_prefix = "torchmos"
    main_input_name = "input_values"
    _no_split_modules: list[str] = []

    def __init__(self, config: TorchmosConfig, net: torch.nn.Module | None = None) -> None:
        super().__init__(config)
        if net is None:
            # transformers builds models on the meta device; a torchmos network is built
            # for real (its non-persistent buffers, e.g. STFT windows, are never saved).
            with torch.device("cpu"):
                net = _build_net(config)
        else:
            self.config.architecture = models.architecture(net, hub.get_card(config.mos_model).family)
        self.net = net.eval()
        for module in self.net.modules():
            snapshot = _non_persistent_buffers(module)
            if snapshot:
                object.__setattr__(module, "_torchmos_buffers", snapshot)
        self.post_init()

    @property
    def card(self) -> hub.ModelCard:
        return hub.get_card(self.config.mos_model)

    @classmethod
    def from_torchmos(cls, model: str = "distillmos", checkpoint: str | os.PathLike | None = None,
                      sha256: str | None = None, **options: Any) -> TorchmosForAudioQuality:
        """Wrap the torchmos predictor ``model`` (official weights, or ``checkpoint=``)."""
        config = TorchmosConfig.from_card(model, **options)
        net = models.load(config.mos_model, checkpoint=checkpoint, sha256=sha256, **options)
        return cls(config, net=net)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained``, strict: every weight of the network that
        ``config.json`` describes must be in the saved weights, and nothing else."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                              **kwargs)
        wrong = [f"{what} {sorted(map(str, info[key]))[:5]}" for key, what in
                 (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                  ("mismatched_keys", "of another shape")) if info.get(key)]
        if wrong:
            raise ValueError(f"{pretrained_model_name_or_path}: the saved weights do not fit the network its "
                             f"config.json describes: keys {'; '.join(wrong)}.")
        # transformers loads by replacing parameters, which undoes SCOREQ's q/k/v packing
        # (one GEMM per layer): pack them again, so scores equal the saved model's bit for bit.
        repack = getattr(model.net, "_fuse_qkv", None)
        if callable(repack):
            repack()
        return (model, info) if want_info else model

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoModel") -> None:
        """No-op (see :meth:`TorchmosConfig.register_for_auto_class`)."""

    def init_weights(self) -> None:
        """Never initialise (``post_init`` would, e.g. MSR-UTMOS's SFI layer inside its
        transformers backbone): the weights come from torchmos or from the saved file."""

    def _init_weights(self, module: torch.nn.Module) -> None:
        # Parameters come from torchmos or from the saved file, never from random init;
        # only restore the non-persistent buffers transformers re-creates after loading.
        snapshot = getattr(module, "_torchmos_buffers", None)
        if snapshot:
            for name, value in snapshot.items():
                buf = getattr(module, name)
                if buf is not None and buf.device.type != "meta":
                    buf.copy_(value.to(buf.device, buf.dtype))

    def train(self, mode: bool = True) -> TorchmosForAudioQuality:
        super().train(mode)
        self.net.eval()  # an inference network: BatchNorm etc. always in eval mode
        return self

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None, reference_values: torch.Tensor | None = None,
                reference_attention_mask: torch.Tensor | None = None, return_dict: bool | None = None,
                sampling_rate: int | torch.Tensor | None = None, **kwargs: Any) -> AudioQualityOutput | tuple:
        """Score ``input_values`` (B, T) at ``sampling_rate`` (default ``config.sampling_rate``;
        other rates are resampled; a native-rate model, ``config.sampling_rate == 0``, needs
        it: one rate, or one per row).

        Padding is given by ``attention_mask`` (1 = sample, 0 = padding) or ``lengths``
        (samples per row); padded samples are never scored. Reference models also take
        ``reference_values`` (+ ``reference_attention_mask``).
        """
        x = input_values if input_values.dim() > 1 else input_values.unsqueeze(0)
        if lengths is None and attention_mask is not None:
            lengths = attention_mask.reshape(x.shape[0], -1).sum(-1)
        refs, ref_lengths = reference_values, None
        if refs is not None:
            refs = refs if refs.dim() > 1 else refs.unsqueeze(0)
            if reference_attention_mask is not None:
                ref_lengths = reference_attention_mask.reshape(refs.shape[0], -1).sum(-1)
        rates = self._rates(sampling_rate, x.shape[0])
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rates):
            groups.setdefault(r, []).append(i)
        if len(groups) == 1:
            scores = score_with(self.net, self.card, x, rates[0], lengths, refs=refs, ref_lengths=ref_lengths)
        else:  # one call per rate: a clip's score never depends on the rest of its batch
            parts = [score_with(self.net, self.card, x[idx], r, _rows(lengths, idx), refs=_rows(refs, idx),
                                ref_lengths=_rows(ref_lengths, idx)) for r, idx in groups.items()]
            order = torch.tensor([i for idx in groups.values() for i in idx], device=parts[0].device)
            scores = torch.cat(parts).index_select(0, torch.argsort(order))
        if return_dict is False:
            return (scores,)
        return AudioQualityOutput(scores=scores)

    def _rates(self, sampling_rate: Any, n: int) -> list[int]:
        fs = self.config.sampling_rate if sampling_rate is None else sampling_rate
        rates = [int(r) for r in torch.as_tensor(fs).reshape(-1).tolist()]
        rates = rates * n if len(rates) == 1 else rates
        if len(rates) != n:
            raise ValueError(f"{len(rates)} sampling rates for {n} clips; give one, or one per clip.")
        if min(rates) <= 0:
            raise ValueError(f"{self.config.mos_model!r} scores audio at its native rate: pass sampling_rate= "
                             "(the rate of input_values, or one per row).")
        return rates

    def make_feature_extractor(self) -> TorchmosFeatureExtractor:
        """The feature extractor that goes with this model."""
        return TorchmosFeatureExtractor(sampling_rate=self.config.sampling_rate)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Save config, safetensors weights, the feature extractor and the ``torchmos_hf`` shim."""
        self.config.architecture = models.architecture(self.net, self.card.family)
        out = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.make_feature_extractor().save_pretrained(save_directory)
            Path(save_directory, f"{SHIM_MODULE}.py").write_text(_SHIM_SOURCE)
        return out


# ----------------------------------------------------------------------------- feature extractor


class TorchmosFeatureExtractor(SequenceFeatureExtractor):
    """Mono waveforms at the model's rate -> padded ``input_values`` + ``attention_mask``.

    Integer PCM is scaled to [-1, 1] (as :func:`torchmos.audio.to_float`); no
    normalisation, since torchmos models normalise as their reference does. For a
    native-rate model (``sampling_rate=0``, MSR-UTMOS) every call names its rate, which
    comes back as ``sampling_rate`` (one per clip) for the model.
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(self, feature_size: int = 1, sampling_rate: int = 16000, padding_value: float = 0.0,
                 return_attention_mask: bool = True, **kwargs: Any) -> None:
        kwargs.pop("auto_map", None)
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value,
                         return_attention_mask=return_attention_mask, **kwargs)

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoFeatureExtractor") -> None:
        """No-op (see :meth:`TorchmosConfig.register_for_auto_class`)."""

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["auto_map"] = {"AutoFeatureExtractor": _AUTO_MAP["AutoFeatureExtractor"]}
        return out

    def __call__(self, raw_speech: Any, sampling_rate: int | None = None, padding: bool | str = True,
                 max_length: int | None = None, return_tensors: str | None = None,
                 return_attention_mask: bool | None = None, **kwargs: Any) -> BatchFeature:
        """One clip (1-D) or a batch (2-D array, or a list of 1-D clips) at ``sampling_rate``."""
        native = not self.sampling_rate
        if native and sampling_rate is None:
            raise ValueError("this feature extractor is for a native-rate model: pass sampling_rate= "
                             "(the rate of the audio; it is not resampled).")
        if not native and sampling_rate is not None and int(sampling_rate) != self.sampling_rate:
            raise ValueError(
                f"this feature extractor takes audio at {self.sampling_rate} Hz, got {sampling_rate} Hz; "
                "resample first (the 'audio-quality' pipeline does it for dict inputs)."
            )
        if isinstance(raw_speech, (np.ndarray, torch.Tensor)) and raw_speech.ndim == 2:
            clips = list(raw_speech)
        elif isinstance(raw_speech, (list, tuple)) and raw_speech and not np.isscalar(raw_speech[0]):
            clips = list(raw_speech)
        else:
            clips = [raw_speech]
        values = []
        for i, c in enumerate(clips):
            if not isinstance(c, (np.ndarray, torch.Tensor)):
                c = np.asarray(c, dtype=np.float32)
            x = audio.to_float(c.detach().cpu() if isinstance(c, torch.Tensor) else c, f"raw_speech[{i}]")
            if x.dim() != 1:
                raise ValueError(f"raw_speech[{i}]: expected a mono 1-D clip, got shape {tuple(x.shape)}.")
            values.append(x.numpy())
        encoded = BatchFeature({"input_values": values})
        out = self.pad(encoded, padding=padding, max_length=max_length,
                       return_attention_mask=self.return_attention_mask if return_attention_mask is None
                       else return_attention_mask, return_tensors=return_tensors)
        if native:
            out = BatchFeature({**out, "sampling_rate": [int(sampling_rate or 0)] * len(values)},
                               tensor_type=return_tensors)
        return out


# ----------------------------------------------------------------------------- pipeline


class AudioQualityPipeline(Pipeline):
    """``pipeline("audio-quality")``: the predicted quality of each input.

    Inputs, one or a list of them (batched with ``batch_size=``):

    * ``str``: a path to an audio file (read with :func:`torchmos.audio.read`);
    * ``bytes``: the content of an audio file;
    * ``numpy.ndarray`` / ``torch.Tensor``: a mono waveform *at the model's rate*;
    * ``dict``: ``{"raw" or "array": waveform, "sampling_rate": Hz}`` (``datasets`` style),
      resampled to the model's rate with torchaudio's windowed-sinc resampler, as
      ``AudioClassificationPipeline`` does.

    A native-rate model (MSR-UTMOS) scores each input at its own rate, never resampled;
    a bare waveform has no rate, so it takes paths, bytes and dicts.

    Returns ``{"score": float, "model": name}`` per input.
    """

    _load_processor = False  # type: ignore[assignment]
    _load_image_processor = False  # type: ignore[assignment]
    _load_video_processor = False  # type: ignore[assignment]
    _load_feature_extractor = True  # type: ignore[assignment]
    _load_tokenizer = False  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        model = kwargs.get("model", args[0] if args else None)
        if kwargs.get("feature_extractor") is None and isinstance(model, TorchmosForAudioQuality):
            kwargs["feature_extractor"] = model.make_feature_extractor()
        super().__init__(*args, **kwargs)

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        return {}, {}, {}

    @property
    def _extractor(self) -> Any:
        if self.feature_extractor is None:
            raise ValueError("the audio-quality pipeline needs a feature extractor (TorchmosFeatureExtractor).")
        return self.feature_extractor

    def _waveform(self, inputs: Any) -> tuple[np.ndarray, int]:
        """The input as a mono waveform at the model's rate (a native-rate model: its own), and that rate."""
        target = int(self._extractor.sampling_rate)  # 0: native rate, never resampled

        def fit(x: torch.Tensor, fs: int) -> tuple[np.ndarray, int]:
            return (audio.resample(x, fs, target).numpy(), target) if target else (x.numpy(), int(fs))

        if isinstance(inputs, (str, os.PathLike)):
            s = os.fspath(inputs)
            if s.startswith(("http://", "https://")):
                raise ValueError(f"{s}: torchmos does not download audio; download the file and pass its path.")
            return fit(*audio.read(s))
        if isinstance(inputs, (bytes, bytearray)):
            with tempfile.NamedTemporaryFile(suffix=".audio") as f:
                f.write(inputs)
                f.flush()
                x, fs = audio.read(f.name)
            return fit(x, fs)
        if isinstance(inputs, dict):
            if "sampling_rate" not in inputs or not ("raw" in inputs or "array" in inputs):
                raise ValueError(
                    'a dict input needs "sampling_rate" and the waveform under "raw" or "array" '
                    '(e.g. {"array": wav, "sampling_rate": 16000}).'
                )
            wav = inputs["raw"] if "raw" in inputs else inputs["array"]
            fs = audio.check_sample_rate(inputs["sampling_rate"], "sampling_rate")
            x = audio.to_float(wav.detach().cpu() if isinstance(wav, torch.Tensor) else np.asarray(wav), "input")
            if x.dim() != 1:
                raise ValueError(f"expected a mono 1-D waveform, got shape {tuple(x.shape)}; mix it down first.")
            return fit(x, fs)
        if isinstance(inputs, torch.Tensor):
            inputs = inputs.detach().cpu()
        if isinstance(inputs, (torch.Tensor, np.ndarray)):
            if not target:
                raise ValueError(f"{self.model.config.mos_model!r} scores audio at its own rate, which a bare "
                                 'waveform does not carry: pass {"array": waveform, "sampling_rate": Hz}, '
                                 "a path or bytes.")
            x = audio.to_float(inputs, "input")
            if x.dim() != 1:
                raise ValueError(f"expected a mono 1-D waveform, got shape {tuple(x.shape)}; mix it down first.")
            return x.numpy(), target
        raise TypeError(
            f"cannot score a {type(inputs).__name__}; pass a path, bytes, a waveform or "
            '{"array": waveform, "sampling_rate": Hz}.'
        )

    def preprocess(self, input_: Any, **kwargs: Any) -> Any:
        if getattr(self.model.config, "mode", "nr") == "ref":
            raise ValueError(
                f"the audio-quality pipeline scores without a reference, but {self.model.config.mos_model!r} "
                "needs one; call the model with reference_values= instead."
            )
        wav, fs = self._waveform(input_)
        return self._extractor(wav, sampling_rate=fs, return_tensors="pt")

    def _forward(self, input_tensors: Any, **kwargs: Any) -> Any:
        return self.model(**input_tensors)

    def postprocess(self, model_outputs: Any, **kwargs: Any) -> Any:
        scores = model_outputs["scores"].reshape(-1)
        return {"score": float(scores[0]), "model": self.model.config.mos_model}

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save the model (with its feature extractor and shim); see :class:`TorchmosForAudioQuality`."""
        self.model.save_pretrained(save_directory, **kwargs)


# ----------------------------------------------------------------------------- registration


def register() -> None:
    """Register the torchmos classes with transformers' auto classes and pipeline registry."""
    AutoConfig.register(TorchmosConfig.model_type, TorchmosConfig, exist_ok=True)
    AutoModel.register(TorchmosConfig, TorchmosForAudioQuality, exist_ok=True)
    AutoFeatureExtractor.register(TorchmosConfig, TorchmosFeatureExtractor, exist_ok=True)
    current = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if current is None or current.get("impl") is not AudioQualityPipeline:
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=AudioQualityPipeline,
                                            pt_model=TorchmosForAudioQuality, type="audio")


register()
