"""transformers adapter, part 4: :class:`AudioQualityPipeline` (import it from :mod:`torchmos.adapters.hf`)."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

import numpy as np
import torch

from .. import audio
from ._scoring import missing_extra

try:
    from transformers.pipelines import Pipeline
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("hf", "transformers>=5.4,<6", _e) from _e

from .hf_model import TorchmosForAudioQuality

__all__ = ["AudioQualityPipeline"]


def decoded_samples(inputs: Any) -> tuple[torch.Tensor, int] | None:
    """``(mono waveform, rate)`` of a torchcodec ``AudioDecoder``; ``None`` for anything else.

    As transformers' audio pipelines do, torchcodec is looked up only if it is already
    imported (an ``AudioDecoder`` exists only then). The decoder's ``get_all_samples()``
    gives ``data`` (channels, samples) and ``sample_rate``; one channel is required
    (decode with ``AudioDecoder(source, num_channels=1)`` to mix down).
    """
    torchcodec = sys.modules.get("torchcodec")
    decoder_class = getattr(getattr(torchcodec, "decoders", None), "AudioDecoder", None)
    if decoder_class is None or not isinstance(inputs, decoder_class):
        return None
    samples = inputs.get_all_samples()
    data = torch.as_tensor(samples.data)
    if data.dim() == 2 and data.shape[0] == 1:
        data = data[0]
    if data.dim() != 1:
        raise ValueError(f"the AudioDecoder gives {tuple(data.shape)} (channels, samples); torchmos scores mono "
                         "audio: decode it with AudioDecoder(source, num_channels=1).")
    return data, int(samples.sample_rate)


class AudioQualityPipeline(Pipeline):
    """``pipeline("audio-quality")``: the predicted quality of each input.

    Inputs, one or a list of them (batched with ``batch_size=``):

    * ``str``: a path to an audio file (read with :func:`torchmos.audio.read`);
    * ``bytes``: the content of an audio file;
    * ``numpy.ndarray`` / ``torch.Tensor``: a mono waveform *at the model's rate*;
    * ``dict``: ``{"raw" or "array": waveform, "sampling_rate": Hz}`` (``datasets`` style),
      resampled to the model's rate with torchaudio's windowed-sinc resampler, as
      ``AudioClassificationPipeline`` does;
    * a torchcodec ``AudioDecoder`` (mono), at its rate, resampled likewise.

    A native-rate model (MSR-UTMOS) scores each input at its own rate, never resampled;
    a bare waveform has no rate, so it takes paths, bytes, dicts and decoders.

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
        decoded = decoded_samples(inputs)
        if decoded is not None:
            x, fs = decoded
            return fit(audio.to_float(x.detach().cpu(), "AudioDecoder"), audio.check_sample_rate(fs, "AudioDecoder"))
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
            f"cannot score a {type(inputs).__name__}; pass a path, bytes, a waveform, "
            '{"array": waveform, "sampling_rate": Hz} or a torchcodec AudioDecoder.'
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
