"""Labelled MOS data for the training recipes: the CSV format, crops, batches.

CSV format (header required; extra columns are ignored)::

    path,mos[,condition][,sample_rate]
    clips/a.wav,3.8,codec_6k,
    clips/b.flac,1.9,noise_0dB,48000

Relative paths resolve against the CSV's folder. ``condition`` groups clips of one test
condition (for per-condition correlations); ``sample_rate`` is an optional declaration
that is checked against the file.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import audio

__all__ = ["MOSDataset", "MOSItem", "collate", "random_crop", "read_mos_csv"]


@dataclass(frozen=True)
class MOSItem:
    path: str
    mos: float
    condition: str | None = None
    sample_rate: int | None = None


def read_mos_csv(path: str | os.PathLike, mos_range: tuple[float, float] | None = None) -> list[MOSItem]:
    """Read and check a MOS CSV; every problem is reported at once, by line.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "a.wav").write_bytes(b"")
    0
    >>> _ = (d / "l.csv").write_text("path,mos\\na.wav,3.5\\n")
    >>> read_mos_csv(d / "l.csv")[0].mos
    3.5
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file.")
    items, problems = [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in cols or "mos" not in cols:
            raise ValueError(f"{path}: the header must name the columns path,mos[,condition][,sample_rate]; got {cols}.")
        for lineno, row in enumerate(reader, 2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            p = row.get("path", "")
            if not p:
                problems.append(f"{path}:{lineno}: empty path")
                continue
            full = p if os.path.isabs(p) else str(path.parent / p)
            try:
                mos = float(row.get("mos", ""))
            except ValueError:
                problems.append(f"{path}:{lineno}: MOS {row.get('mos')!r} is not a number")
                continue
            if not math.isfinite(mos) or (mos_range and not mos_range[0] <= mos <= mos_range[1]):
                problems.append(f"{path}:{lineno}: MOS {mos} is outside {mos_range or 'finite numbers'}")
                continue
            if not os.path.isfile(full):
                problems.append(f"{path}:{lineno}: {full}: no such file")
                continue
            sr = row.get("sample_rate") or None
            try:
                sr_int = audio.check_sample_rate(float(sr), f"{path}:{lineno}") if sr else None
            except (audio.AudioError, ValueError) as e:
                problems.append(str(e))
                continue
            items.append(MOSItem(full, mos, row.get("condition") or None, sr_int))
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{path}: {len(problems)} bad row(s):\n  {shown}{more}")
    if not items:
        raise ValueError(f"{path}: no rows.")
    return items


def random_crop(x: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random ``n``-sample crop of a 1-D clip; shorter clips are zero-padded at the end."""
    if x.shape[-1] <= n:
        return torch.nn.functional.pad(x, (0, n - x.shape[-1]))
    start = int(torch.randint(0, x.shape[-1] - n + 1, (1,), generator=generator))
    return x[start : start + n]


class MOSDataset(torch.utils.data.Dataset):
    """Clips of a MOS CSV, read through :mod:`torchmos.audio`, at ``fs``.

    Args:
        items: from :func:`read_mos_csv`.
        fs: the model's rate; files are resampled to it (``None`` keeps each file's rate).
        crop_seconds: random crops of this length (training), or ``None`` for whole clips.
        seed: seeds the crops (each epoch draws new ones; reproducible for a given seed).
    """

    def __init__(self, items: Sequence[MOSItem], fs: int | None = 16000, crop_seconds: float | None = None,
                 seed: int = 0) -> None:
        self.items = list(items)
        self.fs = fs
        self.crop_seconds = crop_seconds
        self.generator = torch.Generator().manual_seed(seed)
        self._cache: dict[int, tuple[torch.Tensor, int]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[torch.Tensor, int]:
        if i not in self._cache:
            it = self.items[i]
            x, sr = audio.read(it.path)
            if it.sample_rate is not None and it.sample_rate != sr:
                raise audio.AudioError(f"{it.path}: the CSV says {it.sample_rate} Hz but the file is {sr} Hz.")
            x = audio.prepare([x], sr, self.fs, names=[it.path], arg="")[0]
            self._cache[i] = (x, self.fs or sr)
        return self._cache[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, float, int]:
        x, sr = self.load(i)
        if self.crop_seconds is not None:
            x = random_crop(x, int(round(self.crop_seconds * sr)), self.generator)
        return x, self.items[i].mos, sr


def collate(batch: Sequence[tuple[torch.Tensor, float, int]]) -> tuple[list[torch.Tensor], torch.Tensor, list[int]]:
    """Keep clips as a list (lengths explicit), MOS as a tensor."""
    return [b[0] for b in batch], torch.tensor([b[1] for b in batch], dtype=torch.float32), [b[2] for b in batch]
