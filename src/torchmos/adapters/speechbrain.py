"""SpeechBrain adapter: :class:`MOSStats`, a ``MetricStats`` for any torchmos predictor.

Use it where a recipe uses PESQ or STOI stats::

    # hparams.yaml
    mos_stats: !name:torchmos.adapters.speechbrain.MOSStats
        model: distillmos

    # train.py, in the Brain
    def on_stage_start(self, stage, epoch=None):
        if stage != sb.Stage.TRAIN:
            self.mos_metric = self.hparams.mos_stats()

    def compute_objectives(self, predictions, batch, stage):
        ...
        if stage != sb.Stage.TRAIN:
            self.mos_metric.append(batch.id, predict_wav, lens)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss, "mos": self.mos_metric.summarize("average")}

``lens`` are SpeechBrain's relative lengths; the padding beyond each clip's length is
never scored, so a clip's MOS does not depend on its batch. The scores equal
:mod:`torchmos.functional` on the unpadded clips.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from . import Scorer, missing_extra

try:
    from speechbrain.utils.metric_stats import MetricStats
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("speechbrain", "speechbrain", _e) from _e

__all__ = ["MOSStats", "absolute_lengths"]


def absolute_lengths(lens: Any, max_len: int) -> torch.Tensor:
    """SpeechBrain relative lengths (fractions of ``max_len``) -> sample counts.

    Rounded as SpeechBrain rounds them (``round(lens * max_len)``, see
    ``speechbrain.utils.data_utils.undo_padding``), and clipped to ``[1, max_len]``.

    >>> absolute_lengths(torch.tensor([1.0, 0.5]), 16000).tolist()
    [16000, 8000]
    """
    lens = torch.as_tensor(lens, dtype=torch.float64).reshape(-1).cpu()
    if bool((lens <= 0).any()) or bool((lens > 1.0 + 1e-6).any()):
        raise ValueError(
            f"relative lengths must be in (0, 1] (SpeechBrain's convention), got {lens.tolist()}; "
            "pass sample counts to torchmos.functional instead."
        )
    return torch.round(lens * max_len).long().clamp(1, max_len)


class MOSStats(MetricStats):
    """Predicted MOS of every utterance, summarized like SpeechBrain's PESQ/STOI stats.

    Args:
        model: a torchmos card name (``"distillmos"``, ``"scoreq-nr-natural"``, ...).
        sample_rate: default sample rate of the waveforms given to :meth:`append`.
        checkpoint: a local weight file instead of the official one.
        device: where the predictor runs (default: the device of the waveforms).
        options: predictor options, e.g. ``precision="bf16"``.

    After :meth:`append` calls, :meth:`summarize` gives ``average``, ``min_score``,
    ``min_id``, ``max_score``, ``max_id`` (higher is better for MOS predictors), and
    :meth:`write_stats` writes them plus every utterance's score.

    Example:
        >>> import torch
        >>> stats = MOSStats(model="distillmos")
        >>> wavs = torch.randn(2, 16000) * 0.1
        >>> stats.append(["a", "b"], wavs, lens=torch.tensor([1.0, 0.5]))
        >>> sorted(stats.summarize())
        ['average', 'max_id', 'max_score', 'min_id', 'min_score']
    """

    def __init__(self, model: str = "distillmos", sample_rate: int = 16000,
                 checkpoint: str | os.PathLike | None = None, device: Any = None, **options: Any) -> None:
        self.scorer = Scorer(model, checkpoint=checkpoint, device=device, **options)
        self.sample_rate = int(sample_rate)
        super().__init__(metric=self._unused, n_jobs=1, batch_eval=True)

    @staticmethod
    def _unused(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("MOSStats scores in append(); its metric function is not used.")

    @property
    def model(self) -> str:
        return self.scorer.name

    @property
    def higher_is_better(self) -> bool:
        return self.scorer.card.higher_is_better

    def append(self, ids: Sequence[str], wavs: torch.Tensor | Sequence[torch.Tensor], lens: Any = None,
               sample_rate: int | None = None, refs: Any = None, ref_lens: Any = None) -> None:
        """Score a batch and store one score per id.

        Args:
            ids: utterance ids, one per row.
            wavs: ``(B, T)`` padded waveforms (``(B, T, C)`` is mixed down to mono), or a
                list of 1-D clips.
            lens: SpeechBrain relative lengths ``(B,)`` in (0, 1]; ``None`` = no padding.
            sample_rate: their rate (default: the one given at construction).
            refs, ref_lens: reference waveforms (and relative lengths) for reference models.
        """
        ids = list(ids)
        fs = int(sample_rate or self.sample_rate)
        clips, lengths = self._unpad(wavs, lens)
        ref_clips, ref_lengths = (None, None) if refs is None else self._unpad(refs, ref_lens)
        scores = self.scorer(clips, fs, lengths, names=ids, refs=ref_clips, ref_lengths=ref_lengths)
        if len(ids) != scores.numel():
            raise ValueError(f"{len(ids)} ids for a batch of {scores.numel()} waveforms.")
        self.ids.extend(ids)
        self.scores.extend(float(s) for s in scores.detach().cpu().reshape(-1))

    @staticmethod
    def _unpad(wavs: Any, lens: Any) -> tuple[Any, Any]:
        if isinstance(wavs, torch.Tensor):
            wavs = wavs.detach()
            if wavs.dim() == 3:  # SpeechBrain's multichannel layout (B, T, C)
                wavs = wavs.mean(dim=-1)
            if lens is not None and wavs.dim() == 2:
                return wavs, absolute_lengths(lens, wavs.shape[1])
            return wavs, None
        if lens is not None:
            raise ValueError("lens= goes with a padded (B, T) tensor; a list of clips has its own lengths.")
        return [w.detach() if isinstance(w, torch.Tensor) else w for w in wavs], None

    def summarize(self, field: str | None = None) -> Any:
        """``average``, ``min_score``/``min_id``, ``max_score``/``max_id`` (or one of them)."""
        if not self.scores:
            raise ValueError("MOSStats.summarize(): no scores yet; call append() first.")
        return super().summarize(field)

    def write_stats(self, filestream: Any, verbose: bool = False) -> None:
        """Write the summary (as SpeechBrain's stats do) and every utterance's score."""
        if not self.summary:
            self.summarize()
        s = self.summary
        lines = [
            f"MOS predictor: {self.model} ({'higher' if self.higher_is_better else 'lower'} is better), "
            f"{len(self.scores)} utterances",
            f"Average score: {s['average']}",
            f"Min score: {s['min_score']} id: {s['min_id']}",
            f"Max score: {s['max_score']} id: {s['max_id']}",
        ]
        lines += [f"{i} {v:.6f}" for i, v in zip(self.ids, self.scores)]
        message = "\n".join(lines) + "\n"
        filestream.write(message)
        if verbose:
            print(message)
