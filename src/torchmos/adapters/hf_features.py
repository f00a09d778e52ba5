"""transformers adapter, part 2: :class:`TorchmosFeatureExtractor` (import it from :mod:`torchmos.adapters.hf`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import audio
from ._scoring import missing_extra

try:
    from transformers import BatchFeature, SequenceFeatureExtractor
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("hf", "transformers>=5.4,<6", _e) from _e

from .hf_config import AUTO_MAP

__all__ = ["TorchmosFeatureExtractor"]


class TorchmosFeatureExtractor(SequenceFeatureExtractor):
    """Mono waveforms at the model's rate -> padded ``input_values`` + ``attention_mask``.

    Integer PCM is scaled to [-1, 1] (as :func:`torchmos.audio.to_float`); no
    normalisation, since torchmos models normalise as their reference does. For a
    native-rate model (``sampling_rate=0``, MSR-UTMOS) every call names its rate, which
    comes back as ``sampling_rate`` (one per clip) for the model.

    >>> fe = TorchmosFeatureExtractor(sampling_rate=16000)
    >>> batch = fe([np.zeros(1600), np.zeros(800)], sampling_rate=16000, return_tensors="pt")
    >>> tuple(batch["input_values"].shape), batch["attention_mask"].sum(-1).tolist()
    ((2, 1600), [1600, 800])
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
        out["auto_map"] = {"AutoFeatureExtractor": AUTO_MAP["AutoFeatureExtractor"]}
        return out

    def __call__(self, raw_speech: Any, sampling_rate: int | None = None, padding: bool | str = True,
                 max_length: int | None = None, return_tensors: str | None = None,
                 return_attention_mask: bool | None = None, **kwargs: Any) -> BatchFeature:
        """One clip (1-D) or a batch (2-D array, or a list of 1-D clips) at ``sampling_rate``."""
        native = not self.sampling_rate
        if native and not sampling_rate:
            raise ValueError("this feature extractor is for a native-rate model (MSR-UTMOS), which scores each clip "
                             "at its own rate: pass sampling_rate= (the rate of the audio; it is not resampled). "
                             "transformers' audio-classification pipeline cannot pass it on: use "
                             'pipeline("audio-quality") with {"array": waveform, "sampling_rate": Hz}.')
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
            out = BatchFeature({**out, "sampling_rate": [int(sampling_rate)] * len(values)},
                               tensor_type=return_tensors)
        return out
