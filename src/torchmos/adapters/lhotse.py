"""Lhotse adapter: :func:`score_cuts` puts a MOS into each cut's ``custom`` field.

::

    from lhotse import CutSet
    from torchmos.adapters.lhotse import score_cuts

    cuts = CutSet.from_file("cuts.jsonl.gz")
    scored = score_cuts(cuts, model="distillmos")             # cut.custom["distillmos"]
    good = scored.filter(lambda c: c.custom.get("distillmos", 0.0) >= 3.5)

Each cut's audio is what ``cut.load_audio()`` returns: only the cut's span of its
recording (offsets and durations into long recordings are honoured, as are the cut's own
transforms such as ``cut.resample(16000)``), at the cut's sampling rate, channels averaged.
Scores equal :mod:`torchmos.functional` on that audio.

A cut that cannot be scored (no recording, an unreadable file, a clip shorter than the
model's minimum) is kept, without a score, with the reason in
``custom["<column>_error"]``; :func:`score_cuts` warns once with how many failed. Nothing
is dropped. With ``output=`` the scored cuts are written one by one to a manifest
(bounded memory for any number of cuts, lazy input included) and can be resumed.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from ._engines import Clip, EngineScorer, clip_from_array
from ._scoring import missing_extra

try:
    from lhotse import CutSet
    from lhotse.utils import fastcopy
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("lhotse", "lhotse", _e) from _e

__all__ = ["score_cuts"]


def _clip(cut: Any) -> Clip:
    where = f"cut {cut.id!r}"
    if not getattr(cut, "has_recording", False):
        raise ValueError(f"{where}: has no recording to score (features-only or padding cut).")
    samples = cut.load_audio()
    if samples is None:
        raise ValueError(f"{where}: load_audio() returned no audio.")
    return clip_from_array(samples, cut.sampling_rate, where)


def _with_custom(cut: Any, values: dict[str, Any]) -> Any:
    """A copy of ``cut`` whose custom field holds ``values`` too (the input is left as it is)."""
    if "custom" in getattr(cut, "__dict__", {}):  # a cut with its own custom field (MonoCut, MultiCut)
        return fastcopy(cut, custom={**(cut.custom or {}), **values})
    new = copy.deepcopy(cut)  # a MixedCut keeps custom values on its first non-padding track
    for k, v in values.items():
        setattr(new, k, v)
    return new


def _batches(cuts: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for c in cuts:
        batch.append(c)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def score_cuts(cuts: Any, model: str = "distillmos", batch_size: int = 16, column: str | None = None, *,
               error_key: str | None = None, device: Any = None, output: str | os.PathLike | None = None,
               overwrite: bool = True, checkpoint: Any = None, sha256: str | None = None,
               **options: Any) -> Any:
    """Score every cut: a CutSet whose cuts carry ``custom[column]`` (default: the model's name).

    Args:
        cuts: a ``lhotse.CutSet`` (eager or lazy) or any iterable of cuts.
        model: a no-reference card name (``torchmos.hub.list_cards()``).
        batch_size: cuts scored together (grouped by sampling rate).
        column: the ``custom`` key of the score (default: the model's name, e.g. ``"distillmos"``).
        error_key: the ``custom`` key of a failed cut's reason (default ``"<column>_error"``).
        device: where the model runs (default: ``cuda:0`` when available, else CPU).
        output: write the scored cuts to this manifest (``.jsonl`` or ``.jsonl.gz``) as they
            are scored and return it opened lazily; memory stays bounded.
        overwrite: with ``output``, ``False`` resumes: cuts already in the file are skipped.
        checkpoint, sha256, **options: as for :class:`torchmos.adapters.Scorer`.

    Returns:
        A ``CutSet`` with every input cut, in order: in memory, or lazily from ``output``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    engine = EngineScorer(model, device, checkpoint, sha256, **options)
    key = column or engine.name
    err_key = error_key or f"{key}_error"
    failed: list[str] = []
    writer = CutSet.open_writer(output, overwrite=overwrite) if output is not None else None
    kept: list[Any] = []
    try:
        for batch in _batches(cuts, batch_size):
            if writer is not None and not overwrite:
                batch = [c for c in batch if c.id not in writer]
                if not batch:
                    continue
            clips: list[Clip | BaseException] = []
            for c in batch:
                try:
                    clips.append(_clip(c))
                except Exception as e:  # recorded on the cut
                    clips.append(e)
            scores, errors = engine.score(clips, [f"cut {c.id!r}" for c in batch])
            for c, s, e in zip(batch, scores, errors):
                if e is not None:
                    failed.append(e)
                new = _with_custom(c, {key: s} if e is None else {err_key: e})
                if writer is not None:
                    writer.write(new)
                else:
                    kept.append(new)
    finally:
        if writer is not None:
            writer.close()
    if failed:
        warnings.warn(f"torchmos: {len(failed)} cut(s) could not be scored by {engine.name}; each keeps the "
                      f"reason in custom[{err_key!r}] and has no score. First: {failed[0]}", RuntimeWarning,
                      stacklevel=2)
    if output is not None:
        return CutSet.from_jsonl_lazy(output)
    return CutSet.from_cuts(kept)
