"""Data for the training recipes: the MOS CSV format, crops, seeds and step samplers.

CSV format (header required; extra columns are ignored)::

    path,mos[,condition][,sample_rate]
    clips/a.wav,3.8,codec_6k,
    clips/b.flac,1.9,noise_0dB,48000

Relative paths resolve against the CSV's folder. ``condition`` groups clips of one test
condition (for per-condition correlations); ``sample_rate`` is an optional declaration
that is checked against the file.

Every recipe draws its batches as a pure function of ``(seed, step)`` (or ``(seed,
epoch)``) through :func:`seed_of`, so that a resumed run sees the batches an
uninterrupted one would, and so that every process of a multi-device run can compute the
whole batch and take its own part (:func:`rank_part`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler

from .. import audio

__all__ = ["EpochPlan", "MOSDataset", "MOSItem", "StepSampler", "collate", "crop", "durations", "load_at",
           "random_crop", "rank_part", "read_mos_csv", "seed_of", "seeded"]


# ----------------------------------------------------------------------------- seeds


def seed_of(*parts: Any) -> int:
    """A 63-bit seed derived from (seed, stream, index...), stable across runs and machines.

    >>> seed_of(1337, "init") == seed_of(1337, "init") != seed_of(1338, "init")
    True
    """
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()
    return int(h[:15], 16)


@contextlib.contextmanager
def seeded(*parts: Any) -> Iterator[None]:
    """Run the block with torch's global RNG (CPU and CUDA) seeded by ``seed_of(*parts)``,
    then restore the RNG as it was."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed_of(*parts))
        yield


class EpochPlan:
    """Items drawn in epochs of seeded permutations; a pure function of (seed, position).

    >>> plan = EpochPlan(5, seed=3)
    >>> sorted(plan.item(k) for k in range(5))
    [0, 1, 2, 3, 4]
    """

    def __init__(self, n: int, seed: int, stream: str | int = "files") -> None:
        self.n, self.seed, self.stream = n, seed, stream
        self._perms: dict[int, torch.Tensor] = {}

    def item(self, k: int) -> int:
        epoch, pos = divmod(k, self.n)
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(seed_of(self.seed, self.stream, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return int(self._perms[epoch][pos])


class StepSampler(Sampler):
    """The step numbers ``start, ..., stop - 1``: datasets indexed by step give the batch of
    that step. ``len`` is ``length`` when given (the whole epoch, of which a resumed run
    iterates the rest), else ``stop - start``."""

    def __init__(self, start: int, stop: int, length: int | None = None) -> None:
        self.start, self.stop = start, stop
        self.length = max(0, stop - start) if length is None else length

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.length


def rank_part(n: int, rank: int = 0, world: int = 1) -> range:
    """The positions ``rank`` takes of a batch of ``n`` split between ``world`` processes:
    contiguous parts, in rank order, the first ones one longer when ``n`` does not divide.

    >>> [list(rank_part(5, r, 2)) for r in range(2)]
    [[0, 1, 2], [3, 4]]
    """
    if n < world:
        raise ValueError(f"a batch of {n} cannot be split between {world} devices; use a larger batch or fewer devices.")
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (1 if rank < extra else 0))


# ----------------------------------------------------------------------------- files


def durations(entries: Sequence[audio.AudioEntry]) -> list[tuple[float, int]]:
    """(seconds, sample rate) of every file, from its header when it has one."""
    import soundfile as sf

    out = []
    for e in entries:
        try:
            info = sf.info(e.source)
            out.append((info.frames / info.samplerate, int(info.samplerate)))
        except Exception:  # pipes, odd containers: read it
            x, sr = e.read()
            out.append((x.shape[0] / sr, sr))
    return out


def _finite(x: torch.Tensor, source: str) -> torch.Tensor:
    if not bool(torch.isfinite(x).all()):
        raise audio.AudioError(f"{source}: the file holds NaN/Inf samples; clean or remove it.")
    return x


def crop(entry: audio.AudioEntry, start_s: float, seconds: float) -> tuple[torch.Tensor, int]:
    """``seconds`` of a file from ``start_s`` at its own rate, mono, checked for NaN/Inf.
    Regular files are read in part; anything else (pipes) whole."""
    import soundfile as sf

    try:
        with sf.SoundFile(entry.source) as f:
            sr, total = int(f.samplerate), f.frames
            n = max(1, min(total, int(seconds * sr)))
            a = max(0, min(int(round(start_s * sr)), total - n))
            f.seek(a)
            data = torch.from_numpy(f.read(n, dtype="float32", always_2d=True))
        x = data.mean(dim=1) if data.shape[1] > 1 else data[:, 0].contiguous()
    except Exception:  # not seekable, or not a plain file: the general reader names the problem
        x, sr = entry.read()
        n = max(1, int(seconds * sr))
        a = max(0, min(int(round(start_s * sr)), x.shape[0] - n))
        x = x[a : a + n]
    if x.shape[0] == 0:
        raise audio.AudioError(f"{entry.source}: the file holds no audio samples.")
    return _finite(x, entry.source), sr


def load_at(entry: audio.AudioEntry, rate: int) -> torch.Tensor:
    """A whole file, mono, checked for NaN/Inf, resampled to ``rate``."""
    x, sr = entry.read()
    return audio.resample(_finite(x, entry.source), sr, rate)


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
