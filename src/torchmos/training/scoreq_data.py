"""SCOREQ training data: an epoch's seeded batches of crops, whole clips, checked CSVs
and options, and stage 1's LightningDataModule. Part of :mod:`torchmos.training.scoreq`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .. import audio
from ..models.scoreq import HOP, ScoreqModel
from . import TrainError
from .data import MOSDataset, MOSItem, crop, durations, rank_part, read_mos_csv, seed_of
from .trainer import validation_loader

__all__ = ["EpochBatches", "Stage1Data", "check_options", "long_enough", "read_items", "whole_clips"]

SAMPLE_RATE = ScoreqModel.sample_rate


class EpochBatches(Dataset):
    """batch index -> (16 kHz crops of this process's part of the batch, (B,) MOS of the
    whole batch) of one epoch: a seeded permutation of the clips cut into batches (a last
    batch of fewer than 3 clips, or than ``world`` processes, is dropped), and a seeded
    crop offset per clip."""

    def __init__(self, items: Sequence[MOSItem], lengths: Sequence[tuple[float, int]], batch: int,
                 seconds: float, seed: int, epoch: int, rank: int = 0, world: int = 1) -> None:
        self.items, self.lengths, self.seconds = items, lengths, seconds
        self.rank, self.world = rank, world
        g = torch.Generator().manual_seed(seed_of(seed, "epoch", epoch))
        order = torch.randperm(len(items), generator=g).tolist()
        self.where = torch.rand(len(items), generator=g, dtype=torch.float64).tolist()
        self.batches = [order[i:i + batch] for i in range(0, len(order), batch)]
        if len(self.batches) > 1 and len(self.batches[-1]) < max(3, world):
            self.batches.pop()

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[list[Tensor], Tensor]:
        clips = []
        batch = self.batches[b]
        for i in (batch[k] for k in rank_part(len(batch), self.rank, self.world)):
            it = self.items[i]
            dur = self.lengths[i][0]
            x, sr = crop(audio.AudioEntry(it.path, it.path), self.where[i] * max(0.0, dur - self.seconds),
                         self.seconds)
            clips.append(long_enough(audio.prepare([x], sr, SAMPLE_RATE, names=[it.path], arg="")[0], it.path))
        return clips, torch.tensor([self.items[i].mos for i in self.batches[b]], dtype=torch.float32)


def long_enough(x: Tensor, path: str) -> Tensor:
    if x.shape[0] <= HOP:
        raise audio.AudioError(f"{path}: {x.shape[0]} samples at 16 kHz; SCOREQ needs more than {HOP}.")
    return x


def whole_clips(items: Sequence[MOSItem]) -> list[Tensor]:
    """Every clip of ``items`` whole, at 16 kHz."""
    data = MOSDataset(items, SAMPLE_RATE, None)
    return [long_enough(data.load(i)[0], it.path) for i, it in enumerate(items)]


def read_items(csv_path: str, mos_range: tuple[float, float]) -> tuple[list[MOSItem], list[tuple[float, int]]]:
    """The clips of a MOS CSV and their (duration, rate), every row checked."""
    try:
        items = read_mos_csv(csv_path, mos_range=tuple(mos_range))
    except (ValueError, FileNotFoundError) as e:
        raise TrainError(str(e)) from None
    lengths = durations([audio.AudioEntry(it.path, it.path) for it in items])
    bad = [f"{it.path}: the CSV says {it.sample_rate} Hz but the file is {sr} Hz"
           for it, (_, sr) in zip(items, lengths) if it.sample_rate is not None and it.sample_rate != sr]
    if bad:
        raise TrainError(f"{csv_path}: {len(bad)} clip(s) with a wrong sample_rate:\n  " + "\n  ".join(bad[:20]))
    return items, lengths


def check_options(a: argparse.Namespace) -> None:
    """The recipe's options that argparse cannot check alone."""
    for name in ("epochs", "batch_size", "head_epochs", "head_batch_size", "patience", "decay_patience",
                 "log_every", "val_every"):
        if getattr(a, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}.")
    if a.loss == "scoreq" and a.batch_size < 3:
        raise TrainError(f"--batch-size {a.batch_size}: the triplet loss needs at least 3 clips per batch.")
    if a.micro_batch < 0:
        raise TrainError(f"--micro-batch must be 0 (off) or a number of clips, got {a.micro_batch}.")
    if a.crop_seconds < 0.5:
        raise TrainError(f"--crop-seconds {a.crop_seconds} is too short (at least 0.5 s).")
    if not a.mos_range[1] > a.mos_range[0]:
        raise TrainError(f"--mos-range {a.mos_range[0]} {a.mos_range[1]}: HIGH must exceed LOW.")
    if not 0 <= a.dropout < 1:
        raise TrainError(f"--dropout must be in [0, 1), got {a.dropout}.")
    if a.reference and not a.valid:
        raise TrainError("--reference is used to validate: give --valid too.")


class Stage1Data(pl.LightningDataModule):
    """Stage 1's epochs (:class:`EpochBatches`, this process's part), and the indices of
    the validation clips and references, split between the processes."""

    def __init__(self, args: argparse.Namespace, items: list[MOSItem], lengths: list[tuple[float, int]],
                 n_valid: int) -> None:
        super().__init__()
        self.args, self.items, self.lengths, self.n_valid = args, items, lengths, n_valid

    def train_dataloader(self) -> DataLoader:
        a, t = self.args, self.trainer
        data = EpochBatches(self.items, self.lengths, a.batch_size, a.crop_seconds, a.seed, t.current_epoch,
                            t.global_rank, t.world_size)
        return DataLoader(data, batch_size=None, shuffle=False, num_workers=a.workers)

    def val_dataloader(self) -> DataLoader | list:
        a, t = self.args, self.trainer
        epoch = t.current_epoch + 1
        if epoch % a.val_every and epoch != a.epochs:  # every --val-every epochs, and the last
            return []
        return validation_loader(self.n_valid, t.global_rank, t.world_size)
