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
  correlation with the labels, also per rate. ``model.pt`` keeps the best model by
  validation MSE; ``model_last.pt`` the last one.

Outputs in ``--out``: ``model.pt`` (``MsrUtmos(fs=..., checkpoint="runs/msr/model.pt")``,
``torchmos score --model runs/msr/model.pt``), ``model_last.pt``, ``last.pt`` (for
``--resume``), ``metrics.csv`` and ``args.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .. import audio
from ..hub import save_atomic
from ..models.msr_utmos import (
    INFER_LISTENERS,
    MsrUtmosModel,
    SFISSLModel,
    load_ssl,
    load_teacher,
)
from . import (
    CsvLog,
    TrainError,
    add_run_arguments,
    pearson,
    pick_device,
    plain_args,
    spearman,
    start_run,
)
from .sfi_distill import _StepSampler, crop, durations, seed_of

__all__ = ["Row", "TrainError", "add_arguments", "read_csv", "run"]

STATE_VERSION = 1
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
    o.add_argument("--steps", type=int, default=20_000, help="training steps (default 20000)")
    o.add_argument("--batch-size", type=int, default=8, help="clips per step, all of one rate (default 8)")
    o.add_argument("--crop-seconds", type=float, default=10.0, help="longest crop (default 10 s)")
    o.add_argument("--lr", type=float, default=1e-4, help="RAdam learning rate (1e-4, as the authors)")
    o.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay (default 0)")
    o.add_argument("--grad-clip", type=float, default=0.0, help="clip the gradient norm (default 0: off)")

    add_run_arguments(parser, seed_help="batches, crops, listeners and dropout", log_every=50, val_every=1000, save_every=1000)


def run(args: argparse.Namespace) -> int:
    """Fine-tune (or resume) as ``args`` say; returns 0. Raises :class:`TrainError`,
    :class:`torchmos.audio.AudioError` or :class:`torchmos.hub.HubError` on bad input."""
    return _FineTune(args).fit()


# ----------------------------------------------------------------------------- data


class _Batches(Dataset):
    """step -> ((B, T) crops at one rate, that rate, (B,) listener ids, (B,) MOS)."""

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
        clips = []
        for k, i in enumerate(items):
            x, sr = crop(self.rows[i].entry, where[k] * max(0.0, self.lengths[i][0] - dur), dur)
            clips.append(audio.resample(x, sr, fs))
            if self.rows[i].listener is not None:
                ids[k] = self.rows[i].listener
        n = min(c.shape[0] for c in clips)
        mos = torch.tensor([self.rows[i].mos for i in items], dtype=torch.float32)
        return torch.stack([c[:n] for c in clips]), fs, ids, mos


# ----------------------------------------------------------------------------- the recipe


class _FineTune:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.device = pick_device(args.device)
        for name in ("steps", "batch_size", "log_every"):
            if getattr(args, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
        if args.crop_seconds < 0.5:
            raise TrainError(f"--crop-seconds {args.crop_seconds} is too short (at least 0.5 s).")
        if args.ssl is None and args.init is None:
            raise TrainError("give --ssl (the SFI SSL model to fine-tune) or --init (an MSR-UTMOS model).")

    def _fresh(self) -> MsrUtmosModel:
        a = self.args
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_of(a.seed, "init"))
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

    def _load(self, rows: Sequence[Row]) -> list[tuple[torch.Tensor, int]]:
        out = []
        for row in rows:
            x, sr = row.entry.read()
            out.append((audio.resample(x, sr, row.rate) if row.rate else x, row.rate or sr))
        return out

    def _validate(self, model: MsrUtmosModel) -> tuple[dict[str, Any], list[float]]:
        model.eval()
        preds = [float(model([x], fs)[0]) for x, fs in self.valid]
        model.train()
        labels = [r.mos for r in self.valid_rows]
        row: dict[str, Any] = {
            "val_mse": sum((p - y) ** 2 for p, y in zip(preds, labels)) / len(labels),
            "val_pearson": pearson(preds, labels) if len(labels) > 2 else float("nan"),
            "val_spearman": spearman(preds, labels) if len(labels) > 2 else float("nan"),
        }
        by_rate: dict[int, list[int]] = {}
        for i, (_, fs) in enumerate(self.valid):
            by_rate.setdefault(fs, []).append(i)
        row["val_spearman_by_rate"] = " ".join(
            f"{fs}:{spearman([preds[i] for i in idx], [labels[i] for i in idx]):.3f}"
            for fs, idx in sorted(by_rate.items()) if len(idx) > 2)
        return row, preds

    def fit(self) -> int:
        a = self.args
        state = start_run(a, self.out, STATE_VERSION, FIXED_ON_RESUME)
        rows = read_csv(a.train)
        lengths = durations([r.entry for r in rows])
        self.valid_rows = read_csv(a.valid) if a.valid else []
        self.valid = self._load(self.valid_rows)

        if state is None:
            model = self._fresh()
        else:
            model = MsrUtmosModel.from_config(state["config"])
            model.load_state_dict(state["model"])
        model.to(self.device).train()
        opt = torch.optim.RAdam(model.parameters(), lr=a.lr, weight_decay=a.weight_decay, decoupled_weight_decay=True)
        start, elapsed0, best = 0, 0.0, math.inf
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            start, elapsed0, best = int(state["step"]), float(state["elapsed"]), float(state["best"])
            torch.set_rng_state(state["rng"])
            if state.get("cuda_rng") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        else:
            torch.manual_seed(seed_of(a.seed, "dropout"))
            (self.out / "args.json").write_text(json.dumps(plain_args(a), indent=2) + "\n")
        columns = ["step", "time_s", "lr", "loss", "val_mse", "val_pearson", "val_spearman", "val_spearman_by_rate"]
        log = CsvLog(self.out / "metrics.csv", columns, keep_until=start if state is not None else None)
        data = _Batches(rows, lengths, a.batch_size, a.crop_seconds, a.seed)
        loader = DataLoader(data, sampler=_StepSampler(start, a.steps), batch_size=None, num_workers=a.workers)

        from tqdm.auto import tqdm

        bar = tqdm(total=a.steps, initial=start, desc="msr-utmos", unit="step",
                   disable=True if a.no_progress else None, dynamic_ncols=True)
        t0 = time.monotonic()
        losses: list[float] = []
        step = start
        try:
            for x, fs, ids, mos in loader:
                y = model.predict(x.to(self.device), int(fs), ids.to(self.device))
                loss = torch.nn.functional.mse_loss(y, ((mos - 3.0) / 2.0).to(self.device))
                if not bool(torch.isfinite(loss)):
                    raise TrainError(f"the loss became {float(loss)} at step {step + 1}; lower --lr (or set "
                                     "--grad-clip) and resume from the last checkpoint.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if a.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
                opt.step()
                step += 1
                losses.append(loss.item())
                bar.update(1)
                elapsed = elapsed0 + time.monotonic() - t0
                row: dict[str, Any] = {}
                if step % a.log_every == 0 or step == a.steps:
                    row["loss"] = sum(losses) / len(losses)
                    bar.set_postfix(loss=f"{row['loss']:.4g}")
                    losses = []
                if self.valid and ((a.val_every and step % a.val_every == 0) or step == a.steps):
                    val, _ = self._validate(model)
                    row.update(val)
                    bar.write(f"step {step}: " + ", ".join(
                        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in val.items()))
                    if val["val_mse"] < best:
                        best = float(val["val_mse"])
                        model.save(self.out / "model.pt", meta={"step": step, "val_mse": best,
                                                                "val_spearman": val["val_spearman"]})
                if row:
                    row.update(step=step, time_s=round(elapsed, 2), lr=opt.param_groups[0]["lr"])
                    log.write(row)
                if (a.save_every and step % a.save_every == 0) or step == a.steps:
                    save_atomic({"version": STATE_VERSION, "step": step, "elapsed": elapsed, "best": best,
                                 "config": model.config, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "rng": torch.get_rng_state(),
                                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                                 "args": plain_args(a)}, self.out / "last.pt")
        finally:
            bar.close()
        model.eval()
        model.save(self.out / "model_last.pt", meta={"step": step})
        if not self.valid or not (self.out / "model.pt").exists():
            model.save(self.out / "model.pt", meta={"step": step})
        print(f"torchmos train msr-utmos: step {step}; model in {self.out / 'model.pt'}", file=sys.stderr)
        return 0
