"""Train VQScore on clean speech only: ``torchmos train vqscore --clean DIR --out runs/vq``.

The recipe of Fu et al. (ICLR 2024; SPECS §3), on your own clean recordings (a language,
a microphone, a singer). No quality labels are needed: a VQ-VAE learns to reconstruct the
magnitude spectra of clean speech, and its codebook then fits clean speech better than
degraded speech.

* Data: clean files from folders (recursive), single files, ``.txt`` lists or Kaldi
  ``wav.scp`` (:func:`torchmos.audio.find_audio`), any rate (resampled to 16 kHz), mixed
  to mono. Every step draws ``--batch-size`` files (epochs of a seeded permutation),
  a random ``--crop-seconds`` (3 s) crop of each (shorter files are zero-padded), and a
  random gain in [0.05, 2.0] per crop, lowered when it would clip.
* Loss: ``commitment + 45 x (1 - mean frame cosine between |X| and its reconstruction)``
  (the authors minimise ``-cos``; same gradient). The codebook is not learnt by gradient:
  k-means on the first batch, EMA updates (decay 0.8), and dead-code replacement
  (``--dead-code-threshold``; the authors' released model was trained with it off, which
  ``--dead-code-threshold 0`` reproduces).
* Optimiser: Adam, lr 1e-5, betas (0.5, 0.9) (the authors' values, for 800k steps of
  batch 64); all configurable.
* Every ``--val-every`` steps: codebook usage (perplexity of the EMA code counts), and on
  clean validation speech (``--valid``, default: up to 16 training files) the mean
  VQScore, the reconstruction cosine and the perplexity of the codes used. With
  ``--valid-labels FILE.csv`` (rows ``path,score``: MOS, DNSMOS OVRL, PESQ... of noisy
  speech) also the Pearson and Spearman correlation of VQScore with the labels; the
  authors selected their model by this Pearson correlation (with DNSMOS OVRL on the noisy
  VoiceBank-DEMAND test set), and so does this recipe.

Outputs in ``--out``: ``vqscore.pt`` (the model in torchmos' layout, usable as
``torchmos score --model runs/vq/vqscore.pt`` or ``VQScore(checkpoint=...)``: the last
model, or with ``--valid-labels`` the best by Pearson correlation, the last then being
``vqscore_last.pt``), ``last.pt`` (the same plus optimiser and RNG state, for
``--resume``), ``metrics.csv`` and ``args.json``. With the same ``--seed`` and data, a
run on CPU is reproducible bit for bit, also when interrupted and resumed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .. import audio, hub
from ..hub import save_atomic
from ..models.vqscore import VQScoreModel, frame_cosine
from . import CsvLog, TrainError, add_run_arguments, pearson, pick_device, plain_args, spearman

__all__ = ["TrainError", "add_arguments", "apply_gain", "pearson", "read_labels", "run", "spearman"]

SAMPLE_RATE = VQScoreModel.sample_rate
STATE_VERSION = 1
VALID_MAX_SECONDS = 30.0
COLUMNS = ["step", "time_s", "lr", "loss", "commit", "recon_cos", "usage_perplexity", "val_vqscore",
           "val_recon_cos", "val_perplexity", "val_codes_used", "val_pearson", "val_spearman", "val_n"]
# options that must not change when a run is resumed (they decide the batches or the model)
FIXED_ON_RESUME = ["clean", "batch_size", "crop_seconds", "gain_min", "gain_max", "seed"]


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the recipe's options to ``parser`` (``torchmos train vqscore`` mounts it)."""
    d = parser.add_argument_group("data")
    d.add_argument("--clean", nargs="+", required=True, metavar="PATH",
                   help="clean speech: folders (recursive), audio files, .txt lists or Kaldi wav.scp")
    d.add_argument("--out", required=True, metavar="DIR", help="output folder (vqscore.pt, last.pt, metrics.csv)")
    d.add_argument("--valid", nargs="+", default=None, metavar="PATH",
                   help="clean validation speech (default: up to 16 of the training files)")
    d.add_argument("--valid-labels", default=None, metavar="CSV",
                   help="noisy validation clips with quality labels, rows 'path,score'; VQScore's "
                   "correlation with them is reported and the best model kept")
    d.add_argument("--valid-max-files", type=int, default=64, metavar="N",
                   help="use at most N clean validation files (default 64)")

    m = parser.add_argument_group("model")
    m.add_argument("--codebook-size", type=int, default=2048, help="codes (default 2048)")
    m.add_argument("--codebook-dim", type=int, default=32, help="code size (default 32)")
    m.add_argument("--channels", type=int, nargs=2, default=[128, 64], metavar=("C1", "C2"),
                   help="hidden widths of encoder and decoder (default 128 64)")
    m.add_argument("--decay", type=float, default=0.8, help="EMA decay of the codebook (default 0.8)")
    m.add_argument("--kmeans-iters", type=int, default=10, help="k-means iterations at init (default 10)")
    m.add_argument("--dead-code-threshold", type=float, default=2.0,
                   help="replace codes whose EMA count falls below this (default 2; 0 = never, as "
                   "the authors' released model)")
    m.add_argument("--init", default=None, metavar="CKPT",
                   help="start from these weights (a file in either layout, or 'vqscore' for the "
                   "released model) instead of a fresh model")

    o = parser.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=800_000, help="training steps (default 800000, as the authors)")
    o.add_argument("--batch-size", type=int, default=64, help="crops per step (default 64)")
    o.add_argument("--crop-seconds", type=float, default=3.0, help="crop length (default 3 s)")
    o.add_argument("--gain-min", type=float, default=0.05, help="random gain range, low end (default 0.05)")
    o.add_argument("--gain-max", type=float, default=2.0, help="random gain range, high end (default 2.0)")
    o.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate (default 1e-5)")
    o.add_argument("--betas", type=float, nargs=2, default=[0.5, 0.9], metavar=("B1", "B2"),
                   help="Adam betas (default 0.5 0.9)")
    o.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay (default 0)")
    o.add_argument("--grad-clip", type=float, default=0.0, help="clip the gradient norm (default 0: off)")
    o.add_argument("--recon-weight", type=float, default=45.0, help="weight of the reconstruction loss (45)")
    o.add_argument("--commit-weight", type=float, default=1.0, help="weight of the commitment loss (1)")

    add_run_arguments(parser, seed_help="batches, crops, gains and init", log_every=100, val_every=20000, save_every=10000)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) as ``args`` say; returns 0. Raises :class:`TrainError`,
    :class:`torchmos.audio.AudioError` or :class:`torchmos.hub.HubError` on bad input."""
    return _Recipe(args).fit()


# ----------------------------------------------------------------------------- statistics


def _perplexity(counts: torch.Tensor) -> float:
    p = counts.double()
    if float(p.sum()) <= 0:
        return 0.0
    p = p[p > 0] / p.sum()
    return float(torch.exp(-(p * p.log()).sum()))


# ----------------------------------------------------------------------------- data


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


def _load16k(entry: audio.AudioEntry) -> torch.Tensor:
    x, sr = entry.read()
    if not bool(torch.isfinite(x).all()):
        raise audio.AudioError(f"{entry.source}: the file holds NaN/Inf samples; clean or remove it.")
    return audio.resample(x, sr, SAMPLE_RATE)


def _seed_of(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, stream, index), stable across runs."""
    h = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).hexdigest()
    return int(h[:15], 16)


class _Plan:
    """The batches, as a pure function of (seed, step): which files, where to crop, gains.

    Files are drawn in epochs (a seeded permutation per epoch); so a resumed run sees
    exactly the batches an uninterrupted one would.
    """

    def __init__(self, n_files: int, batch: int, seed: int, gain_min: float, gain_max: float) -> None:
        self.n, self.batch, self.seed = n_files, batch, seed
        self.gain_min, self.gain_max = gain_min, gain_max
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(_seed_of(self.seed, 1, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def files(self, step: int) -> list[int]:
        out = []
        for k in range(step * self.batch, (step + 1) * self.batch):
            epoch, pos = divmod(k, self.n)
            out.append(int(self._perm(epoch)[pos]))
        return out

    def randoms(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(crop positions in [0, 1), gains in [gain_min, gain_max]) for this step."""
        g = torch.Generator().manual_seed(_seed_of(self.seed, 2, step))
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


class _PlanSampler(Sampler):
    def __init__(self, plan: _Plan, start: int, stop: int) -> None:
        self.plan, self.start, self.stop = plan, start, stop

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        for step in range(self.start, self.stop):
            yield self.plan.items(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class _Crops(Dataset):
    """(file index, position in [0, 1)) -> a crop of ``length`` samples at 16 kHz."""

    def __init__(self, entries: Sequence[audio.AudioEntry], length: int) -> None:
        self.entries, self.length = list(entries), int(length)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, item: tuple[int, float]) -> torch.Tensor:
        idx, where = item
        x = _load16k(self.entries[idx])
        if x.shape[0] <= self.length:
            return torch.nn.functional.pad(x, (0, self.length - x.shape[0]))
        start = min(int(where * (x.shape[0] - self.length + 1)), x.shape[0] - self.length)
        return x[start : start + self.length].clone()


# ----------------------------------------------------------------------------- the recipe


class _Recipe:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.device = pick_device(args.device)
        for name in ("steps", "batch_size", "valid_max_files", "kmeans_iters", "codebook_size", "codebook_dim"):
            if getattr(args, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
        if args.crop_seconds * SAMPLE_RATE <= 512:
            raise TrainError(f"--crop-seconds {args.crop_seconds} is too short (at least 0.04 s).")
        if not 0 < args.gain_min <= args.gain_max:
            raise TrainError(f"need 0 < --gain-min <= --gain-max, got {args.gain_min} and {args.gain_max}.")
        if not 0.0 <= args.decay < 1.0:
            raise TrainError(f"--decay must be in [0, 1), got {args.decay}.")

    # -- model and state ----------------------------------------------------------

    def _train_options(self) -> dict[str, Any]:
        a = self.args
        return {"decay": a.decay, "kmeans_iters": a.kmeans_iters, "dead_code_threshold": a.dead_code_threshold}

    def _fresh_model(self) -> VQScoreModel:
        a = self.args
        if a.init:
            if a.init in hub.CARDS:
                return VQScoreModel.from_pretrained(card=a.init, **self._train_options())
            return VQScoreModel.from_pretrained(checkpoint=a.init, **self._train_options())
        return VQScoreModel(codebook_size=a.codebook_size, codebook_dim=a.codebook_dim, channels=a.channels,
                            kmeans_init=True, **self._train_options())

    def _check_resumable(self, state: dict[str, Any], entries: int) -> None:
        old = state.get("args", {})
        for key in FIXED_ON_RESUME + (["init"] if old.get("init") else
                                      ["codebook_size", "codebook_dim", "channels"]):
            new = plain_args(self.args).get(key)
            if key in old and old[key] != new:
                raise TrainError(
                    f"--{key.replace('_', '-')} was {old[key]!r} in the run being resumed ({self.out}) "
                    f"and is {new!r} now; resume with the same value, or start a new run (--overwrite "
                    "or another --out)."
                )
        for key, value in self._train_options().items():
            if state["config"].get(key) != value:
                raise TrainError(
                    f"--{key.replace('_', '-')} was {state['config'].get(key)!r} in the run being resumed "
                    f"and is {value!r} now; resume with the same value."
                )
        if state.get("n_files") != entries:
            print(f"torchmos train vqscore: warning: the run started with {state.get('n_files')} clean files, "
                  f"now {entries}; batches will differ from an uninterrupted run.", file=sys.stderr)

    def _save_state(self, model: VQScoreModel, opt: torch.optim.Optimizer, step: int, best: float,
                    elapsed: float, n_files: int) -> None:
        ckpt = model.checkpoint(meta={"step": step, "recipe": "torchmos.training.vqscore"})
        ckpt["train"] = {
            "version": STATE_VERSION,
            "step": step,
            "optimizer": opt.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "best": best,
            "elapsed": elapsed,
            "n_files": n_files,
            "args": plain_args(self.args),
            "config": dict(model.config),
        }
        save_atomic(ckpt, self.out / "last.pt")

    # -- validation ----------------------------------------------------------------

    def _validation_sets(self, entries: list[audio.AudioEntry]) -> None:
        a = self.args
        valid = audio.find_audio(a.valid) if a.valid else entries[: min(16, len(entries))]
        self.valid_clips = [_load16k(e)[: int(VALID_MAX_SECONDS * SAMPLE_RATE)] for e in valid[: a.valid_max_files]]
        self.valid_clips = [c for c in self.valid_clips if c.shape[0] > 512]
        self.labelled: list[torch.Tensor] = []
        self.labels: list[float] = []
        if a.valid_labels:
            for entry, score in read_labels(a.valid_labels):
                clip = _load16k(entry)
                if clip.shape[0] <= 512:
                    raise TrainError(f"{entry.source}: too short to score ({clip.shape[0]} samples at 16 kHz).")
                self.labelled.append(clip)
                self.labels.append(score)

    @torch.no_grad()
    def _validate(self, model: VQScoreModel) -> dict[str, Any]:
        model.eval()
        res: dict[str, Any] = {"usage_perplexity": model.codebook.usage_perplexity()}
        if self.valid_clips:
            counts = torch.zeros(model.codebook.size, dtype=torch.long)
            vq, rc = [], []
            for clip in self.valid_clips:
                mag, _ = model.spectrogram([clip.to(self.device)])
                z = model.encode(mag)
                zq, codes, _ = model.quantize(z)
                vq.append(float(frame_cosine(z, zq)))
                rc.append(float(frame_cosine(mag, model.decode(zq))))
                counts += torch.bincount(codes.flatten().cpu(), minlength=model.codebook.size)
            res.update(val_vqscore=sum(vq) / len(vq), val_recon_cos=sum(rc) / len(rc),
                       val_perplexity=_perplexity(counts), val_codes_used=int((counts > 0).sum()))
        if self.labelled:
            scores = model([c.to(self.device) for c in self.labelled]).cpu()
            res.update(val_pearson=pearson(scores, self.labels), val_spearman=spearman(scores, self.labels),
                       val_n=len(self.labels))
        model.train()
        return res

    # -- the loop --------------------------------------------------------------------

    def fit(self) -> int:
        a = self.args
        last = self.out / "last.pt"
        if last.exists() and not (a.resume or a.overwrite):
            raise TrainError(f"{self.out} already holds a run (last.pt): pass --resume to continue it, "
                             "--overwrite to start afresh, or choose another --out.")
        self.out.mkdir(parents=True, exist_ok=True)
        if a.overwrite and not (a.resume and last.exists()):  # no stale model of the older run
            for stale in ("vqscore.pt", "vqscore_last.pt", "last.pt"):
                (self.out / stale).unlink(missing_ok=True)
        if a.threads:
            torch.set_num_threads(a.threads)
        entries = audio.find_audio(a.clean)
        if not entries:
            raise TrainError(f"no clean audio found in {' '.join(a.clean)}.")
        self._validation_sets(entries)
        crop = int(round(a.crop_seconds * SAMPLE_RATE))
        plan = _Plan(len(entries), a.batch_size, a.seed, a.gain_min, a.gain_max)

        torch.manual_seed(a.seed)
        state = None
        if a.resume and last.exists():
            ckpt = hub.load_checkpoint(last)
            state = ckpt.get("train")
            if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
                raise TrainError(f"{last}: not a resumable torchmos VQScore training state.")
            self._check_resumable(state, len(entries))
            model = VQScoreModel.from_checkpoint(ckpt, source=str(last))
        else:
            model = self._fresh_model()
        model.to(self.device).train()
        opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=tuple(a.betas), weight_decay=a.weight_decay)
        start, best, elapsed0 = 0, -math.inf, 0.0
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            for group in opt.param_groups:  # the options given now win (lr schedules by hand)
                group.update(lr=a.lr, betas=tuple(a.betas), weight_decay=a.weight_decay)
            start, best, elapsed0 = int(state["step"]), float(state["best"]), float(state["elapsed"])
        (self.out / "args.json").write_text(json.dumps(plain_args(a), indent=2, default=str) + "\n")
        log = CsvLog(self.out / "metrics.csv", COLUMNS, keep_until=start if state is not None else None)

        loader = DataLoader(_Crops(entries, crop), batch_sampler=_PlanSampler(plan, start, a.steps),
                            num_workers=a.workers, collate_fn=torch.stack, generator=torch.Generator())
        if state is not None:  # after everything that might draw from the global RNG
            torch.set_rng_state(state["rng"])
            if state.get("cuda_rng") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])

        from tqdm.auto import tqdm

        bar = tqdm(total=a.steps, initial=start, desc="vqscore", unit="step",
                   disable=True if a.no_progress else None, dynamic_ncols=True)
        t0 = time.monotonic()
        sums = {"loss": 0.0, "commit": 0.0, "recon_cos": 0.0}
        count = 0
        step = start
        labelled = bool(self.labelled)
        try:
            for batch in loader:
                x = apply_gain(batch, plan.randoms(step)[1]).to(self.device)
                out = model.forward_train(x)
                recon_cos = frame_cosine(out.mag, out.recon, out.mask).mean()
                loss = a.commit_weight * out.commit_loss + a.recon_weight * (1.0 - recon_cos)
                if not bool(torch.isfinite(loss)):
                    raise TrainError(f"the loss became {float(loss)} at step {step + 1}; lower --lr "
                                     "(or --grad-clip) and resume from the last checkpoint.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if a.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
                opt.step()
                step += 1
                sums["loss"] += float(loss.detach())
                sums["commit"] += float(out.commit_loss.detach())
                sums["recon_cos"] += float(recon_cos.detach())
                count += 1
                bar.update(1)
                elapsed = elapsed0 + time.monotonic() - t0
                row: dict[str, Any] = {}
                if step % a.log_every == 0 or step == a.steps:
                    row = {k: v / count for k, v in sums.items()}
                    row["usage_perplexity"] = model.codebook.usage_perplexity()
                    bar.set_postfix(loss=f"{row['loss']:.3f}", cos=f"{row['recon_cos']:.3f}",
                                    ppl=f"{row['usage_perplexity']:.0f}")
                    sums = dict.fromkeys(sums, 0.0)
                    count = 0
                if (a.val_every and step % a.val_every == 0) or step == a.steps:
                    val = self._validate(model)
                    row.update(val)
                    bar.write(f"step {step}: " + ", ".join(
                        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in val.items()))
                    if labelled and val["val_pearson"] == val["val_pearson"] and val["val_pearson"] > best:
                        best = float(val["val_pearson"])
                        model.save(self.out / "vqscore.pt", meta={"step": step, "val_pearson": best,
                                                                  "val_spearman": val["val_spearman"]})
                if row:
                    row.update(step=step, time_s=round(elapsed, 2), lr=opt.param_groups[0]["lr"])
                    log.write(row)
                if (a.save_every and step % a.save_every == 0) or step == a.steps:
                    self._save_state(model, opt, step, best, elapsed, len(entries))
        finally:
            bar.close()
        final = "vqscore_last.pt" if labelled else "vqscore.pt"
        if step > start or not (self.out / final).exists():
            model.eval()
            model.save(self.out / final, meta={"step": step})
            if labelled and not (self.out / "vqscore.pt").exists():
                model.save(self.out / "vqscore.pt", meta={"step": step})
        print(f"torchmos train vqscore: step {step}; model in {self.out / 'vqscore.pt'}", file=sys.stderr)
        return 0
