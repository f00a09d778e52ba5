"""The rows of ``torchmos score``: writing them, reading an earlier run's, summing them up.

:class:`Writer` writes CSV or JSON Lines (by extension), a row at a time, flushed;
:func:`previous_rows` reads (and repairs) an earlier run's output for ``--resume``;
:class:`Stats` keeps the summary's figures in constant memory, however many rows pass.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO, TextIO

__all__ = ["FIELDS", "USAGE", "Stats", "UsageError", "Writer", "is_jsonl", "previous_rows", "summary"]

# The exit status of a usage error (argparse's own convention).
USAGE = 2

FIELDS = ["id", "path", "model", "score", "duration_s", "sample_rate"]


class UsageError(Exception):
    """A wrong command line: one line on stderr and exit status 2."""


def say(text: str) -> None:
    """One line to stderr in a single write: the ranks of a torchrun job share one stderr,
    and ``print`` writes the text and its newline apart, so under ``PYTHONUNBUFFERED`` (as CI
    and many clusters set it) two ranks' lines could run into one."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def is_jsonl(path: str | None) -> bool:
    return bool(path) and str(path).endswith((".jsonl", ".json"))


class Writer:
    """Rows to CSV or JSON Lines (by the extension of ``path``, or of ``like``), flushed
    as they come, appendable (``resume``: no second CSV header)."""

    def __init__(self, path: str | None, resume: bool, like: str | None = None) -> None:
        self.path = path
        self.jsonl = is_jsonl(like or path)
        exists = bool(path) and os.path.exists(path) and os.path.getsize(path) > 0
        self.fh: TextIO = open(path, "a" if resume else "w", newline="") if path else sys.stdout
        self.csv = None
        if not self.jsonl:
            self.csv = csv.DictWriter(self.fh, fieldnames=FIELDS, extrasaction="ignore")
            if not (resume and exists):
                self.csv.writeheader()

    def write(self, row: dict[str, Any], flush: bool = True) -> None:
        if self.jsonl:
            self.fh.write(json.dumps({k: row[k] for k in FIELDS if k in row}) + "\n")
        else:
            assert self.csv is not None
            self.csv.writerow(row)
        if flush:
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not sys.stdout:
            self.fh.close()


def previous_rows(path: str | None, repair: bool = True) -> list[dict[str, Any]]:
    """The rows of an earlier run's output (CSV or JSON Lines), for ``--resume``.

    A run killed mid-write can leave its last row cut off: that row is dropped, the file
    is truncated back to its last complete row (so the next row cannot glue onto it;
    ``repair=False`` leaves the file alone), and its file is scored again. A damaged row
    anywhere else is an error naming the line.
    """
    return list(iter_rows(path, repair))


def iter_rows(path: str | None, repair: bool = True) -> Iterator[dict[str, Any]]:
    """:func:`previous_rows`, a row at a time (the file is read line by line)."""
    if not path or not os.path.exists(path):
        return
    end = complete_length(path)
    jsonl = is_jsonl(path)
    with open(path, "rb") as f:
        lines = _lines_upto(f, end)
        if jsonl:
            for lineno, line in enumerate(lines, 1):
                if line.strip():
                    yield _checked_row(_json_row(line), path, lineno)
        else:
            for lineno, row in enumerate(csv.DictReader(lines), 2):
                yield _checked_row(row, path, lineno)
    if repair and end < os.path.getsize(path):  # a cut-off last row: repair the file
        say(f"torchmos: {path}: the last row was cut off (an interrupted run); it is removed and "
            "its file scored again.")
        with open(path, "r+b") as f:
            f.truncate(end)


def complete_length(path: str) -> int:
    """The length in bytes of ``path`` up to the end of its last complete line."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                return pos - step + nl + 1
            pos -= step
    return 0


def _lines_upto(f: BinaryIO, end: int) -> Iterator[str]:
    """The lines of ``f`` (bytes, decoded) that end at or before ``end`` (a line boundary)."""
    done = 0
    for raw in f:
        done += len(raw)
        if done > end:
            return
        yield raw.decode("utf-8", errors="replace")


def _json_row(line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return row if isinstance(row, dict) else {}


def _checked_row(row: dict[str, Any], path: str, lineno: int) -> dict[str, Any]:
    try:
        ok = bool(row.get("id")) and math.isfinite(float(row.get("score")))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UsageError(f"{path}:{lineno}: a damaged row ({row!r}); fix or delete that line, "
                         "then rerun with --resume.")
    return row


class Stats:
    """Count, mean, std, min and max of the scores seen (Welford), in constant memory."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.lo: tuple[float, str] | None = None
        self.hi: tuple[float, str] | None = None

    def add(self, score: float, uid: str) -> None:
        self.n += 1
        d = score - self.mean
        self.mean += d / self.n
        self.m2 += d * (score - self.mean)
        if self.lo is None or (score, uid) < self.lo:
            self.lo = (score, uid)
        if self.hi is None or (score, uid) > self.hi:
            self.hi = (score, uid)


def summary(stats: Stats, failures: list[tuple[str, str]], name: str, higher: bool,
            resumed: int | None = None, output: str | None = None) -> None:
    """The summary on stderr: counts, mean, std, min and max with their ids, every failure."""
    out = sys.stderr
    print(f"\n{name}: {stats.n} scored, {len(failures)} failed", file=out)
    if resumed is not None:
        print(f"  resumed: {resumed} already in {output}, {stats.n - resumed} new", file=out)
    if stats.n and stats.lo is not None and stats.hi is not None:
        std = math.sqrt(max(stats.m2, 0.0) / stats.n)
        print(f"  mean {stats.mean:.4f}  std {std:.4f}  ({'higher' if higher else 'lower'} is better)", file=out)
        print(f"  min  {stats.lo[0]:.4f}  {stats.lo[1]}", file=out)
        print(f"  max  {stats.hi[0]:.4f}  {stats.hi[1]}", file=out)
    for _src, err in failures:
        print(f"  FAILED {err}", file=out)
