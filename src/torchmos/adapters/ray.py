"""Ray Data adapter: :class:`MOSPredictor`, a callable class for ``Dataset.map_batches``.

Ray Data's batch-inference pattern: a class whose constructor loads the model once per
actor and whose ``__call__`` scores one batch::

    import ray
    from torchmos.adapters.ray import MOSPredictor

    ds = ray.data.from_items([{"path": p} for p in paths])
    scored = ds.map_batches(MOSPredictor, fn_constructor_kwargs={"model": "distillmos"},
                            concurrency=4, batch_size=32, num_gpus=1)
    scored.write_parquet("scores/")

Each output batch is the input batch plus a score column named after the model
(``distillmos``, ``scoreq-nr-natural``, ...; ``column=`` renames it) and an ``error``
column: ``None`` for a scored row, else a message naming the file or row (its score is
NaN). A bad row never fails the job. Scores equal :mod:`torchmos.functional`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._engines import Clip, EngineScorer, clip_from_array, clip_from_path
from ._scoring import missing_extra

try:
    import ray
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("ray", "ray[data]", _e) from _e

__all__ = ["MOSPredictor"]


def _actor_device() -> str:
    """The GPU Ray gave this actor (``num_gpus=``), else the CPU."""
    try:
        gpus = ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:  # outside a worker: no assignment to read
        gpus = []
    import torch

    return "cuda" if gpus and torch.cuda.is_available() else "cpu"


class MOSPredictor:
    """Score a Ray Data batch with a torchmos predictor (``ds.map_batches(MOSPredictor, ...)``).

    Args:
        model: a no-reference card name (``torchmos.hub.list_cards()``).
        path_column: the column of file paths (anything ``soundfile`` reads, or a Kaldi
            pipe entry); read at the model's rate in blocks.
        audio_column: score decoded arrays from this column instead (1-D, or
            ``(channels, samples)``, averaged; e.g. ``"amplitude"`` from
            ``ray.data.read_audio``), at the rate in ``sample_rate_column`` or ``sample_rate``.
        sample_rate_column: the column of sample rates for ``audio_column``.
        sample_rate: one rate for every row of ``audio_column`` (instead of a column).
        column: the score column's name (default: the model's name).
        error_column: the error column's name. An existing error column (from an earlier
            ``MOSPredictor``) is kept, and this model's errors are appended to it.
        id_column: a column that names rows in error messages (default: the path, or the
            row's position in its batch).
        device: where the model runs (default: the GPU Ray assigned with ``num_gpus``, else CPU).
        checkpoint, sha256, **options: as for :class:`torchmos.adapters.Scorer`.

    Batches may be numpy (``dict`` of arrays, Ray's default) or pandas; the output has the
    input's format.
    """

    def __init__(self, model: str = "distillmos", *, path_column: str = "path", audio_column: str | None = None,
                 sample_rate_column: str = "sample_rate", sample_rate: int | None = None,
                 column: str | None = None, error_column: str = "error", id_column: str | None = None,
                 device: Any = None, checkpoint: Any = None, sha256: str | None = None, **options: Any) -> None:
        self.engine = EngineScorer(model, device if device is not None else _actor_device(), checkpoint,
                                   sha256, **options)
        self.path_column = path_column
        self.audio_column = audio_column
        self.sample_rate_column = sample_rate_column
        self.sample_rate = sample_rate
        self.column = column or self.engine.name
        self.error_column = error_column
        self.id_column = id_column

    def __repr__(self) -> str:
        return f"MOSPredictor(model={self.engine.name!r}, device={str(self.engine.device)!r})"

    def __call__(self, batch: Any) -> Any:
        pandas = hasattr(batch, "columns") and hasattr(batch, "iloc")
        if not pandas and not isinstance(batch, dict):
            raise TypeError(f"MOSPredictor takes numpy or pandas batches, got {type(batch).__name__}; "
                            "pass batch_format='numpy' or 'pandas' to map_batches.")
        columns = list(batch.columns) if pandas else list(batch)
        n = len(batch) if pandas else (len(next(iter(batch.values()))) if batch else 0)
        need = self.audio_column or self.path_column
        if need not in columns:
            hint = ("; for arrays (e.g. ray.data.read_audio's 'amplitude') pass audio_column="
                    if self.audio_column is None else "")
            raise KeyError(f"MOSPredictor: the batch has no column {need!r} (columns: {columns}){hint}")
        if self.audio_column and self.sample_rate is None and self.sample_rate_column not in columns:
            raise KeyError(f"MOSPredictor: the batch has no column {self.sample_rate_column!r} for the rates of "
                           f"{self.audio_column!r}; pass sample_rate=<Hz> or sample_rate_column=.")

        def col(name: str) -> list[Any]:
            return list(batch[name])

        labels = self._labels(col, columns, n)
        clips: list[Clip | BaseException] = []
        if self.audio_column:
            rates = [self.sample_rate] * n if self.sample_rate is not None else col(self.sample_rate_column)
            for x, fs, where in zip(col(self.audio_column), rates, labels):
                clips.append(_try(clip_from_array, x, fs, where))
        else:
            for p, where in zip(col(self.path_column), labels):
                clips.append(_try(clip_from_path, _scalar(p), self.engine.scorer, where))
        scores, errors = self.engine.score(clips, labels)
        values = np.array([math.nan if s is None else s for s in scores], dtype=np.float64)
        if self.error_column in columns:  # keep the errors of an earlier model
            errors = [_join(old, new) for old, new in zip(col(self.error_column), errors)]
        errs = np.array(errors, dtype=object)
        if pandas:
            import pandas as pd

            out = batch.copy()
            out[self.column] = values
            # object dtype: pandas 3 would infer its "str" dtype, whose NaN for a missing value
            # some Ray releases pass on as a float instead of a null
            out[self.error_column] = pd.Series(errs, index=out.index, dtype=object)
            return out
        out = dict(batch)
        out[self.column] = values
        out[self.error_column] = errs
        return out

    def _labels(self, col: Any, columns: list[str], n: int) -> list[str]:
        if self.id_column and self.id_column in columns:
            return [str(_scalar(v)) for v in col(self.id_column)]
        if not self.audio_column:
            return [str(_scalar(p)) for p in col(self.path_column)]
        if self.path_column in columns:
            return [str(_scalar(p)) for p in col(self.path_column)]
        return [f"row {i} of the batch" for i in range(n)]


def _scalar(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _try(fn: Any, *args: Any) -> Clip | BaseException:
    try:
        return fn(*args)
    except Exception as e:  # reported in the row's error column
        return e


def _join(old: Any, new: str | None) -> str | None:
    # an earlier error is a string; a column in which every row was scored comes back from
    # Arrow as nulls, which a numpy batch holds as NaN (float32)
    old = old if isinstance(old, str) and old else None
    if old and new:
        return f"{old}; {new}"
    return old or new
