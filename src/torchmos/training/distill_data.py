"""The data of ``torchmos train distill``: degraded variants of unlabelled clips, and the
on-disk cache of the teacher's scores.

Every training file has ``variants`` slots. Slot ``s`` of a file is one fixed degraded
version of it: a crop of at most ``crop_seconds`` (where in the file: drawn), and a
degradation of :data:`torchmos.synth.KINDS` (or none, with ``clean_fraction``) at a drawn
severity, all a pure function of (seed, the file's id, slot): a copy of the data in
another folder draws the same variants. The batches are
epochs of seeded permutations of the (file, slot) items, so the teacher scores each item
once: its score is kept in the cache, keyed by the teacher, the file (path, size, mtime)
and the variant, and found again in later epochs, resumed runs and other runs with the
same teacher and data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .. import audio, synth
from ..audio.entries import source_key
from .data import EpochPlan, crop, rank_part, seed_of

__all__ = ["RATE", "Item", "Items", "StepBatches", "TeacherCache", "file_key", "make_items"]

RATE = 16000


def file_key(entry: audio.AudioEntry) -> str:
    """What identifies a file's content for the cache: its real path, size and mtime (a
    pipe: its command)."""
    key = source_key(entry.source)
    try:
        st = os.stat(key)
    except OSError:
        return key
    return f"{key}|{st.st_size}|{st.st_mtime_ns}"


@dataclass(frozen=True)
class Item:
    """One degraded variant: ``file`` (index), ``start``/``seconds`` of the crop, the
    degradation ``kind`` ("clean" for none), its ``severity`` and noise ``seed``."""

    file: int
    start: float
    seconds: float
    kind: str
    severity: float
    seed: int

    def params(self) -> dict:
        d = asdict(self)
        del d["file"]
        return d


def make_items(names: Sequence[str], lengths: Sequence[float], variants: int, seed: int, crop_seconds: float,
               kinds: Sequence[str], clean_fraction: float, stream: str = "train") -> list[Item]:
    """``variants`` items per file (file-major), each a pure function of (seed, stream,
    the file's name, slot). ``names`` are the entries' ids (:attr:`Items.ids`: a path
    relative to its folder), not their locations: a copy of the data elsewhere, or
    rewritten with a new mtime, gets the same degradations."""
    for k in kinds:
        if k not in synth.KINDS:
            raise ValueError(f"unknown degradation {k!r}; known: {', '.join(synth.KINDS)}")
    out = []
    for f, (key, dur) in enumerate(zip(names, lengths)):
        for slot in range(variants):
            g = torch.Generator().manual_seed(seed_of(seed, stream, key, slot))
            u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
            seconds = min(crop_seconds, dur)
            start = round(u[0] * (dur - seconds), 4)
            if not kinds or u[1] < clean_fraction:
                kind, severity = "clean", 0.0
            else:
                kind = kinds[min(int(u[2] * len(kinds)), len(kinds) - 1)]
                lo, hi = synth.KINDS[kind]
                severity = round(lo + (hi - lo) * u[3], 4)
            out.append(Item(f, start, seconds, kind, severity, seed_of(seed, "noise", key, slot) % (1 << 31)))
    return out


class Items:
    """Reads and degrades items: ``load(i)`` is the 16 kHz degraded clip of ``items[i]``."""

    def __init__(self, entries: Sequence[audio.AudioEntry], items: Sequence[Item]) -> None:
        self.entries, self.items = list(entries), list(items)
        self.ids = [e.id for e in self.entries]  # what the draws of make_items are seeded by
        self.keys = [file_key(e) for e in self.entries]  # what the teacher cache is keyed by

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> torch.Tensor:
        it = self.items[i]
        x, sr = crop(self.entries[it.file], it.start, it.seconds)
        x = audio.resample(x, sr, RATE)
        return x if it.kind == "clean" else synth.apply_kind(x, RATE, it.kind, it.severity, seed=it.seed)

    def cache_key(self, i: int) -> str:
        it = self.items[i]
        return json.dumps([self.keys[it.file], it.params()], sort_keys=True)


class StepBatches(Dataset):
    """step -> (clips, item indices): this process's part of the step's batch of
    ``batch`` items (``rank`` and ``world`` set by the data module)."""

    rank, world = 0, 1

    def __init__(self, items: Items, batch: int, seed: int) -> None:
        self.items, self.batch = items, batch
        self.plan = EpochPlan(len(items), seed, stream="items")

    def __len__(self) -> int:  # pragma: no cover - sampled by step
        return 1 << 62

    def indices(self, step: int) -> list[int]:
        return [self.plan.item(step * self.batch + k) for k in range(self.batch)]

    def __getitem__(self, step: int) -> tuple[list[torch.Tensor], list[int]]:
        idx = [self.indices(step)[k] for k in rank_part(self.batch, self.rank, self.world)]
        return [self.items.load(i) for i in idx], idx


class TeacherCache:
    """The teacher's scores on disk: one JSON line ``{"k": key, "s": score}`` per
    (teacher, file, variant), in ``folder/teacher_scores.jsonl``.

    ``teacher`` identifies the teacher (its name and the sha256 of its weights); the key
    of an item is the sha256 of (teacher, item key). At most ``max_entries`` are kept: the
    file is rewritten with the newest ones when it holds twice that many lines. Several
    processes may append at once (one short line per write); a lost line only costs a
    teacher call.
    """

    FILE = "teacher_scores.jsonl"

    def __init__(self, folder: str | os.PathLike, teacher: str, max_entries: int = 1_000_000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}.")
        self.path = Path(folder) / self.FILE
        self.teacher, self.max_entries = teacher, max_entries
        self.scores: dict[str, float] = {}
        self.lines = 0
        self.misses = 0  # teacher calls made through this cache (items scored)
        if self.path.is_file():
            with open(self.path) as f:
                for n, line in enumerate(f, 1):
                    try:
                        row = json.loads(line)
                        self.scores[str(row["k"])] = float(row["s"])
                    except (ValueError, KeyError, TypeError):
                        if line.endswith("\n"):  # a torn last line is what a killed run leaves
                            raise ValueError(f"{self.path}:{n}: not a teacher-cache line; delete the file "
                                             "(it only caches teacher scores).") from None
                    self.lines += 1
        self._trim()

    def key(self, item_key: str) -> str:
        return hashlib.sha256(json.dumps([self.teacher, item_key]).encode()).hexdigest()[:40]

    def get(self, item_key: str) -> float | None:
        return self.scores.get(self.key(item_key))

    def __len__(self) -> int:
        return len(self.scores)

    def put(self, values: dict[str, float]) -> None:
        """Add ``item key -> score`` entries (appended to the file)."""
        rows = {self.key(k): float(v) for k, v in values.items()}
        for k in rows:
            self.scores.pop(k, None)  # newest last
        self.scores.update(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            for k, v in rows.items():
                f.write(json.dumps({"k": k, "s": v}) + "\n")
        self.lines += len(rows)
        self._trim()

    def _trim(self) -> None:
        while len(self.scores) > self.max_entries:
            self.scores.pop(next(iter(self.scores)))
        if self.lines > 2 * self.max_entries:
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text("".join(json.dumps({"k": k, "s": v}) + "\n" for k, v in self.scores.items()))
            os.replace(tmp, self.path)
            self.lines = len(self.scores)

    def scores_of(self, item_keys: Sequence[str], clips_of, teacher_fn) -> torch.Tensor:
        """The teacher's scores of the items (a float64 tensor): from the cache, the missing
        ones computed by ``teacher_fn(clips_of(positions))`` and stored."""
        found = [self.get(k) for k in item_keys]
        missing = [p for p, s in enumerate(found) if s is None]
        if missing:
            new = teacher_fn(clips_of(missing)).detach().double().cpu().tolist()
            self.misses += len(missing)
            self.put({item_keys[p]: s for p, s in zip(missing, new)})
            for p, s in zip(missing, new):
                found[p] = s
        return torch.tensor(found, dtype=torch.float64)
