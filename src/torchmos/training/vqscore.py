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
``vqscore_last.pt``), ``checkpoints/last.ckpt`` (Lightning's checkpoint, for
``--resume``), ``metrics.csv`` and ``args.json``. The recipe is a LightningModule run by a
Lightning Trainer (``--devices``, ``--strategy``, ``--precision``: see
:mod:`torchmos.training.trainer`); on several devices the codebook is updated from the
frames of every device, identically everywhere. With the same ``--seed`` and data, a run
on CPU is reproducible bit for bit, also when interrupted and resumed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import audio, hub
from ..models.vqscore import VQScoreModel, frame_cosine
from . import TrainError, add_run_arguments, pearson, spearman
from .trainer import RecipeModule, Run, StepData, save_final
from .vqscore_data import Crops, Plan, StepBatches, apply_gain, load16k, read_labels

__all__ = ["TrainError", "add_arguments", "apply_gain", "pearson", "read_labels", "run", "spearman"]

SAMPLE_RATE = VQScoreModel.sample_rate
VALID_MAX_SECONDS = 30.0
# options that must not change when a run is resumed (they decide the batches or the model)
FIXED_ON_RESUME = ["clean", "batch_size", "crop_seconds", "gain_min", "gain_max", "seed"]
OUTPUTS = ["vqscore.pt", "vqscore_last.pt"]


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
    o.add_argument("--steps", "--max-steps", dest="steps", type=int, default=800_000,
                   help="training steps (default 800000, as the authors)")
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
    return _fit(args)


# ----------------------------------------------------------------------------- statistics


def _perplexity(counts: torch.Tensor) -> float:
    p = counts.double()
    if float(p.sum()) <= 0:
        return 0.0
    p = p[p > 0] / p.sum()
    return float(torch.exp(-(p * p.log()).sum()))


# ----------------------------------------------------------------------------- the recipe


class _VQScore(RecipeModule):
    recipe = "vqscore"

    def __init__(self, args: argparse.Namespace, model: VQScoreModel, rng: torch.Tensor, valid: list[torch.Tensor],
                 labelled: list[torch.Tensor], labels: list[float], n_files: int) -> None:
        super().__init__(args)
        self.model, self.valid, self.labelled, self.labels = model, valid, labelled, labels
        self.n_files, self.best = n_files, -math.inf
        # the RNG of the codebook's k-means and dead codes: one stream, the same in every
        # process, continued from the model's initialisation (kept in checkpoints)
        self.codebook_rng = rng

    def run_state(self) -> dict[str, Any]:
        return {"best": self.best, "n_files": self.n_files, "config": dict(self.model.config),
                "codebook_rng": self.codebook_rng}

    def load_run_state(self, state: dict[str, Any]) -> None:
        self.best = float(state.get("best", -math.inf))
        self.codebook_rng = state["codebook_rng"]

    @contextlib.contextmanager
    def _codebook_rng(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.codebook_rng)
            yield
            self.codebook_rng = torch.get_rng_state()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        a = self.args
        return torch.optim.Adam(self.model.parameters(), lr=a.lr, betas=tuple(a.betas), weight_decay=a.weight_decay)

    def on_train_start(self) -> None:  # a resumed run: the options given now win (lr schedules by hand)
        super().on_train_start()
        for group in self.trainer.optimizers[0].param_groups:
            group.update(lr=self.args.lr, betas=tuple(self.args.betas), weight_decay=self.args.weight_decay)

    def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """The model's training pass, with the codebook maintained (k-means init, EMA,
        dead codes) from the frames of every process, so that it stays one codebook."""
        a, model, cb = self.args, self.model, self.model.codebook
        mag, mask = model.spectrogram(list(x))
        assert mask is None  # crops of one length
        z = model.encode(mag)
        frames = F.normalize(z.detach().float().transpose(1, 2).reshape(-1, z.shape[1]), dim=-1)
        every = self.gather(frames)
        if not cb.is_initialised:
            with self._codebook_rng():
                cb._kmeans_init(every)
        zq, codes, commit = model.quantize(z, update=False, straight_through=True)
        with self._codebook_rng():
            cb._ema_update(every, self.gather(codes.flatten()))
            cb._expire_codes(every)
        recon_cos = frame_cosine(mag, model.decode(zq)).mean()
        loss = a.commit_weight * commit + a.recon_weight * (1.0 - recon_cos)
        self.check_finite(loss)
        self.log_train({"loss": loss.detach(), "commit": commit.detach(), "recon_cos": recon_cos.detach(),
                        "usage_perplexity": cb.usage_perplexity()})
        return loss * self.share(x.shape[0], a.batch_size)

    # -- validation: clean clips, then labelled ones (index >= len(valid)) ----------------

    def validation_step(self, i: int, batch_idx: int) -> None:
        model, n = self.model, len(self.valid)
        if not 0 <= i < n + len(self.labelled):
            return
        if i < n:
            mag, _ = model.spectrogram([self.valid[i].to(self.device)])
            z = model.encode(mag)
            zq, codes, _ = model.quantize(z)
            counts = torch.bincount(codes.flatten().cpu(), minlength=model.codebook.size).double()
            self._rows.append([i, float(frame_cosine(z, zq)), float(frame_cosine(mag, model.decode(zq))), *counts])
        else:
            score = float(model([self.labelled[i - n].to(self.device)])[0])
            self._rows.append([i, score, 0.0] + [0.0] * model.codebook.size)

    def on_validation_epoch_end(self) -> None:
        size, n = self.model.codebook.size, len(self.valid)
        rows = torch.tensor(self._rows, dtype=torch.float64).reshape(-1, 3 + size)
        rows = self.gather(rows.to(self.device)).cpu()
        rows = rows[rows[:, 0].argsort()]
        clean, noisy = rows[rows[:, 0] < n], rows[rows[:, 0] >= n]
        res: dict[str, Any] = {"usage_perplexity": self.model.codebook.usage_perplexity()}
        if len(clean):
            counts = clean[:, 3:].sum(0)
            res.update(val_vqscore=float(clean[:, 1].mean()), val_recon_cos=float(clean[:, 2].mean()),
                       val_perplexity=_perplexity(counts), val_codes_used=int((counts > 0).sum()))
        if len(noisy):
            scores = noisy[:, 1]
            res.update(val_pearson=pearson(scores, self.labels), val_spearman=spearman(scores, self.labels),
                       val_n=len(self.labels))
        self.log_eval(res)
        if self.labelled and res["val_pearson"] == res["val_pearson"] and res["val_pearson"] > self.best:
            self.best = float(res["val_pearson"])
            if self.trainer.is_global_zero:
                self.model.save(Path(self.args.out) / "vqscore.pt",
                                meta={"step": self.global_step, "val_pearson": self.best,
                                      "val_spearman": res["val_spearman"]})
        self.report(res)


def _train_options(a: argparse.Namespace) -> dict[str, Any]:
    return {"decay": a.decay, "kmeans_iters": a.kmeans_iters, "dead_code_threshold": a.dead_code_threshold}


def _model(a: argparse.Namespace, state: dict[str, Any]) -> tuple[VQScoreModel, torch.Tensor]:
    """The model to train, and the RNG state after building it from ``--seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(a.seed)
        return _build(a, state), torch.get_rng_state()


def _build(a: argparse.Namespace, state: dict[str, Any]) -> VQScoreModel:
    """As in the run being resumed (its weights come with the checkpoint), from
    ``--init``, or fresh."""
    if state:
        for key, value in _train_options(a).items():
            if state["config"].get(key) != value:
                raise TrainError(f"--{key.replace('_', '-')} was {state['config'].get(key)!r} in the run being "
                                 f"resumed and is {value!r} now; resume with the same value.")
        return VQScoreModel(**state["config"])
    if a.init:
        if a.init in hub.CARDS:
            return VQScoreModel.from_pretrained(card=a.init, **_train_options(a))
        return VQScoreModel.from_pretrained(checkpoint=a.init, **_train_options(a))
    return VQScoreModel(codebook_size=a.codebook_size, codebook_dim=a.codebook_dim, channels=a.channels,
                        kmeans_init=True, **_train_options(a))


def _check(a: argparse.Namespace) -> None:
    for name in ("steps", "batch_size", "valid_max_files", "kmeans_iters", "codebook_size", "codebook_dim"):
        if getattr(a, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}.")
    if a.crop_seconds * SAMPLE_RATE <= 512:
        raise TrainError(f"--crop-seconds {a.crop_seconds} is too short (at least 0.04 s).")
    if not 0 < a.gain_min <= a.gain_max:
        raise TrainError(f"need 0 < --gain-min <= --gain-max, got {a.gain_min} and {a.gain_max}.")
    if not 0.0 <= a.decay < 1.0:
        raise TrainError(f"--decay must be in [0, 1), got {a.decay}.")


def _fit(a: argparse.Namespace) -> int:
    _check(a)
    fixed = FIXED_ON_RESUME + (["init"] if a.init else ["codebook_size", "codebook_dim", "channels"])
    run = Run(a, "vqscore", fixed, OUTPUTS)
    entries = audio.find_audio(a.clean)
    if not entries:
        raise TrainError(f"no clean audio found in {' '.join(a.clean)}.")
    if run.state and run.state.get("n_files") != len(entries):
        print(f"torchmos train vqscore: warning: the run started with {run.state.get('n_files')} clean files, "
              f"now {len(entries)}; batches will differ from an uninterrupted run.", file=sys.stderr)
    valid = audio.find_audio(a.valid) if a.valid else entries[: min(16, len(entries))]
    clips = [c for c in (load16k(e)[: int(VALID_MAX_SECONDS * SAMPLE_RATE)] for e in valid[: a.valid_max_files])
             if c.shape[0] > 512]
    labelled, labels = [], []
    for entry, score in read_labels(a.valid_labels) if a.valid_labels else []:
        clip = load16k(entry)
        if clip.shape[0] <= 512:
            raise TrainError(f"{entry.source}: too short to score ({clip.shape[0]} samples at 16 kHz).")
        labelled.append(clip)
        labels.append(score)
    module = _VQScore(a, *_model(a, run.state), clips, labelled, labels, len(entries))
    plan = Plan(len(entries), a.batch_size, a.seed, a.gain_min, a.gain_max)
    data = StepData(StepBatches(plan, Crops(entries, int(round(a.crop_seconds * SAMPLE_RATE)))), a.steps,
                    a.val_every, a.workers, n_valid=max(1, len(clips) + len(labelled)))
    trainer = run.trainer(max_steps=a.steps, save_every_steps=a.save_every, clip=a.grad_clip)
    run.fit(trainer, module, data)
    save_final(trainer, module.model, run.out, "vqscore", "vqscore.pt", "vqscore_last.pt" if labelled else None,
               selected=bool(labelled))
    return 0
