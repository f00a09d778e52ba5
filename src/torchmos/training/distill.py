"""Distil a small MOS predictor from a big one: ``torchmos train distill``.

    torchmos train distill --audio speech/ --out runs/small --width 0.5 --depth 0.5
    torchmos train distill --audio speech/ --out runs/pruned --student pruned-scoreq --keep-layers 6

The method of DistillMOS (Stahl & Gamper, "Distillation and Pruning for Scalable
Self-Supervised Representation-Based Speech Quality Assessment", ICASSP 2025): a large
predictor (the *teacher*) scores a large pool of unlabelled, degraded speech, and a much
smaller network (the *student*) learns to reproduce its scores; the paper's alternative,
pruning the teacher, is ``--student pruned-scoreq``.

* Teacher (``--teacher``): any no-reference torchmos predictor; ``auto`` (default) is
  SCOREQ NR natural when its weights are here, else DistillMOS. ``--teacher-checkpoint``
  gives its weight file. Frozen; its scores are cached on disk (``--cache``, default
  ``<out>/teacher_cache``), so it scores each (clip, degradation) once, across epochs,
  resumed runs and other runs with the same teacher and data.
* Student ``distillmos`` (default): the DistillMOS architecture (CNN on the compressed
  complex spectrum, transformer, attention pooling) scaled by ``--width`` (CNN channels
  and d_model) and ``--depth`` (transformer layers; ``--layers N`` sets them); width 1,
  depth 1 is the official size. Random initialisation, or ``--student-init`` (a
  DistillMOS file of that size). Saved as ``student.pt`` in the official checkpoint
  layout with its size: ``DistillMOS(checkpoint=...)``, ``torchmos.functional.distillmos``
  and ``torchmos score --model distillmos --checkpoint ...`` use it directly.
* Student ``pruned-scoreq``: a SCOREQ NR wav2vec 2.0 predictor (``--student-init``, or
  the teacher's weights when it is SCOREQ) with only its first ``--keep-layers`` layers
  and its ``--keep-heads`` strongest heads per layer, fine-tuned on the teacher's scores
  (conv feature encoder frozen unless ``--train-cnn``). Saved as ``student.pt`` in
  SCOREQ's official layout (``torchmos score --model scoreq-nr-natural --checkpoint ...``).
* Data (``--audio``): folders (recursive), files, ``.txt`` lists or Kaldi ``wav.scp`` of
  unlabelled speech, any rate (resampled to 16 kHz), mixed to mono. Each file gives
  ``--variants`` fixed degraded versions (:mod:`torchmos.training.distill_data`): a crop
  of at most ``--crop-seconds`` and one degradation of ``--degradations`` (noise at a
  random SNR, clipping, low-pass, dropouts, reverberation by a generated room response,
  mu-law and uniform quantisation) at a random severity, or none (``--clean-fraction``).
  Validation: ``--valid`` files, or ``--valid-files`` of the training list held out.
* Loss: L2 (default) or L1 (``--loss``) between student and teacher scores. AdamW,
  linear warm-up over ``--warmup`` of the steps, then cosine decay to 10 % at ``--steps``
  (``--schedule``); gradient norm clipped at ``--grad-clip`` (1).
* BatchNorm: the DistillMOS student trains with batch statistics; the student that is
  validated and saved gets, in place of the lagging running averages, the statistics of
  its current weights over ``--bn-clips`` training variants (BN recalibration, on a copy:
  the training state is untouched, so a resumed run continues exactly).
* Every ``--val-every`` steps: Pearson, Spearman and MAE between student and teacher on
  the validation variants.

Outputs in ``--out``: ``student.pt``, ``checkpoints/last.ckpt`` (``--resume``),
``metrics.csv``, ``args.json``. Batches and degradations are a pure function of
``--seed`` and the step; a LightningModule run by a Lightning Trainer (``--devices``,
``--strategy``, ``--precision``: :mod:`torchmos.training.trainer`).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import torch
from torch import nn

from .. import audio, synth
from . import TrainError, add_run_arguments, pearson, spearman
from .data import durations, seed_of, seeded
from .distill_data import Items, StepBatches, TeacherCache, make_items
from .distill_students import DistillMOSStudent, ScoreqStudent, load_teacher, scoreq_init
from .trainer import RecipeModule, Run, StepData

__all__ = ["TrainError", "add_arguments", "run"]

FIXED_ON_RESUME = ["audio", "valid", "valid_files", "variants", "degradations", "clean_fraction", "crop_seconds",
                   "teacher", "teacher_checkpoint", "student", "width", "depth", "layers", "heads", "student_init",
                   "keep_layers", "keep_heads", "batch_size", "seed", "schedule", "warmup"]
OUTPUTS = ["student.pt"]
MAX_CROP = 7.68


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the recipe's options to ``parser`` (``torchmos train distill`` mounts it)."""
    d = parser.add_argument_group("data")
    d.add_argument("--audio", nargs="+", required=True, metavar="PATH",
                   help="unlabelled speech: folders (recursive), audio files, .txt lists or Kaldi wav.scp")
    d.add_argument("--out", required=True, metavar="DIR", help="output folder (student.pt, checkpoints, metrics.csv)")
    d.add_argument("--valid", nargs="+", default=None, metavar="PATH",
                   help="validation speech (default: --valid-files of the training files, held out)")
    d.add_argument("--valid-files", type=int, default=None, metavar="N",
                   help="files held out for validation without --valid (default: 10%%, 1 to 32)")
    d.add_argument("--variants", type=int, default=8, help="degraded versions of each training file (8)")
    d.add_argument("--valid-variants", type=int, default=4, help="degraded versions of each validation file (4)")
    d.add_argument("--degradations", nargs="+", default=list(synth.KINDS), choices=list(synth.KINDS),
                   metavar="KIND", help=f"degradations drawn from ({' '.join(synth.KINDS)}; default all)")
    d.add_argument("--clean-fraction", type=float, default=0.1, help="share of undegraded variants (0.1)")
    d.add_argument("--crop-seconds", type=float, default=MAX_CROP, help="longest crop of a file (7.68 s)")

    t = parser.add_argument_group("teacher")
    t.add_argument("--teacher", default="auto", metavar="MODEL",
                   help="a no-reference model name, or a weight file; auto (default): scoreq-nr-natural when "
                   "its weights are here, else distillmos")
    t.add_argument("--teacher-checkpoint", default=None, metavar="FILE", help="the teacher's weight file")
    t.add_argument("--cache", default=None, metavar="DIR", help="teacher-score cache (default <out>/teacher_cache)")
    t.add_argument("--cache-max-entries", type=int, default=1_000_000, help="scores kept in the cache (1000000)")

    s = parser.add_argument_group("student")
    s.add_argument("--student", default="distillmos", choices=["distillmos", "pruned-scoreq"],
                   help="distillmos (default): the DistillMOS architecture at --width/--depth; pruned-scoreq: "
                   "a SCOREQ NR model pruned to --keep-layers/--keep-heads")
    s.add_argument("--width", type=float, default=1.0, help="factor on CNN channels and d_model (1 = official)")
    s.add_argument("--depth", type=float, default=1.0, help="factor on the 7 transformer layers (1 = official)")
    s.add_argument("--layers", type=int, default=None, help="transformer layers (overrides --depth)")
    s.add_argument("--heads", type=int, default=8, help="attention heads of the DistillMOS student (8)")
    s.add_argument("--student-init", default=None, metavar="FILE",
                   help="initial student weights (DistillMOS of that size, or SCOREQ NR for pruned-scoreq)")
    s.add_argument("--keep-layers", type=int, default=None, metavar="K", help="pruned-scoreq: keep the first K layers")
    s.add_argument("--keep-heads", type=int, default=None, metavar="H",
                   help="pruned-scoreq: keep the H strongest attention heads of each layer")
    s.add_argument("--train-cnn", action="store_true", help="pruned-scoreq: also train the conv feature encoder")

    o = parser.add_argument_group("optimisation")
    o.add_argument("--steps", "--max-steps", dest="steps", type=int, default=20000, help="training steps (20000)")
    o.add_argument("--batch-size", type=int, default=16, help="clips per step (16)")
    o.add_argument("--lr", type=float, default=None,
                   help="AdamW learning rate (default 5e-4 for distillmos, 5e-5 for pruned-scoreq)")
    o.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay (0)")
    o.add_argument("--schedule", default="cosine", choices=["cosine", "constant"],
                   help="learning rate after the warm-up: cosine decay to 10%% over --steps (default) or constant")
    o.add_argument("--warmup", type=float, default=0.05, help="linear warm-up, as a share of --steps (0.05)")
    o.add_argument("--loss", default="l2", choices=["l2", "l1"], help="distance to the teacher's score (l2)")
    o.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm (default 1; 0: off)")
    o.add_argument("--bn-clips", type=int, default=64,
                   help="training variants whose statistics the saved student's BatchNorms get (64; 0: keep the "
                   "running averages)")
    add_run_arguments(parser, seed_help="degradations, batches and the student's initialisation", log_every=50,
                      val_every=1000, save_every=1000)


def run(args: argparse.Namespace) -> int:
    """Distil (or resume) as ``args`` say; returns 0. Raises :class:`TrainError`,
    :class:`torchmos.audio.AudioError` or ``FileNotFoundError`` on bad input."""
    return _fit(args)


class _Distill(RecipeModule):
    recipe = "distill"

    def __init__(self, args: argparse.Namespace, student: nn.Module, teacher: Any, cache: TeacherCache,
                 train_items: Items, valid_items: Items) -> None:
        super().__init__(args)
        self.student = student
        self._teacher = (teacher,)  # frozen, and not part of the checkpoints
        self.cache, self.train_items, self.valid_items = cache, train_items, valid_items
        self._bn_clips: list[torch.Tensor] | None = None
        self._eval: tuple[int, nn.Module] | None = None

    def bn_clips(self) -> list[torch.Tensor]:
        """The training variants whose statistics the saved and validated student's
        BatchNorms get (``--bn-clips`` of them, a fixed seeded choice)."""
        if self._bn_clips is None:
            n = min(self.args.bn_clips, len(self.train_items))
            g = torch.Generator().manual_seed(seed_of(self.args.seed, "bn"))
            idx = torch.randperm(len(self.train_items), generator=g)[:n].tolist()
            self._bn_clips = [self.train_items.load(i) for i in idx]
        return self._bn_clips

    def eval_student(self) -> nn.Module:
        """The student as it is saved: an eval-mode copy with recalibrated BatchNorm
        statistics (DistillMOS), made once per step; the training state is untouched."""
        if self._eval is None or self._eval[0] != self.global_step:
            clips = self.bn_clips() if self.student.kind == "distillmos" else []
            self._eval = (self.global_step, self.student.for_inference(clips, self.args.batch_size))
        return self._eval[1]

    def train(self, mode: bool = True) -> _Distill:
        super().train(mode)
        self.student.set_mode(mode)
        return self

    def on_fit_start(self) -> None:
        self._teacher[0].to(self.device)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.args.lr, weight_decay=self.args.weight_decay)
        steps, warm = self.args.steps, max(1, int(self.args.warmup * self.args.steps))

        def factor(step: int) -> float:  # linear warm-up, then cosine decay to 10 % (or constant)
            if step < warm:
                return (step + 1) / warm
            if self.args.schedule == "constant":
                return 1.0
            return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def teacher_scores(self, items: Items, idx: list[int], clips: list[torch.Tensor] | None = None) -> torch.Tensor:
        keys = [items.cache_key(i) for i in idx]

        def clips_of(pos: list[int]) -> list[torch.Tensor]:
            return [clips[p] for p in pos] if clips is not None else [items.load(idx[p]) for p in pos]

        return self.cache.scores_of(keys, clips_of, self._teacher[0])

    def training_step(self, batch: tuple[list[torch.Tensor], list[int]], batch_idx: int) -> torch.Tensor:
        clips, idx = batch
        target = self.teacher_scores(self.train_items, idx, clips).to(self.device, torch.float32)
        pred = self.student(clips).float()
        loss = (nn.functional.mse_loss if self.args.loss == "l2" else nn.functional.l1_loss)(pred, target)
        self.check_finite(loss)
        self.log_train({"loss": loss.detach()})
        return loss * self.share(len(clips), self.args.batch_size)

    def validation_step(self, i: int, batch_idx: int) -> None:
        if not 0 <= i < len(self.valid_items):
            return
        clip = self.valid_items.load(i)
        t = float(self.teacher_scores(self.valid_items, [i], [clip])[0])
        with torch.no_grad():
            s = float(self.eval_student()([clip])[0])
        self._rows.append([float(i), s, t])

    def on_validation_epoch_end(self) -> None:
        rows = self.gather(torch.tensor(self._rows, dtype=torch.float64, device=self.device).reshape(-1, 3)).cpu()
        s, t = rows[:, 1], rows[:, 2]
        res = {"val_pearson": pearson(s, t), "val_spearman": spearman(s, t),
               "val_mae": float((s - t).abs().mean()) if len(rows) else float("nan"),
               "teacher_calls": float(self.cache.misses)}
        self.log_eval(res)
        self.report(res)

    def save_student(self) -> None:
        meta = {"recipe": "torchmos.training.distill", "step": self.global_step,
                "teacher": self._teacher[0].identity}
        self.eval_student().save(f"{self.args.out}/student.pt", meta)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.trainer.is_global_zero:  # the student file follows the checkpoints
            self.save_student()


def _check(a: argparse.Namespace) -> None:
    if not 0.0 <= a.warmup < 1.0:
        raise TrainError(f"--warmup {a.warmup}: use a share of the steps in [0, 1).")
    if a.bn_clips < 0:
        raise TrainError(f"--bn-clips must be at least 0, got {a.bn_clips}.")
    for name in ("steps", "batch_size", "variants", "valid_variants", "log_every", "cache_max_entries", "heads"):
        if getattr(a, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}.")
    if not 0.5 <= a.crop_seconds <= MAX_CROP:
        raise TrainError(f"--crop-seconds {a.crop_seconds}: use 0.5 to {MAX_CROP} s (DistillMOS' crop).")
    if not 0.0 <= a.clean_fraction <= 1.0:
        raise TrainError(f"--clean-fraction {a.clean_fraction}: use a share in [0, 1].")
    if a.student == "distillmos" and (a.keep_layers is not None or a.keep_heads is not None or a.train_cnn):
        raise TrainError("--keep-layers, --keep-heads and --train-cnn are options of --student pruned-scoreq.")
    if a.student == "distillmos" and a.batch_size < 2 * (a.devices if isinstance(a.devices, int) else 1):
        raise TrainError("--batch-size: the DistillMOS student's BatchNorm needs at least 2 clips per device.")
    if a.lr is None:
        a.lr = 5e-4 if a.student == "distillmos" else 5e-5


def _files(a: argparse.Namespace) -> tuple[list[audio.AudioEntry], list[audio.AudioEntry]]:
    entries = audio.find_audio(a.audio)
    if not entries:
        raise TrainError(f"--audio {' '.join(a.audio)}: no audio files found.")
    if a.valid:
        valid = audio.find_audio(a.valid)
        if not valid:
            raise TrainError(f"--valid {' '.join(a.valid)}: no audio files found.")
        return entries, valid
    n = a.valid_files if a.valid_files is not None else min(32, max(1, len(entries) // 10))
    if not 0 <= n < len(entries):
        raise TrainError(f"--valid-files {n}: hold out fewer than the {len(entries)} training files.")
    return entries[: len(entries) - n], entries[len(entries) - n:]


def _items(a: argparse.Namespace, entries: list[audio.AudioEntry], variants: int, stream: str) -> Items:
    lengths = [d for d, _ in durations(entries)]
    short = [e.label for e, d in zip(entries, lengths) if d < 0.5]
    if short:
        raise TrainError(f"{short[0]}: shorter than 0.5 s; remove it (and {len(short) - 1} more).")
    items = Items(entries, [])
    items.items = make_items(items.ids, lengths, variants, a.seed, a.crop_seconds, a.degradations,
                             a.clean_fraction, stream)
    return items


def _fit(a: argparse.Namespace) -> int:
    _check(a)
    run = Run(a, "distill", FIXED_ON_RESUME, OUTPUTS)
    train_files, valid_files = _files(a)
    train_items = _items(a, train_files, a.variants, "train")
    valid_items = _items(a, valid_files, a.valid_variants, "valid") if valid_files else Items([], [])
    teacher = load_teacher(a.teacher, a.teacher_checkpoint)
    cache = TeacherCache(a.cache or run.out / "teacher_cache", teacher.identity, a.cache_max_entries)
    with seeded(a.seed, "init"):
        if a.student == "distillmos":
            student: nn.Module = DistillMOSStudent.create(a.width, a.depth, a.layers, a.heads, a.student_init)
        else:
            student = ScoreqStudent.create(scoreq_init(a.student_init, teacher), a.keep_layers, a.keep_heads,
                                           a.train_cnn)
    module = _Distill(a, student, teacher, cache, train_items, valid_items)
    data = StepData(StepBatches(train_items, a.batch_size, a.seed), a.steps, a.val_every, a.workers,
                    n_valid=len(valid_items))
    trainer = run.trainer(max_steps=a.steps, save_every_steps=a.save_every, clip=a.grad_clip)
    run.fit(trainer, module, data)
    if trainer.is_global_zero:
        module.save_student()
    print(f"torchmos train distill: step {trainer.global_step}; student in {run.out / 'student.pt'} "
          f"(teacher {teacher.identity.split(':')[0]}: {cache.misses} clips scored, {len(cache)} cached)",
          file=sys.stderr)
    return 0
