"""Distil a sampling-frequency-independent SSL student: ``torchmos train sfi-distill``.

    torchmos train sfi-distill --teacher path/to/wav2vec2_dir --audio wavs/ --out runs/sfi

The first stage of MSR-UTMOS (Nishikawa et al. 2025; SPECS §4). The teacher is a frozen
16 kHz SSL model (a local ``transformers`` directory: wav2vec 2.0, HuBERT or WavLM, e.g. a
downloaded ``facebook/wav2vec2-base``; ``--teacher tiny`` builds a small random one for
smoke tests). The student is the same model with its first convolution replaced by an
SFI convolution (:class:`torchmos.models.sfi.SFIConv1d`): it starts from the teacher's
weights everywhere else, and its analog filters are fitted to the teacher's first-layer
kernels (``--init fit``; ``--init erb`` keeps the ERB-spaced initialisation).

* Data: unlabelled speech from folders (recursive), files, ``.txt`` lists or Kaldi
  ``wav.scp`` (:func:`torchmos.audio.find_audio`), any rate, mixed to mono; ideally
  recorded at 48 kHz, so that the student hears the upper band.
* Each step draws ``--batch-size`` files (epochs of a seeded permutation), one rate ``Fs``
  from ``--rates`` (8, 16, 24 and 48 kHz), and one crop length: ``--crop-seconds`` (20 s,
  as the authors) or the shortest file of the batch if shorter; every file gives a random
  crop of that length. The crop is resampled to ``Fs`` for the student and to 16 kHz for
  the teacher (torchaudio's windowed-sinc resampler); nothing is zero-padded.
* Loss: MSE between the stacked hidden states of all layers (CNN output projection + every
  transformer layer) of student and teacher, trimmed to the common number of frames.
  SpecAugment masking is off during distillation (the teacher sees unmasked input);
  dropout follows the backbone's config.
* Optimiser: RAdam, lr 1e-4, decoupled weight decay 0.01 (the authors'), all student
  parameters.
* Every ``--val-every`` steps (and at the end), the loss on validation clips (``--valid``,
  default: up to 8 training files; first ``--crop-seconds`` of each) at every rate.

Outputs in ``--out``: ``student.pt`` (the student in torchmos' layout, for ``torchmos
train msr-utmos --ssl``), ``checkpoints/last.ckpt`` (Lightning's checkpoint, for
``--resume``), ``metrics.csv`` and ``args.json``. The batches, and dropout, are a pure
function of ``--seed`` and the step, so a resumed run sees the batches an uninterrupted
one would. A LightningModule run by a Lightning Trainer (``--devices``, ``--strategy``,
``--precision``: :mod:`torchmos.training.trainer`); the teacher is not part of the
checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from .. import audio
from ..models.msr_utmos import SFISSLModel, load_teacher
from . import TrainError, add_run_arguments
from .data import EpochPlan, crop, durations, rank_part, seed_of, seeded
from .trainer import RecipeModule, Run, StepData

__all__ = ["TrainError", "add_arguments", "hidden_mse", "run", "seed_of"]

TEACHER_RATE = 16000
FIXED_ON_RESUME = ["teacher", "teacher_arch", "audio", "batch_size", "crop_seconds", "rates", "seed",
                   "filter", "design", "n_freq", "init"]


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the recipe's options to ``parser`` (``torchmos train sfi-distill`` mounts it)."""
    d = parser.add_argument_group("data")
    d.add_argument("--teacher", required=True, metavar="DIR",
                   help="the frozen 16 kHz SSL model: a local transformers directory (wav2vec2, hubert or "
                   "wavlm, e.g. a downloaded facebook/wav2vec2-base), or 'tiny' (random, for smoke tests)")
    d.add_argument("--teacher-arch", default="wav2vec2", choices=["wav2vec2", "hubert", "wavlm"],
                   help="architecture of --teacher tiny (default wav2vec2)")
    d.add_argument("--audio", nargs="+", required=True, metavar="PATH",
                   help="unlabelled speech: folders (recursive), audio files, .txt lists or Kaldi wav.scp")
    d.add_argument("--out", required=True, metavar="DIR", help="output folder (student.pt, last.pt, metrics.csv)")
    d.add_argument("--valid", nargs="+", default=None, metavar="PATH",
                   help="validation speech (default: up to 8 of the training files)")
    d.add_argument("--valid-max-files", type=int, default=8, metavar="N", help="at most N validation files (8)")

    m = parser.add_argument_group("student")
    m.add_argument("--filter", default="naf", choices=["naf", "gauss"],
                   help="latent analog filters: neural analog filter (default) or modulated Gaussian")
    m.add_argument("--design", default="freq", choices=["freq", "time"],
                   help="kernel design: least squares in frequency (default) or impulse-response sampling")
    m.add_argument("--n-freq", type=int, default=640, help="frequencies sampled by the design (640)")
    m.add_argument("--naf-rff", type=int, default=128, help="random Fourier features of the neural filter (128)")
    m.add_argument("--naf-hidden", type=int, nargs="+", default=[224, 224], help="its hidden widths (224 224)")
    m.add_argument("--init", default="fit", choices=["fit", "erb"],
                   help="fit the analog filters to the teacher's first-layer kernels (default) or keep "
                   "the ERB-spaced initialisation")
    m.add_argument("--fit-steps", type=int, default=300, help="Adam steps of that fit (300)")

    o = parser.add_argument_group("optimisation")
    o.add_argument("--steps", "--max-steps", dest="steps", type=int, default=200_000,
                   help="training steps (default 200000)")
    o.add_argument("--batch-size", type=int, default=8, help="crops per step (default 8, as the authors)")
    o.add_argument("--crop-seconds", type=float, default=20.0, help="longest crop (default 20 s)")
    o.add_argument("--rates", type=int, nargs="+", default=[8000, 16000, 24000, 48000],
                   help="student sample rates, one drawn per step (default 8000 16000 24000 48000)")
    o.add_argument("--lr", type=float, default=1e-4, help="RAdam learning rate (1e-4)")
    o.add_argument("--weight-decay", type=float, default=0.01, help="decoupled weight decay (0.01)")
    o.add_argument("--grad-clip", type=float, default=0.0, help="clip the gradient norm (default 0: off)")

    add_run_arguments(parser, seed_help="batches, rates, crops and dropout", log_every=100, val_every=5000, save_every=5000)


def run(args: argparse.Namespace) -> int:
    """Distil (or resume) as ``args`` say; returns 0. Raises :class:`TrainError`,
    :class:`torchmos.audio.AudioError` or ``FileNotFoundError`` on bad input."""
    return _fit(args)


# ----------------------------------------------------------------------------- data


class _Batches(Dataset):
    """step -> (student crops (b, T) at Fs, teacher crops (b, T16) at 16 kHz, Fs): this
    process's part of the step's batch (``rank`` and ``world`` set by the data module)."""

    rank, world = 0, 1

    def __init__(self, entries: Sequence[audio.AudioEntry], lengths: Sequence[tuple[float, int]],
                 batch: int, seconds: float, rates: Sequence[int], seed: int) -> None:
        self.entries, self.lengths = list(entries), list(lengths)
        self.batch, self.seconds, self.rates, self.seed = batch, seconds, list(rates), seed
        self.plan = EpochPlan(len(entries), seed)

    def __len__(self) -> int:  # pragma: no cover - sampled by step
        return 1 << 62

    def describe(self, step: int) -> tuple[list[int], int, float, list[float]]:
        files = [self.plan.item(step * self.batch + i) for i in range(self.batch)]
        g = torch.Generator().manual_seed(seed_of(self.seed, "step", step))
        fs = self.rates[int(torch.randint(len(self.rates), (1,), generator=g))]
        dur = min([self.seconds] + [self.lengths[i][0] for i in files])
        where = torch.rand(self.batch, generator=g, dtype=torch.float64).tolist()
        starts = [w * max(0.0, self.lengths[i][0] - dur) for w, i in zip(where, files)]
        return files, fs, dur, starts

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        files, fs, dur, starts = self.describe(step)
        hi, lo = [], []
        for k in rank_part(len(files), self.rank, self.world):
            x, sr = crop(self.entries[files[k]], starts[k], dur)
            hi.append(audio.resample(x, sr, fs))
            lo.append(audio.resample(x, sr, TEACHER_RATE))
        n_hi, n_lo = min(c.shape[0] for c in hi), min(c.shape[0] for c in lo)
        return torch.stack([c[:n_hi] for c in hi]), torch.stack([c[:n_lo] for c in lo]), fs


def hidden_mse(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor]) -> torch.Tensor:
    """MSE between stacked hidden states, trimmed to the common number of frames."""
    n = min(student_states[0].shape[1], teacher_states[0].shape[1])
    s = torch.stack([h[:, :n] for h in student_states])
    t = torch.stack([h[:, :n] for h in teacher_states])
    return torch.nn.functional.mse_loss(s, t)


# ----------------------------------------------------------------------------- the recipe


class _Distill(RecipeModule):
    recipe = "sfi-distill"

    def __init__(self, args: argparse.Namespace, student: SFISSLModel, teacher: torch.nn.Module,
                 valid: list[tuple[torch.Tensor, int]]) -> None:
        super().__init__(args)
        self.student, self.valid = student, valid
        self._teacher = (teacher,)  # frozen, and not part of the checkpoints
        self.spec_augment = getattr(student.backbone.config, "apply_spec_augment", True)
        student.backbone.config.apply_spec_augment = False  # the teacher sees unmasked input
        if getattr(student.backbone, "masked_spec_embed", None) is not None:  # SpecAugment's mask: unused here
            student.backbone.masked_spec_embed.requires_grad_(False)

    @property
    def teacher(self) -> torch.nn.Module:
        return self._teacher[0]

    def run_state(self) -> dict[str, Any]:
        config = self.student.config  # as the student file has it (SpecAugment as the teacher's)
        config["transformers_config"] = {**config["transformers_config"], "apply_spec_augment": self.spec_augment}
        return {"config": config}

    def on_fit_start(self) -> None:
        self.teacher.to(self.device).eval()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.student.parameters() if p.requires_grad]
        return torch.optim.RAdam(params, lr=self.args.lr, weight_decay=self.args.weight_decay,
                                 decoupled_weight_decay=True)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, int], batch_idx: int) -> torch.Tensor:
        x_hi, x_lo, fs = batch
        with torch.no_grad():
            target = self.teacher(x_lo, output_hidden_states=True).hidden_states
        pred = self.student(x_hi, int(fs), output_hidden_states=True).hidden_states
        loss = hidden_mse(pred, target)
        self.check_finite(loss)
        self.log_train({"loss": loss.detach(), "rate": float(fs)})
        return loss * self.share(x_hi.shape[0], self.args.batch_size)

    def validation_step(self, i: int, batch_idx: int) -> None:
        if not 0 <= i < len(self.valid):
            return
        x, sr = self.valid[i]
        t = self.teacher(audio.resample(x, sr, TEACHER_RATE)[None].to(self.device),
                         output_hidden_states=True).hidden_states
        row = [float(i)]
        for fs in self.args.rates:
            s = self.student(audio.resample(x, sr, fs)[None].to(self.device), fs,
                             output_hidden_states=True).hidden_states
            row.append(float(hidden_mse(s, t)))
        self._rows.append(row)

    def on_validation_epoch_end(self) -> None:
        rates = self.args.rates
        rows = self.gather(torch.tensor(self._rows, dtype=torch.float64, device=self.device)
                           .reshape(-1, 1 + len(rates))).cpu()
        res = {f"val_loss_{fs}": float(rows[:, 1 + k].mean()) for k, fs in enumerate(rates)}
        res["val_loss"] = sum(res.values()) / len(rates)
        self.log_eval(res)
        self.report(res)

    def save_student(self, path: Any) -> None:
        self.student.backbone.config.apply_spec_augment = self.spec_augment
        self.student.save(path, meta={"step": self.global_step, "recipe": "torchmos.training.sfi_distill"})
        self.student.backbone.config.apply_spec_augment = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.trainer.is_global_zero:  # the student file follows the checkpoints
            self.save_student(f"{self.args.out}/student.pt")


def _student(a: argparse.Namespace, teacher: torch.nn.Module) -> SFISSLModel:
    sfi: dict[str, Any] = {"filter": a.filter, "design": a.design, "n_freq": a.n_freq}
    if a.filter == "naf":
        sfi.update(n_rff=a.naf_rff, hidden=list(a.naf_hidden))
    with seeded(a.seed, "init"):
        return SFISSLModel.from_teacher(teacher, sfi=sfi, fit_steps=a.fit_steps if a.init == "fit" else 0)


def _check(a: argparse.Namespace) -> None:
    for name in ("steps", "batch_size", "valid_max_files", "n_freq", "log_every"):
        if getattr(a, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}.")
    if a.crop_seconds < 0.1:
        raise TrainError(f"--crop-seconds {a.crop_seconds} is too short (at least 0.1 s).")
    for fs in a.rates:
        if fs < 4000:
            raise TrainError(f"--rates: {fs} Hz is below 4 kHz, too low for the SFI layer.")


def _fit(a: argparse.Namespace) -> int:
    _check(a)
    run = Run(a, "sfi-distill", FIXED_ON_RESUME, ["student.pt"])
    entries = audio.find_audio(a.audio)
    if not entries:
        raise TrainError(f"--audio {' '.join(a.audio)}: no audio files found.")
    lengths = durations(entries)
    short = [e.source for e, (d, _) in zip(entries, lengths) if d < 0.1]
    if short:
        raise TrainError(f"{short[0]}: shorter than 0.1 s; remove it (and {len(short) - 1} more).")
    valid = []
    for e in (audio.find_audio(a.valid) if a.valid else entries[:8])[: a.valid_max_files]:
        x, sr = e.read()
        valid.append((x[: int(a.crop_seconds * sr)], sr))
    teacher = load_teacher(a.teacher, arch=a.teacher_arch).eval()
    teacher.requires_grad_(False)
    student = SFISSLModel.from_config(run.state["config"]) if run.state else _student(a, teacher)
    module = _Distill(a, student, teacher, valid)
    data = StepData(_Batches(entries, lengths, a.batch_size, a.crop_seconds, a.rates, a.seed), a.steps,
                    a.val_every, a.workers, n_valid=len(valid))
    trainer = run.trainer(max_steps=a.steps, save_every_steps=a.save_every, clip=a.grad_clip)
    run.fit(trainer, module, data)
    print(f"torchmos train sfi-distill: step {trainer.global_step}; student in {run.out / 'student.pt'}",
          file=sys.stderr)
    return 0
