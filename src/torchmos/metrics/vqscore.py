"""The VQScore metric; its functional twin :func:`torchmos.functional.vqscore` is
importable from here too."""

from __future__ import annotations

import os
from typing import Any

from ..functional import vqscore as vqscore
from .base import MOSMetric

__all__ = ["VQScore", "vqscore"]


class VQScore(MOSMetric):
    """VQScore: self-supervised speech quality, roughly in [0, 1] (higher is better).

    How well the codebook of a VQ-VAE trained on clean speech only explains a clip:
    the mean over STFT frames of the cosine between the encoder output and its nearest
    code (Fu, Hung, Tsao and Wang, ICLR 2024). No quality labels were used to train it,
    so you can train your own on clean speech of your domain (``torchmos train vqscore``)
    and pass it as ``checkpoint=``. By default the authors' released model (trained on
    LibriSpeech clean-460) is downloaded through the hub; its repository has no licence
    file.

    Scores compare clips scored by the same model; they are not MOS. Every clip is
    scored by its own length (no cropping), so a score does not depend on the batch.

    Args:
        fs: sample rate of the audio given to :meth:`update` (resampled to 16 kHz).
        checkpoint: a local model file: the authors' ``.pkl`` layout or a torchmos
            ``vqscore.pt`` (e.g. from ``torchmos train vqscore``).
        sha256: pin the weight file's checksum.
        per_utterance: also keep every clip's score (compute() returns a dict).
        max_batch_frames: clips are scored in groups of at most this many padded STFT
            frames (memory bound; results do not depend on it).
        kwargs: ``torchmetrics.Metric`` options.

    Example:
        >>> import os, tempfile, torch
        >>> from torchmos.metrics.vqscore import VQScore
        >>> from torchmos.models.vqscore import VQScoreModel
        >>> _ = torch.manual_seed(0)
        >>> path = os.path.join(tempfile.mkdtemp(), "vq.pt")
        >>> _ = VQScoreModel(codebook_size=64, kmeans_init=False).save(path)  # untrained, for the example
        >>> metric = VQScore(fs=16000, checkpoint=path)
        >>> metric.update(torch.randn(2, 16000) * 0.1)
        >>> metric.update([torch.randn(24000) * 0.1])
        >>> 0.0 < float(metric.compute()) < 1.0
        True
    """

    card_name = "vqscore"
    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, fs: int = 16000, checkpoint: str | os.PathLike | None = None, sha256: str | None = None,
                 per_utterance: bool = False, max_batch_frames: int = 8192, **kwargs: Any) -> None:
        super().__init__(fs=fs, checkpoint=checkpoint, sha256=sha256, per_utterance=per_utterance,
                         model_kwargs={"max_batch_frames": max_batch_frames}, **kwargs)

