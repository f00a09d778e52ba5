"""Hugging Face datasets adapter: :func:`add_mos` adds a MOS column with ``Dataset.map``.

::

    from datasets import load_dataset
    from torchmos.adapters.datasets import add_mos

    ds = load_dataset("audiofolder", data_dir="wavs", split="train")
    ds = add_mos(ds, model="distillmos", batch_size=16)          # adds "distillmos" and "error"
    ds = ds.filter(lambda row: row["distillmos"] is not None and row["distillmos"] >= 3.5)

The audio column may be an ``Audio`` feature (decoded at any rate: the ``AudioDecoder``
objects of datasets 4+, which decodes with torchcodec, or the ``{"array", "sampling_rate"}``
dicts of earlier releases), or file paths (read by torchmos, no torchcodec needed).
A row that cannot be scored gets ``None`` and a message naming it in the error column;
the map never stops on a bad row. Scores equal :mod:`torchmos.functional`.

With ``num_proc`` > 1 every process builds its own model (the mapped function carries
only the model's name and options) and, when CUDA is available, runs on
``cuda:(rank % device_count)``.
"""

from __future__ import annotations

import os
from typing import Any

from ._engines import (
    Clip,
    EngineScorer,
    check_model,
    clip_from_array,
    clip_from_path,
    default_device,
)
from ._scoring import missing_extra

try:
    import datasets as _hf_datasets
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("datasets", "datasets", _e) from _e

__all__ = ["add_mos"]

_SCORERS: dict[Any, EngineScorer] = {}  # this process's scorers (one network each, cached)
_THREADS_SET: set[int] = set()  # worker processes whose torch threads are set


def _worker_threads(num_proc: int | None) -> int | None:
    """Torch threads for each of ``num_proc`` worker processes: their share of the cores,
    or 1 in forked workers: a child forked from a parent that has run torch's thread pool
    hangs in its first parallel operation (GNU OpenMP is not fork-safe), unless it runs
    on one thread."""
    if not num_proc or num_proc < 2:
        return None
    import multiprocess

    if multiprocess.get_start_method(allow_none=True) in (None, "fork"):
        return 1
    return max(1, (os.cpu_count() or 1) // num_proc)


def _engine(model: str, device: Any, checkpoint: Any, sha256: Any, options: dict[str, Any]) -> EngineScorer:
    key = (os.getpid(), model, str(device), checkpoint, sha256, repr(sorted(options.items())))
    engine = _SCORERS.get(key)
    if engine is None:
        engine = _SCORERS[key] = EngineScorer(model, device, checkpoint, sha256, **options)
    return engine


def _in_worker() -> bool:
    import multiprocess

    return multiprocess.parent_process() is not None


def _label(value: Any, i: int, audio_column: str) -> str:
    """How errors name a row: its index, and its file when the cell names one."""
    path = value if isinstance(value, (str, os.PathLike)) else (value.get("path") if isinstance(value, dict) else None)
    return f"row {i} ({os.fspath(path) if path else audio_column})"


def _clip(value: Any, engine: EngineScorer, where: str) -> Clip:
    """One cell of the audio column as a clip (see the module's docstring)."""
    if value is None:
        raise ValueError(f"{where}: no audio (the cell is empty).")
    if isinstance(value, (str, os.PathLike)):
        return clip_from_path(value, engine.scorer, where)
    if hasattr(value, "get_all_samples"):  # a torchcodec AudioDecoder (datasets 4+)
        samples = value.get_all_samples()
        return clip_from_array(samples.data, samples.sample_rate, where)
    if isinstance(value, dict):
        if value.get("array") is not None:
            return clip_from_array(value["array"], value.get("sampling_rate"), where)
        if value.get("bytes") is None and value.get("path"):  # Audio(decode=False) of a local file
            return clip_from_path(value["path"], engine.scorer, where)
        if value.get("bytes") is not None:
            raise ValueError(f"{where}: the audio is undecoded bytes (Audio(decode=False)); cast the column "
                             "to a decoded Audio feature first: ds.cast_column(col, datasets.Audio()).")
    raise ValueError(f"{where}: expected an Audio feature, a decoded {{'array', 'sampling_rate'}} dict or a "
                     f"file path, got {type(value).__name__}.")


def _score_batch(values: list[Any], *rest: Any, model: str, device: Any, checkpoint: Any, sha256: Any,
                 options: dict[str, Any], column: str, error_column: str, merge: bool, ranked: bool,
                 threads: int | None, audio_column: str) -> dict[str, list[Any]]:
    """The mapped function: one batch of the audio column (and the earlier errors, with
    ``merge``), its row indices and the process's rank (with ``ranked``) -> the new columns."""
    rank = rest[-1] if ranked else None
    indices = rest[-2] if ranked else rest[-1]
    old_errors = rest[0] if merge else [None] * len(values)
    pid = os.getpid()
    if threads and pid not in _THREADS_SET and _in_worker():  # a worker process, first batch
        import torch

        torch.set_num_threads(threads)
        _THREADS_SET.add(pid)
    dev = device if device is not None else default_device(rank)
    engine = _engine(model, dev, checkpoint, sha256, options)
    labels = [_label(v, i, audio_column) for v, i in zip(values, indices)]
    clips: list[Clip | BaseException] = []
    for v, where in zip(values, labels):
        try:
            clips.append(_clip(v, engine, where))
        except Exception as e:  # reported in the error column
            clips.append(e)
    scores, errors = engine.score(clips, labels)
    joined = [f"{o}; {n}" if o and n else (o or n) for o, n in zip(old_errors, errors)]
    return {column: scores, error_column: joined}


def add_mos(ds: Any, model: str = "distillmos", audio_column: str = "audio", batch_size: int = 16,
            num_proc: int | None = None, column: str | None = None, *, error_column: str = "error",
            device: Any = None, checkpoint: Any = None, sha256: str | None = None,
            map_kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
    """``ds`` with a MOS column (named after the model, or ``column``) and an error column.

    Args:
        ds: a ``datasets.Dataset``, ``DatasetDict`` (each split) or ``IterableDataset``
            (mapped lazily, in one process).
        model: a no-reference card name (``torchmos.hub.list_cards()``).
        audio_column: an ``Audio`` feature, ``{"array", "sampling_rate"}`` dicts, or file paths.
        batch_size: rows per batch (``Dataset.map(batched=True)``).
        num_proc: processes (``Dataset.map(num_proc=)``); each loads the model once and
            with CUDA takes ``cuda:(rank % device_count)``. Each runs torch on one thread
            when forked (the default start method on Linux), else on ``cpu_count // num_proc``.
        column: the score column's name (default: the model's name).
        error_column: ``None`` for scored rows, else a message naming the row; an existing
            column of that name (from an earlier model) is kept, with new errors appended.
        device: run every process there instead (e.g. ``"cpu"``).
        checkpoint, sha256, **options: as for :class:`torchmos.adapters.Scorer`.
        map_kwargs: more arguments for ``map`` (``desc=``, ``load_from_cache_file=``, ...).

    Failed rows get ``None`` as their score.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if isinstance(ds, _hf_datasets.DatasetDict):
        return _hf_datasets.DatasetDict({
            split: add_mos(part, model, audio_column, batch_size, num_proc, column, error_column=error_column,
                           device=device, checkpoint=checkpoint, sha256=sha256, map_kwargs=map_kwargs, **options)
            for split, part in ds.items()})
    name = column or check_model(model).name  # a bad model name fails here, in this process
    columns = list(ds.column_names) if ds.column_names is not None else None
    if columns is not None and audio_column not in columns:
        raise KeyError(f"add_mos: the dataset has no column {audio_column!r} (columns: {columns}); "
                       "pass audio_column=.")
    merge = columns is not None and error_column in columns
    iterable = isinstance(ds, _hf_datasets.IterableDataset)
    if iterable and num_proc not in (None, 1):
        raise ValueError("add_mos: an IterableDataset is mapped lazily, in one process; num_proc does not apply.")
    kwargs: dict[str, Any] = dict(
        function=_score_batch, batched=True, batch_size=batch_size, with_indices=True,
        input_columns=[audio_column, error_column] if merge else [audio_column],
        fn_kwargs=dict(model=model, device=device, checkpoint=checkpoint, sha256=sha256, options=options,
                       column=name, error_column=error_column, merge=merge, ranked=not iterable,
                       threads=_worker_threads(num_proc), audio_column=audio_column),
    )
    if not iterable:
        kwargs.update(with_rank=True, num_proc=num_proc)
    if ds.features is not None:  # float64 scores and string errors, even in a batch where every row failed
        features = ds.features.copy()
        features[name] = _hf_datasets.Value("float64")
        features[error_column] = _hf_datasets.Value("string")
        kwargs["features"] = features
    kwargs.update(map_kwargs or {})
    return ds.map(**kwargs)
