"""VQScore training data: labelled validation CSVs, the step plan of files, crop positions
and gains, and the crops themselves.

Part of :mod:`torchmos.training.vqscore`; nothing here imports Lightning.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .. import audio
from ..models.vqscore import VQScoreModel
from . import TrainError
from .data import EpochPlan, load_at, rank_part, seed_of

__all__ = ["Crops", "Plan", "StepBatches", "apply_gain", "load16k", "read_labels"]

SAMPLE_RATE = VQScoreModel.sample_rate


def read_labels(path: str | os.PathLike) -> list[tuple[audio.AudioEntry, float]]:
    """Rows ``path,score`` of a CSV (a header row is skipped). Relative paths resolve
    against the current folder when they exist there, else against the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"--valid-labels {path}: no such file.")
    rows: list[tuple[audio.AudioEntry, float]] = []
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise TrainError(f"{path}:{lineno}: expected 'path,score', got {','.join(row)!r}.")
            src, val = row[0].strip(), row[1].strip()
            try:
                score = float(val)
            except ValueError:
                if not rows and lineno == 1:
                    continue  # a header
                raise TrainError(f"{path}:{lineno}: the score {val!r} is not a number.") from None
            if not math.isfinite(score):
                raise TrainError(f"{path}:{lineno}: the score {val!r} is not finite.")
            if not os.path.isabs(src) and not os.path.exists(src):
                src = str(path.parent / src)
            rows.append((audio.AudioEntry(src, src), score))
    if len(rows) < 3:
        raise TrainError(f"{path}: {len(rows)} labelled clips; a correlation needs at least 3.")
    return rows


def load16k(entry: audio.AudioEntry) -> torch.Tensor:
    return load_at(entry, SAMPLE_RATE)


class Plan:
    """The batches, as a pure function of (seed, step): which files, where to crop, gains.

    Files are drawn in epochs (a seeded permutation per epoch); so a resumed run sees
    exactly the batches an uninterrupted one would.
    """

    def __init__(self, n_files: int, batch: int, seed: int, gain_min: float, gain_max: float) -> None:
        self.batch, self.seed = batch, seed
        self.gain_min, self.gain_max = gain_min, gain_max
        self._files = EpochPlan(n_files, seed, stream=1)

    def files(self, step: int) -> list[int]:
        return [self._files.item(k) for k in range(step * self.batch, (step + 1) * self.batch)]

    def randoms(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(crop positions in [0, 1), gains in [gain_min, gain_max]) for this step."""
        g = torch.Generator().manual_seed(seed_of(self.seed, 2, step))
        where = torch.rand(self.batch, generator=g, dtype=torch.float64)
        gains = torch.rand(self.batch, generator=g) * (self.gain_max - self.gain_min) + self.gain_min
        return where, gains

    def items(self, step: int) -> list[tuple[int, float]]:
        where, _ = self.randoms(step)
        return list(zip(self.files(step), where.tolist()))


def apply_gain(batch: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """Scale each crop (row) by its gain, lowered where the crop would exceed [-1, 1]."""
    peak = batch.abs().amax(dim=1)
    gains = torch.minimum(gains.to(batch.dtype), 1.0 / peak)  # 1/0 = inf for a silent crop
    return batch * gains[:, None]


class Crops(Dataset):
    """(file index, position in [0, 1)) -> a crop of ``length`` samples at 16 kHz."""

    def __init__(self, entries: Sequence[audio.AudioEntry], length: int) -> None:
        self.entries, self.length = list(entries), int(length)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, item: tuple[int, float]) -> torch.Tensor:
        idx, where = item
        x = load16k(self.entries[idx])
        if x.shape[0] <= self.length:
            return torch.nn.functional.pad(x, (0, self.length - x.shape[0]))
        start = min(int(where * (x.shape[0] - self.length + 1)), x.shape[0] - self.length)
        return x[start : start + self.length].clone()


class StepBatches(Dataset):
    """step -> (this process's crops (b, L) with their gains applied, b); ``rank`` and
    ``world`` are set by the data module."""

    rank, world = 0, 1

    def __init__(self, plan: Plan, crops: Crops) -> None:
        self.plan, self.crops = plan, crops

    def __len__(self) -> int:  # pragma: no cover - sampled by step
        return 1 << 62

    def __getitem__(self, step: int) -> torch.Tensor:
        items = self.plan.items(step)
        part = rank_part(len(items), self.rank, self.world)
        batch = torch.stack([self.crops[items[i]] for i in part])
        return apply_gain(batch, self.plan.randoms(step)[1][part.start:part.stop])
