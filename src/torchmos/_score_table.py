"""Read per-utterance score files: what ``torchmos score`` writes, and ESPnet's ``utt2pmos``.

* ``*.csv``: a header row with at least ``id`` and ``score``; ``torchmos score`` writes
  ``id, path, model, score, duration_s, sample_rate``. Optional columns: ``mos`` (a
  listening-test label, empty where there is none) and any grouping column (``condition``).
* ``*.jsonl`` / ``*.json``: one JSON object per line with the same keys.
* anything else: ``utt score`` lines (ESPnet's ``utt2pmos``, Kaldi style).

A row whose score is empty, ``null`` or not finite is an utterance the scorer could not
score: it is kept aside as *unscored* (and reported), never silently dropped. A score that
is not a number, an id given twice, a missing column: errors that name the file and line.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ScoreFile", "read_scores"]


@dataclass
class ScoreFile:
    """One system's per-utterance scores, as read from one file (or given in Python)."""

    name: str
    ids: list[str]
    scores: np.ndarray
    file: str | None = None
    model: str | None = None
    paths: list[str] | None = None  # the audio file of each utterance (torchmos' ``path`` column)
    mos: np.ndarray | None = None  # labels, nan where an utterance has none
    groups: list[str] | None = None  # the value of the grouping column (``by``)
    unscored: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(self.ids) != self.scores.size:
            raise ValueError(f"{self.name}: {len(self.ids)} ids for {self.scores.size} scores.")

    @classmethod
    def from_mapping(cls, name: str, scores: Any) -> ScoreFile:
        """A system given as ``{id: score}``."""
        ids = [str(i) for i in scores]
        values = []
        for i, v in zip(ids, scores.values()):
            try:
                values.append(float(v))
            except (TypeError, ValueError):
                raise ValueError(f"{name}: the score of {i!r} is not a number ({v!r}).") from None
        unscored = [i for i, v in zip(ids, values) if not math.isfinite(v)]
        keep = [k for k, v in enumerate(values) if math.isfinite(v)]
        return cls(name, [ids[k] for k in keep], np.array([values[k] for k in keep]), unscored=unscored)


def _number(value: Any, where: str, what: str) -> float:
    """A cell as a float: nan when empty, ``null`` or not finite; an error when not a number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    if isinstance(value, bool):
        raise ValueError(f"{where}: {what} {value!r} is not a number.")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} {value!r} is not a number.") from None
    return x if math.isfinite(x) else math.nan


def _rows(path: Path) -> tuple[list[str], Any]:
    """(the columns, an iterator of (line number, row dict)) of a CSV, JSONL or ``utt score`` file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        fh = path.open(newline="", encoding="utf-8-sig")  # -sig: a BOM (Excel) is not part of "id"
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])

        def csv_rows() -> Any:
            with fh:
                for row in reader:
                    yield reader.line_num, row

        return columns, csv_rows()
    if suffix in (".jsonl", ".json"):
        def json_rows() -> Any:
            with path.open(encoding="utf-8-sig") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: not a JSON object ({e.msg}).") from None
                    if not isinstance(row, dict):
                        raise ValueError(f"{path}:{lineno}: not a JSON object.")
                    yield lineno, row

        return [], json_rows()

    def utt_rows() -> Any:
        with path.open(encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise ValueError(f"{path}:{lineno}: expected 'utt score' (or a .csv / .jsonl file), "
                                     f"got {line.strip()!r}.")
                yield lineno, {"id": parts[0], "score": parts[1]}

    return ["id", "score"], utt_rows()


def read_scores(file: str | os.PathLike, *, name: str | None = None, by: str | None = None,
                model: str | None = None) -> ScoreFile:
    """Read one system's scores (see the module's docstring for the formats).

    ``by`` names a grouping column that every row must have; ``model`` drops the rows of
    other models (needed when a file holds several models' scores).
    """
    path = Path(file)
    if not path.is_file():
        raise ValueError(f"{path}: no such score file.")
    columns, rows = _rows(path)
    if columns and not {"id", "score"} <= set(columns):
        raise ValueError(f"{path}: needs the columns 'id' and 'score' (it has {', '.join(columns) or 'none'}).")
    if by and columns and by not in columns:
        raise ValueError(f"{path}: no column {by!r} to group by (it has {', '.join(columns)}).")
    ids: list[str] = []
    scores: list[float] = []
    paths: list[str] = []
    mos: list[float] = []
    groups: list[str] = []
    unscored: list[str] = []
    seen: dict[str, int] = {}
    models: set[str] = set()
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        uid = row.get("id")
        if uid is None or not str(uid).strip():
            raise ValueError(f"{where}: a row without an id.")
        uid = str(uid)
        row_model = str(row.get("model") or "")
        if model is not None and row_model and row_model != model:
            continue  # (a row that names no model, e.g. of an utt2pmos file, is kept)
        models.add(row_model)
        if uid in seen:
            raise ValueError(f"{where}: id {uid!r} is already on line {seen[uid]}; each utterance once, please.")
        seen[uid] = lineno
        if by and by not in row:
            raise ValueError(f"{where}: no {by!r} value to group by.")
        score = _number(row.get("score"), where, "score")
        if math.isnan(score):
            unscored.append(uid)
            continue
        ids.append(uid)
        scores.append(score)
        paths.append(str(row.get("path") or ""))
        mos.append(_number(row.get("mos"), where, "mos"))
        if by:
            groups.append(str(row.get(by) if row.get(by) is not None else ""))
    if model is not None and not seen:
        raise ValueError(f"{path}: no rows of model {model!r}.")
    named = sorted(m for m in models if m)
    if len(named) > 1:
        raise ValueError(f"{path} holds the scores of several models ({', '.join(named)}); "
                         "pick one (--model NAME / model=).")
    if not ids:
        raise ValueError(f"{path}: no scored utterances.")
    labels = np.array(mos)
    return ScoreFile(
        name=name or path.stem, ids=ids, scores=np.array(scores), file=str(path),
        model=named[0] if named else None,
        paths=paths if any(paths) else None,
        mos=labels if not np.isnan(labels).all() else None,
        groups=groups if by else None, unscored=unscored,
    )


def system_names(files: list[str | os.PathLike]) -> list[str]:
    """Readable, distinct names for score files: their stems, or where stems repeat, their
    paths relative to the files' common folder (without the suffix).

    >>> system_names(["runs/a/scores.csv", "runs/b/scores.csv", "base.csv"])
    ['runs/a/scores', 'runs/b/scores', 'base']
    """
    stems = [Path(f).stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    full = [Path(os.path.abspath(f)) for f in files]
    common = Path(os.path.commonpath([str(p.parent) for p in full]))
    names = []
    for f, stem in zip(full, stems):
        rel = f.with_suffix("").relative_to(common).as_posix() if stems.count(stem) > 1 else stem
        names.append(rel)
    if len(set(names)) != len(names):
        raise ValueError("two score files have the same name; give the systems names (--names).")
    return names
