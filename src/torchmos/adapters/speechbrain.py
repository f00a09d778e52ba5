"""SpeechBrain adapter: :class:`MOSStats`, a ``MetricStats`` for any torchmos predictor.

Use it where a recipe uses PESQ or STOI stats, with the same call::

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
            self.mos_metric.append(batch.id, predict=predict_wav, lengths=lens)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss, "mos": self.mos_metric.summarize("average")}

``lengths`` are SpeechBrain's relative lengths; the padding beyond each clip's length is
never scored, so a clip's MOS does not depend on its batch. The scores equal
:mod:`torchmos.functional` on the unpadded clips.

For inference outside a recipe, :class:`MOSEstimator` (in
:mod:`torchmos.adapters.speechbrain_inference`, also importable from here) follows
``speechbrain.inference``: ``MOSEstimator.from_hparams(source=...)`` then
``estimate_batch(wavs, wav_lens)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._scoring import Scorer, missing_extra
from .speechbrain_lengths import _padded_length as _padded_length
from .speechbrain_lengths import absolute_lengths, unpad, unpad_reference

try:
    from speechbrain.utils.metric_stats import MetricStats
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("speechbrain", "speechbrain", _e) from _e

if TYPE_CHECKING:  # at run time they come from __getattr__, below
    from .speechbrain_inference import MOSEstimator, MOSModel

__all__ = ["MOSEstimator", "MOSModel", "MOSStats", "absolute_lengths", "unpad", "unpad_reference"]

_APPEND_KEYWORDS = ("predict", "lengths", "target", "target_lengths", "sample_rate",
                    "wavs", "lens", "refs", "ref_lens")


def __getattr__(name: str) -> Any:
    # the inference interface imports speechbrain.inference: only when asked for
    if name in ("MOSEstimator", "MOSModel"):
        from . import speechbrain_inference

        return getattr(speechbrain_inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _one_of(name: str, value: Any, alias: str, alias_value: Any) -> Any:
    if value is not None and alias_value is not None:
        raise TypeError(f"MOSStats.append(): {name}= and {alias}= are the same argument; pass one of them.")
    return value if value is not None else alias_value


class MOSStats(MetricStats):
    """Predicted MOS of every utterance, summarized like SpeechBrain's PESQ/STOI stats.

    Args:
        model: a torchmos card name (``"distillmos"``, ``"scoreq-nr-natural"``, ...).
        sample_rate: default sample rate of the waveforms given to :meth:`append`.
        checkpoint: a local weight file instead of the official one.
        device: where the predictor runs (default: the device of the waveforms).
        ignore_target: let a no-reference model ignore ``target=`` (by default it refuses
            it), so one ``append`` call serves reference and no-reference models alike.
        options: predictor options, e.g. ``precision="bf16"``.

    After :meth:`append` calls, :meth:`summarize` gives ``average``, ``min_score``,
    ``min_id``, ``max_score``, ``max_id`` (for MOS higher is better; see
    :attr:`higher_is_better`), and :meth:`write_stats` writes them plus every utterance's score.

    Example:
        >>> import torch
        >>> stats = MOSStats(model="distillmos")
        >>> wavs = torch.randn(2, 16000) * 0.1
        >>> stats.append(["a", "b"], predict=wavs, lengths=torch.tensor([1.0, 0.5]))
        >>> stats.append(["c"], wavs[:1], torch.tensor([0.75]))  # the positional form
        >>> stats.ids, sorted(stats.summarize())
        (['a', 'b', 'c'], ['average', 'max_id', 'max_score', 'min_id', 'min_score'])
    """

    def __init__(self, model: str = "distillmos", sample_rate: int = 16000,
                 checkpoint: str | os.PathLike | None = None, device: Any = None, *,
                 ignore_target: bool = False, **options: Any) -> None:
        self.scorer = Scorer(model, checkpoint=checkpoint, device=device, **options)
        self.sample_rate = int(sample_rate)
        self.ignore_target = bool(ignore_target)
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

    @property
    def needs_target(self) -> bool:
        """Whether the model compares each clip with a reference (``target=``)."""
        return self.scorer.card.mode == "ref"

    def append(self, ids: Sequence[str], predict: Any = None, lengths: Any = None, *extra: Any,
               target: Any = None, target_lengths: Any = None, sample_rate: int | None = None,
               wavs: Any = None, lens: Any = None, refs: Any = None, ref_lens: Any = None,
               **unknown: Any) -> None:
        """Score a batch and store one score per id.

        Both SpeechBrain call forms work: ``append(ids, predict=wavs, lengths=lens)`` (as the
        Voicebank recipes call their PESQ stats) and ``append(ids, wavs, lens)``. A call that
        raises stores nothing.

        Args:
            ids: utterance ids, one per clip.
            predict: ``(B, T)`` padded waveforms (``(B, T, C)`` is mixed down to mono), or a
                list of 1-D clips.
            lengths: SpeechBrain relative lengths ``(B,)`` in (0, 1]; ``None`` = no padding.
            target: the reference clips, for a reference model (``scoreq-ref-*``): one per
                clip, laid out like ``predict``. A no-reference model refuses it, unless
                built with ``ignore_target=True``.
            target_lengths: relative lengths of ``target``; by default ``lengths`` (as in
                SpeechBrain's PESQ/STOI stats), which needs ``target`` padded like ``predict``.
            sample_rate: the rate of ``predict`` and ``target`` (default: the one given at
                construction); resampled to the model's rate as torchmos.functional does.
            wavs, lens, refs, ref_lens: other names of ``predict``, ``lengths``, ``target``,
                ``target_lengths``.
        """
        if extra:
            raise TypeError(
                f"MOSStats.append() takes (ids, predict, lengths) positionally; got {len(extra)} more "
                "positional argument(s). Pass a reference as target= (and its lengths as target_lengths=)."
            )
        if unknown:
            raise TypeError(f"MOSStats.append() got unexpected keyword argument(s) {', '.join(sorted(unknown))}; "
                            f"it takes {', '.join(_APPEND_KEYWORDS)}.")
        predict = _one_of("predict", predict, "wavs", wavs)
        lengths = _one_of("lengths", lengths, "lens", lens)
        target = _one_of("target", target, "refs", refs)
        target_lengths = _one_of("target_lengths", target_lengths, "ref_lens", ref_lens)
        if predict is None:
            raise TypeError("MOSStats.append() needs the waveforms: append(ids, predict=wavs, lengths=lens) "
                            "or append(ids, wavs, lens).")
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise TypeError(f"MOSStats.append(): ids must be a list of utterance ids (batch.id), "
                            f"got {type(ids).__name__}.")
        ids = list(ids)
        fs = int(sample_rate or self.sample_rate)

        clips, n = unpad(predict, lengths)
        if len(ids) != len(clips):
            raise ValueError(f"MOSStats.append(): {len(ids)} ids for a batch of {len(clips)} waveforms.")
        ref_clips, ref_n = self._target(target, target_lengths, predict, lengths)
        if ref_clips is not None and len(ref_clips) != len(clips):
            raise ValueError(f"MOSStats.append(): target holds {len(ref_clips)} references for "
                             f"{len(clips)} clips; pass one per clip.")

        scores = self.scorer(clips, fs, n, names=ids, refs=ref_clips, ref_lengths=ref_n)
        values = [float(s) for s in scores.detach().cpu().reshape(-1)]
        if len(values) != len(ids):
            raise ValueError(f"MOSStats.append(): {len(ids)} ids but {len(values)} scores.")
        # only now, when nothing can fail any more, is the state changed
        self.ids.extend(ids)
        self.scores.extend(values)
        self.summary = {}

    def _target(self, target: Any, target_lengths: Any, predict: Any, lengths: Any) -> tuple[Any, Any]:
        """The reference clips and sample counts, or ``(None, None)``; checks the model's mode."""
        name = self.model
        if not self.needs_target:
            if target is None and target_lengths is not None:
                raise ValueError("MOSStats.append(): target_lengths= given without target=.")
            if target is not None and not self.ignore_target:
                raise ValueError(
                    f"MOSStats.append(): model {name!r} is a no-reference predictor: it scores predict "
                    "alone and takes no target=. Drop target=, or build MOSStats(..., ignore_target=True) "
                    "to keep one append() call for reference and no-reference models."
                )
            return None, None
        if target is None:
            raise ValueError(
                f"MOSStats.append(): model {name!r} compares each clip with a reference; pass target= "
                "(one clean reference per clip), as for SpeechBrain's PESQ stats."
            )
        return unpad_reference(target, target_lengths, predict, lengths)

    def summarize(self, field: str | None = None) -> Any:
        """``average``, ``min_score``/``min_id``, ``max_score``/``max_id`` (or one of them)."""
        if not self.scores:
            raise ValueError("MOSStats.summarize(): no scores yet; call append() first.")
        return super().summarize(field)

    def write_stats(self, filestream: Any, verbose: bool = False) -> None:
        """Write the summary (as SpeechBrain's stats do) and every utterance's score."""
        s = self.summarize()
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
