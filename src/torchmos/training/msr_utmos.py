"""Fine-tune MSR-UTMOS on labelled speech: ``torchmos train msr-utmos``.

    torchmos train msr-utmos --ssl runs/sfi --train train.csv --valid valid.csv --out runs/msr

The second stage of MSR-UTMOS (Nishikawa et al. 2025; SPECS §4): an SFI SSL model (the
student of ``torchmos train sfi-distill``) gets the UTMOS-style head (listener embedding
added to the last hidden state, ``Linear -> SiLU -> Linear``, mean over frames, tanh) and
the whole network is trained on MOS labels at the clips' own rates.

* ``--ssl``: a ``torchmos train sfi-distill`` output folder (or its ``student.pt``); a
  local ``transformers`` directory (converted without distillation, the SFI filters fitted
  to its first layer); or ``tiny`` (random, for smoke tests). ``--init model.pt`` starts
  from an MSR-UTMOS model instead (e.g. pre-trained on BVCC, then fine-tuned on your data).
* CSV files, one clip per row: ``path,mos[,sample_rate]``, or with a header naming the
  columns ``path``, ``mos``, ``sample_rate`` and ``listener`` in any order. ``sample_rate``
  is the rate the clip is presented at (the file is resampled to it if it differs; empty:
  the file's own rate), so one set of files can make a mixed-rate training set.
  ``listener`` is a listener id in [0, 1000) for per-listener ratings; rows without one
  train listener ids 1-10 at random, the ids that inference averages over. Relative paths
  resolve against the current folder when they exist there, else the CSV's folder.
* Every step draws one rate (in proportion to the clips at that rate) and
  ``--batch-size`` clips of that rate (batches never mix rates); all crops of the batch
  have one length: ``--crop-seconds`` or the shortest clip of the batch, nothing padded.
* Loss: MSE between ``y`` and ``(mos - 3) / 2``. RAdam, lr 1e-4 (the authors').
* Every ``--val-every`` steps (and at the end) the validation clips are scored whole, as
  the metric scores them (listener ids 1-10 averaged): MSE, Pearson and Spearman
  correlation with the labels, also Spearman per rate (``val_spearman_<rate>``).
  ``model.pt`` keeps the best model by validation MSE; ``model_last.pt`` the last one.

Outputs in ``--out``: ``model.pt`` (``MsrUtmos(fs=..., checkpoint="runs/msr/model.pt")``,
``torchmos score --model runs/msr/model.pt``), ``model_last.pt``,
``checkpoints/last.ckpt`` (Lightning's checkpoint, for ``--resume``), ``metrics.csv`` and
``args.json``. A LightningModule run by a Lightning Trainer (``--devices``,
``--strategy``, ``--precision``: :mod:`torchmos.training.trainer`).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .. import audio
from ..models.msr_utmos import (
    INFER_LISTENERS,
    MsrUtmosModel,
    SFISSLModel,
    load_ssl,
    load_teacher,
)
from . import TrainError, add_run_arguments, pearson, spearman
from .data import crop, durations, rank_part, seed_of, seeded
from .trainer import RecipeModule, Run, StepData, save_final

__all__ = ["Row", "TrainError", "add_arguments", "read_csv", "run"]

FIXED_ON_RESUME = ["ssl", "init", "train", "batch_size", "crop_seconds", "seed"]


@dataclass(frozen=True)
class Row:
    """One labelled clip: where it is, its MOS, the rate it is presented at, its listener."""

    entry: audio.AudioEntry
    mos: float
    rate: int | None = None
    listener: int | None = None


# ----------------------------------------------------------------------------- CSV


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_csv(path: str | os.PathLike, listeners: int = 1000) -> list[Row]:
    """Rows ``path,mos[,sample_rate]`` (or a header naming ``path, mos, sample_rate,
    listener``) of a CSV file; relative paths resolve against the current folder when they
    exist there, else against the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: no such CSV file.")
    names = {"path": 0, "mos": 1, "sample_rate": 2, "listener": None}
    aliases = {"file": "path", "wav": "path", "score": "mos", "sr": "sample_rate", "fs": "sample_rate",
               "rate": "sample_rate", "listener_id": "listener"}
    rows: list[Row] = []
    with open(path, newline="") as f:
        for lineno, raw in enumerate(csv.reader(f), 1):
            cells = [c.strip() for c in raw]
            if not cells or not cells[0] or cells[0].startswith("#"):
                continue
            if not rows and len(cells) > 1 and _number(cells[1]) is None:  # a header
                found = {aliases.get(c.lower(), c.lower()): i for i, c in enumerate(cells)}
                if "path" not in found or "mos" not in found:
                    raise TrainError(f"{path}:{lineno}: a header needs columns 'path' and 'mos', got {cells}.")
                names = {k: found.get(k) for k in ("path", "mos", "sample_rate", "listener")}
                continue
            got = {k: (cells[i] if i is not None and i < len(cells) else "") for k, i in names.items()}
            src, mos = got["path"], _number(got["mos"])
            if mos is None:
                raise TrainError(f"{path}:{lineno}: the MOS {got['mos']!r} is not a finite number.")
            rate = None
            if got["sample_rate"]:
                r = _number(got["sample_rate"])
                if r is None or r <= 0 or r != int(r):
                    raise TrainError(f"{path}:{lineno}: sample rate {got['sample_rate']!r} is not a whole number of Hz.")
                rate = int(r)
            listener = None
            if got["listener"]:
                v = _number(got["listener"])
                if v is None or v != int(v) or not 0 <= v < listeners:
                    raise TrainError(f"{path}:{lineno}: listener {got['listener']!r} is not an id in [0, {listeners}).")
                listener = int(v)
            if not os.path.isabs(src) and not os.path.exists(src):
                src = str(path.parent / src)
            rows.append(Row(audio.AudioEntry(src, src), float(mos), rate, listener))
    if not rows:
        raise TrainError(f"{path}: no labelled clips.")
    return rows


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the recipe's options to ``parser`` (``torchmos train msr-utmos`` mounts it)."""
    d = parser.add_argument_group("data")
    d.add_argument("--ssl", default=None, metavar="DIR",
                   help="the SFI SSL model: a `torchmos train sfi-distill` folder or its student.pt, a local "
                   "transformers directory (converted without distillation), or 'tiny' (random, for smoke tests)")
    d.add_argument("--ssl-arch", default="wav2vec2", choices=["wav2vec2", "hubert", "wavlm"],
                   help="architecture of --ssl tiny (default wav2vec2)")
    d.add_argument("--init", default=None, metavar="MODEL",
                   help="start from this MSR-UTMOS model file instead of --ssl + a fresh head")
    d.add_argument("--train", required=True, metavar="CSV", help="labelled clips: path,mos[,sample_rate]")
    d.add_argument("--valid", default=None, metavar="CSV", help="validation clips, same format")
    d.add_argument("--out", required=True, metavar="DIR", help="output folder (model.pt, last.pt, metrics.csv)")

    o = parser.add_argument_group("optimisation")
    o.add_argument("--steps", "--max-steps", dest="steps", type=int, default=20_000,
                   help="training steps (default 20000)")
    o.add_argument("--batch-size", type=int, default=8, help="clips per step, all of one rate (default 8)")
    o.add_argument("--crop-seconds", type=float, default=10.0, help="longest crop (default 10 s)")
    o.add_argument("--lr", type=float, default=1e-4, help="RAdam learning rate (1e-4, as the authors)")
    o.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay (default 0)")
    o.add_argument("--grad-clip", type=float, default=0.0, help="clip the gradient norm (default 0: off)")

    add_run_arguments(parser, seed_help="batches, crops, listeners and dropout", log_every=50, val_every=1000, save_every=1000)


def run(args: argparse.Namespace) -> int:
    """Fine-tune (or resume) as ``args`` say; returns 0. Raises :class:`TrainError`,
    :class:`torchmos.audio.AudioError` or :class:`torchmos.hub.HubError` on bad input."""
    return _fit(args)


# ----------------------------------------------------------------------------- data


class _Batches(Dataset):
    """step -> ((b, T) crops at one rate, that rate, (b,) listener ids, (b,) MOS): this
    process's part of the step's batch (``rank`` and ``world`` set by the data module)."""

    rank, world = 0, 1

    def __init__(self, rows: Sequence[Row], lengths: Sequence[tuple[float, int]], batch: int, seconds: float,
                 seed: int) -> None:
        self.rows, self.lengths = list(rows), list(lengths)
        self.batch, self.seconds, self.seed = batch, seconds, seed
        self.groups: dict[int, list[int]] = {}
        for i, (row, (_, sr)) in enumerate(zip(self.rows, self.lengths)):
            self.groups.setdefault(row.rate or sr, []).append(i)
        self.rates = sorted(self.groups)
        self.weights = torch.tensor([len(self.groups[r]) for r in self.rates], dtype=torch.float64)

    def __len__(self) -> int:  # pragma: no cover - sampled by step
        return 1 << 62

    def __getitem__(self, step: int) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed_of(self.seed, "step", step))
        fs = self.rates[int(torch.multinomial(self.weights, 1, generator=g))]
        group = self.groups[fs]
        items = [group[int(i)] for i in torch.randint(len(group), (self.batch,), generator=g)]
        dur = min([self.seconds] + [self.lengths[i][0] for i in items])
        where = torch.rand(self.batch, generator=g, dtype=torch.float64).tolist()
        ids = torch.randint(INFER_LISTENERS[0], INFER_LISTENERS[-1] + 1, (self.batch,), generator=g)
        for k, i in enumerate(items):
            if self.rows[i].listener is not None:
                ids[k] = self.rows[i].listener
        part = rank_part(len(items), self.rank, self.world)
        clips = []
        for k in part:
            i = items[k]
            x, sr = crop(self.rows[i].entry, where[k] * max(0.0, self.lengths[i][0] - dur), dur)
            clips.append(audio.resample(x, sr, fs))
        n = min(c.shape[0] for c in clips)
        mos = torch.tensor([self.rows[items[k]].mos for k in part], dtype=torch.float32)
        return torch.stack([c[:n] for c in clips]), fs, ids[part.start:part.stop], mos


# ----------------------------------------------------------------------------- the recipe


class _FineTune(RecipeModule):
    recipe = "msr-utmos"

    def __init__(self, args: argparse.Namespace, model: MsrUtmosModel, valid: list[tuple[torch.Tensor, int]],
                 labels: list[float]) -> None:
        super().__init__(args)
        self.model, self.valid, self.labels = model, valid, labels
        self.best = math.inf

    def run_state(self) -> dict[str, Any]:
        return {"best": self.best, "config": self.model.config}

    def load_run_state(self, state: dict[str, Any]) -> None:
        self.best = float(state.get("best", math.inf))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.RAdam(self.model.parameters(), lr=self.args.lr, weight_decay=self.args.weight_decay,
                                 decoupled_weight_decay=True)

    def training_step(self, batch: tuple[torch.Tensor, int, torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, fs, ids, mos = batch
        y = self.model.predict(x, int(fs), ids)
        loss = torch.nn.functional.mse_loss(y, (mos - 3.0) / 2.0)
        self.check_finite(loss)
        self.log_train({"loss": loss.detach()})
        return loss * self.share(x.shape[0], self.args.batch_size)

    def validation_step(self, i: int, batch_idx: int) -> None:
        if 0 <= i < len(self.valid):
            x, fs = self.valid[i]
            self._rows.append([i, fs, float(self.model([x.to(self.device)], fs)[0])])

    def on_validation_epoch_end(self) -> None:
        rows = self.gather(torch.tensor(self._rows, dtype=torch.float64, device=self.device).reshape(-1, 3)).cpu()
        rows = rows[rows[:, 0].argsort()]
        preds, labels = rows[:, 2], torch.tensor(self.labels, dtype=torch.float64)
        res: dict[str, Any] = {"val_mse": float(((preds - labels) ** 2).mean()),
                               "val_pearson": pearson(preds, labels), "val_spearman": spearman(preds, labels)}
        for fs in sorted({int(r) for r in rows[:, 1]}):
            at = rows[:, 1] == fs
            if int(at.sum()) > 2:
                res[f"val_spearman_{fs}"] = spearman(preds[at], labels[at])
        self.log_eval(res)
        self.report(res)
        if res["val_mse"] < self.best:
            self.best = res["val_mse"]
            if self.trainer.is_global_zero:
                self.model.save(Path(self.args.out) / "model.pt",
                                meta={"step": self.global_step, "val_mse": self.best, "val_spearman": res["val_spearman"]})


def _fresh(a: argparse.Namespace) -> MsrUtmosModel:
    with seeded(a.seed, "init"):
        if a.init:
            return MsrUtmosModel.from_pretrained(checkpoint=a.init)
        src = Path(a.ssl)
        if a.ssl == "tiny" or (src / "config.json").is_file():
            ssl: SFISSLModel = SFISSLModel.from_teacher(load_teacher(a.ssl, arch=a.ssl_arch))
        elif src.is_file() or (src / "student.pt").is_file():
            ssl = load_ssl(src)
        else:
            raise TrainError(f"--ssl {a.ssl}: neither a sfi-distill output (student.pt), a transformers "
                             "model directory (config.json), nor 'tiny'.")
        model = MsrUtmosModel(ssl)
        torch.nn.init.zeros_(model.listener_embedding.weight)  # every listener starts as the average one
        return model


def _check(a: argparse.Namespace) -> None:
    for name in ("steps", "batch_size", "log_every"):
        if getattr(a, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}.")
    if a.crop_seconds < 0.5:
        raise TrainError(f"--crop-seconds {a.crop_seconds} is too short (at least 0.5 s).")
    if a.ssl is None and a.init is None:
        raise TrainError("give --ssl (the SFI SSL model to fine-tune) or --init (an MSR-UTMOS model).")


def _fit(a: argparse.Namespace) -> int:
    _check(a)
    run = Run(a, "msr-utmos", FIXED_ON_RESUME, ["model.pt", "model_last.pt"])
    rows = read_csv(a.train)
    lengths = durations([r.entry for r in rows])
    valid_rows = read_csv(a.valid) if a.valid else []
    valid = []
    for row in valid_rows:
        x, sr = row.entry.read()
        valid.append((audio.resample(x, sr, row.rate) if row.rate else x, row.rate or sr))
    model = MsrUtmosModel.from_config(run.state["config"]) if run.state else _fresh(a)
    module = _FineTune(a, model, valid, [r.mos for r in valid_rows])
    data = StepData(_Batches(rows, lengths, a.batch_size, a.crop_seconds, a.seed), a.steps, a.val_every,
                    a.workers, n_valid=len(valid))
    trainer = run.trainer(max_steps=a.steps, save_every_steps=a.save_every, clip=a.grad_clip)
    run.fit(trainer, module, data)
    save_final(trainer, model, run.out, "msr-utmos", "model.pt", "model_last.pt", selected=bool(valid))
    return 0
