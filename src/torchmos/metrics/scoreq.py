"""The SCOREQ metrics: no-reference MOS (:class:`ScoreqNR`) and reference distance
(:class:`ScoreqRef`), for natural or synthetic speech (SPECS §2).

Their stateless twins, :func:`torchmos.functional.scoreq_nr` and
:func:`torchmos.functional.scoreq_ref`, hold the computation and are importable from here too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..functional import scoreq_nr as scoreq_nr
from ..functional import scoreq_ref as scoreq_ref
from ..functional._scoreq import card_name, model_options, reference_clips, reference_distances
from ._context import full_precision
from .base import MOSMetric, _check_ids

__all__ = ["ScoreqNR", "ScoreqRef", "scoreq_nr", "scoreq_ref"]


def _differentiable(flag: bool, chunk_seconds: float | None, where: str) -> bool:
    if flag and chunk_seconds is not None:
        raise ValueError(f"{where}: differentiable=True scores each clip whole; chunk_seconds is an "
                         "inference option (leave it None).")
    return bool(flag)


class ScoreqNR(MOSMetric):
    """SCOREQ no-reference MOS (higher is better).

    The mean over time of a wav2vec 2.0 BASE encoder's last layer, L2-normalised, then a
    linear MOS head (Ragano, Skoglund & Hines, NeurIPS 2024). The output is an unbounded
    linear regression of MOS on a 1-5 scale (no clamp). Pick the domain the audio comes
    from: ``"natural"`` (trained on NISQA: codecs, VoIP, packet loss, noise, enhancement)
    or ``"synthetic"`` (trained on VoiceMOS 2022: TTS and voice conversion).

    Every clip is scored whole, as the reference does, and its score does not depend on
    the batch it is in. The authors trained on clips of at most 4 s and evaluated on at
    most 15 s; memory grows with the square of the length, so for long files opt into
    ``chunk_seconds=`` (a documented deviation, see docs/metrics/scoreq.md).

    The official weights (Zenodo record 13860326, ~380 MB) are downloaded on first use;
    the authors publish no checksum, so the sha256 of the first download is recorded and
    checked on every later load (pin one with ``sha256=``).

    Args:
        domain: ``"natural"`` (default) or ``"synthetic"``.
        fs: sample rate of the audio given to :meth:`update` (resampled to 16 kHz).
        checkpoint: a local weight file (the official format) instead of the download.
        sha256: pin the weight file's checksum.
        chunk_seconds: ``None`` (faithful, default) or the longest chunk in seconds for
            long files: the embedding is then the mean over chunks (opt-in deviation).
        precision: ``"fp32"`` (faithful) or ``"bf16"`` (opt-in autocast, faster on CPUs
            and GPUs with bf16; error documented).
        per_utterance: also keep every clip's score (compute() returns a dict).
        backbone_config: ``transformers.Wav2Vec2Config`` fields for a checkpoint with
            another backbone size (your own training); the official files use the defaults.
        differentiable: ``forward`` scores through the gradient path (each clip whole), so
            its value carries gradients w.r.t. the audio (``is_differentiable`` is then
            True; ``update`` alone scores as without it). See :class:`torchmos.losses.MOSLoss`.
        kwargs: ``torchmetrics.Metric`` options.

    Example (with a randomly initialised file in the official format; real use simply
    omits ``checkpoint=`` and downloads the authors' weights):

        >>> import torch, tempfile, os
        >>> from torchmos.models.scoreq import ScoreqModel
        >>> from torchmos.metrics.scoreq import ScoreqNR
        >>> tiny = dict(num_hidden_layers=1, hidden_size=48, num_attention_heads=2,
        ...             intermediate_size=96, num_conv_pos_embedding_groups=2, conv_dim=(32,) * 7)
        >>> ckpt = os.path.join(tempfile.mkdtemp(), "adapt_nr_telephone.pt")
        >>> torch.save(ScoreqModel("nr", **tiny).to_official_state_dict(), ckpt)
        >>> metric = ScoreqNR(domain="natural", fs=16000, checkpoint=ckpt, backbone_config=tiny)
        >>> g = torch.Generator().manual_seed(0)
        >>> metric.update(torch.randn(2, 16000, generator=g) * 0.1)
        >>> metric.update([torch.randn(24000, generator=g) * 0.1])
        >>> metric.compute().shape, int(metric.total)
        (torch.Size([]), 3)
    """

    plot_lower_bound = 1.0
    plot_upper_bound = 5.0

    def __init__(self, domain: str = "natural", fs: int = 16000, checkpoint: str | os.PathLike | None = None,
                 sha256: str | None = None, chunk_seconds: float | None = None, precision: str = "fp32",
                 per_utterance: bool = False, backbone_config: dict[str, Any] | None = None,
                 differentiable: bool = False, **kwargs: Any) -> None:
        object.__setattr__(self, "card_name", card_name("nr", domain, type(self).__name__))
        super().__init__(fs=fs, checkpoint=checkpoint, sha256=sha256, per_utterance=per_utterance,
                         model_kwargs=model_options(chunk_seconds, precision, backbone_config), **kwargs)
        self.domain = domain
        object.__setattr__(self, "is_differentiable", _differentiable(differentiable, chunk_seconds, type(self).__name__))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_seconds={self._net.chunk_seconds}"


class ScoreqRef(MOSMetric):
    """SCOREQ reference distance: how far a clip's embedding is from clean speech.

    The Euclidean distance between unit-norm SCOREQ embeddings, in [0, 2]; **lower is
    better** (0: the same embedding as the reference). Two ways to give the reference:

    * **full reference**: ``update(preds, target)`` scores each clip against its own clean
      counterpart (same number of clips, any lengths);
    * **non-matching reference**: ``ScoreqRef(references=...)`` fixes a set of clean clips
      (tensors at ``fs``, or audio file paths / folders); their embeddings are computed
      once and cached on the metric's device, and each clip scores the mean distance to
      the set (the paper averaged over 50 clean files). ``update(preds)`` then takes no
      target.

    Args:
        domain: ``"natural"`` (codecs, VoIP, enhancement) or ``"synthetic"`` (TTS, VC).
        fs: sample rate of the audio passed to :meth:`update` and of tensor ``references``.
        references: the non-matching reference set (see above); ``None`` for full reference.
        others: ``checkpoint``, ``sha256``, ``chunk_seconds``, ``precision``,
            ``per_utterance``, ``backbone_config``, ``differentiable`` (gradients w.r.t.
            ``preds``, the references stay constants) and ``kwargs`` are as in :class:`ScoreqNR`.

    Example (random-weight file in the official format; real use omits ``checkpoint=``):

        >>> import torch, tempfile, os
        >>> from torchmos.models.scoreq import ScoreqModel
        >>> from torchmos.metrics.scoreq import ScoreqRef
        >>> tiny = dict(num_hidden_layers=1, hidden_size=48, num_attention_heads=2,
        ...             intermediate_size=96, num_conv_pos_embedding_groups=2, conv_dim=(32,) * 7)
        >>> ckpt = os.path.join(tempfile.mkdtemp(), "fixed_nmr_telephone.pt")
        >>> torch.save(ScoreqModel("ref", **tiny).to_official_state_dict(), ckpt)
        >>> g = torch.Generator().manual_seed(0)
        >>> clean = torch.randn(2, 16000, generator=g) * 0.1
        >>> fr = ScoreqRef(checkpoint=ckpt, backbone_config=tiny)
        >>> fr.update(clean + 0.05 * torch.randn(2, 16000, generator=g), clean)
        >>> 0.0 <= float(fr.compute()) <= 2.0
        True
        >>> nmr = ScoreqRef(checkpoint=ckpt, backbone_config=tiny, references=list(clean))
        >>> nmr.update(torch.randn(3, 12000, generator=g) * 0.1)
        >>> int(nmr.total)
        3
    """

    higher_is_better = False
    plot_lower_bound = 0.0
    plot_upper_bound = 2.0

    def __init__(self, domain: str = "natural", fs: int = 16000, references: Any = None,
                 checkpoint: str | os.PathLike | None = None, sha256: str | None = None,
                 chunk_seconds: float | None = None, precision: str = "fp32", per_utterance: bool = False,
                 backbone_config: dict[str, Any] | None = None, differentiable: bool = False,
                 **kwargs: Any) -> None:
        object.__setattr__(self, "card_name", card_name("ref", domain, type(self).__name__))
        super().__init__(fs=fs, checkpoint=checkpoint, sha256=sha256, per_utterance=per_utterance,
                         model_kwargs=model_options(chunk_seconds, precision, backbone_config), **kwargs)
        self.domain = domain
        object.__setattr__(self, "is_differentiable", _differentiable(differentiable, chunk_seconds, type(self).__name__))
        self._ref_emb: Tensor | None = None
        self.reference_ids: list[str] = []
        if references is not None:
            with full_precision(self.device):  # built in the metric's own precision, as it scores
                clips, self.reference_ids = reference_clips(references, self.fs, self.card)
                self._ref_emb = self._net.embed(clips).to(self.device)

    @property
    def reference_embeddings(self) -> Tensor | None:
        """(R, 768) embeddings of the non-matching reference set (None in full-reference mode)."""
        return self._ref_emb

    def _apply(self, fn: Any, exclude_state: Sequence[str] = "") -> nn.Module:
        this = super()._apply(fn, exclude_state)
        if getattr(self, "_ref_emb", None) is not None:
            self._ref_emb = self._ref_emb.to(self.device)  # follow the device, keep float32
        return this

    def update(self, preds: Any, target: Any = None, lengths: Any = None, target_lengths: Any = None,
               ids: Sequence[str] | None = None) -> None:
        """Score a batch against its references (``target``) or the fixed reference set.

        ``preds``/``target``: (T,), (B, T) (+ ``lengths``/``target_lengths``) or lists of
        1-D clips at ``fs``; ``target[b]`` is the clean reference of ``preds[b]``.
        ``ids``: a list of strings, one per clip; a batch that raises changes no state.
        """
        ids = _check_ids(ids, preds)
        scores = self._ref_scores(preds, target, lengths, target_lengths, ids)
        self._accumulate(scores, ids)

    def _ref_scores(self, preds: Any, target: Any, lengths: Any, target_lengths: Any,
                    ids: Sequence[str] | None) -> Tensor:
        if target is None and self._ref_emb is None:
            raise ValueError(
                "ScoreqRef needs a reference: pass update(preds, target) with each clip's clean "
                "counterpart (full reference), or build ScoreqRef(references=[...]) with a set of "
                "clean clips (non-matching reference)."
            )
        if target is not None and self._ref_emb is not None:
            raise ValueError(
                "this ScoreqRef was built with references= (non-matching mode), so update() takes "
                "no target; build a ScoreqRef without references= to score against paired targets."
            )
        return reference_distances(self._net, self.card, preds, self.fs, lengths, ids, target=target,
                                   target_lengths=target_lengths, ref_embeddings=self._ref_emb,
                                   differentiable=self.is_differentiable)

    def _scores(self, preds: Any, lengths: Any, ids: Sequence[str] | None) -> Tensor:
        return self._ref_scores(preds, None, lengths, None, ids)

    def extra_repr(self) -> str:
        mode = f"non-matching ({self._ref_emb.shape[0]} references)" if self._ref_emb is not None else "full reference"
        return f"{super().extra_repr()}, reference={mode}"

