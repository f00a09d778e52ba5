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
train msr-utmos --ssl``), ``last.pt`` (the same plus optimiser and RNG state, for
``--resume``), ``metrics.csv`` and ``args.json``. The batches are a pure function of
``--seed`` and the step, so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .. import audio
from ..hub import save_atomic
from ..models.msr_utmos import SFISSLModel, load_teacher
from . import (
    CsvLog,
    TrainError,
    add_run_arguments,
    pick_device,
    plain_args,
    start_run,
)

__all__ = ["TrainError", "add_arguments", "run"]

TEACHER_RATE = 16000
STATE_VERSION = 1
FIXED_ON_RESUME = ["teacher", "teacher_arch", "audio", "batch_size", "crop_seconds", "rates", "seed",
                   "filter", "design", "n_freq", "init"]


# ----------------------------------------------------------------------------- shared helpers


def seed_of(*parts: Any) -> int:
    """A 63-bit seed derived from (seed, stream, index...), stable across runs and machines."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()
    return int(h[:15], 16)


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
    if not bool(torch.isfinite(x).all()):
        raise audio.AudioError(f"{entry.source}: the file holds NaN/Inf samples; clean or remove it.")
    return x, sr


class EpochPlan:
    """Files drawn in epochs of seeded permutations; a pure function of (seed, position)."""

    def __init__(self, n: int, seed: int, stream: str = "files") -> None:
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


class _StepSampler(Sampler):
    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


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
    o.add_argument("--steps", type=int, default=200_000, help="training steps (default 200000)")
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
    return _Distill(args).fit()


# ----------------------------------------------------------------------------- data


class _Batches(Dataset):
    """step -> (student crops (B, T) at Fs, teacher crops (B, T16) at 16 kHz, Fs)."""

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
        for i, s in zip(files, starts):
            x, sr = crop(self.entries[i], s, dur)
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


class _Distill:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.device = pick_device(args.device)
        for name in ("steps", "batch_size", "valid_max_files", "n_freq", "log_every"):
            if getattr(args, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
        if args.crop_seconds < 0.1:
            raise TrainError(f"--crop-seconds {args.crop_seconds} is too short (at least 0.1 s).")
        for fs in args.rates:
            if fs < 4000:
                raise TrainError(f"--rates: {fs} Hz is below 4 kHz, too low for the SFI layer.")

    def _student(self, teacher: torch.nn.Module) -> SFISSLModel:
        a = self.args
        sfi: dict[str, Any] = {"filter": a.filter, "design": a.design, "n_freq": a.n_freq}
        if a.filter == "naf":
            sfi.update(n_rff=a.naf_rff, hidden=list(a.naf_hidden))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_of(a.seed, "init"))
            return SFISSLModel.from_teacher(teacher, sfi=sfi, fit_steps=a.fit_steps if a.init == "fit" else 0)

    def _validate(self, student: SFISSLModel, teacher: torch.nn.Module) -> dict[str, float]:
        student.eval()
        row: dict[str, float] = {}
        with torch.no_grad():
            for fs in self.args.rates:
                losses = []
                for x, sr in self.valid:
                    t = teacher(audio.resample(x, sr, TEACHER_RATE)[None].to(self.device),
                                output_hidden_states=True).hidden_states
                    s = student(audio.resample(x, sr, fs)[None].to(self.device), fs,
                                output_hidden_states=True).hidden_states
                    losses.append(float(hidden_mse(s, t)))
                row[f"val_loss_{fs}"] = sum(losses) / len(losses)
        row["val_loss"] = sum(row[f"val_loss_{fs}"] for fs in self.args.rates) / len(self.args.rates)
        student.train()
        return row

    def fit(self) -> int:
        a = self.args
        state = start_run(a, self.out, STATE_VERSION, FIXED_ON_RESUME)
        entries = audio.find_audio(a.audio)
        if not entries:
            raise TrainError(f"--audio {' '.join(a.audio)}: no audio files found.")
        lengths = durations(entries)
        short = [e.source for e, (d, _) in zip(entries, lengths) if d < 0.1]
        if short:
            raise TrainError(f"{short[0]}: shorter than 0.1 s; remove it (and {len(short) - 1} more).")
        valid = audio.find_audio(a.valid) if a.valid else entries[:8]
        self.valid = []
        for e in valid[: a.valid_max_files]:
            x, sr = e.read()
            self.valid.append((x[: int(a.crop_seconds * sr)], sr))

        teacher = load_teacher(a.teacher, arch=a.teacher_arch).to(self.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        if state is None:
            student = self._student(teacher)
        else:
            student = SFISSLModel.from_config(state["config"])
            student.load_state_dict(state["student"])
        student.to(self.device).train()
        spec_augment = getattr(student.backbone.config, "apply_spec_augment", True)
        student.backbone.config.apply_spec_augment = False  # the teacher sees unmasked input
        opt = torch.optim.RAdam(student.parameters(), lr=a.lr, weight_decay=a.weight_decay,
                                decoupled_weight_decay=True)
        start, elapsed0 = 0, 0.0
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            start, elapsed0 = int(state["step"]), float(state["elapsed"])
            torch.set_rng_state(state["rng"])
            if state.get("cuda_rng") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        else:
            torch.manual_seed(seed_of(a.seed, "dropout"))
            (self.out / "args.json").write_text(json.dumps(plain_args(a), indent=2) + "\n")
        columns = ["step", "time_s", "lr", "rate", "loss"] + [f"loss_{fs}" for fs in a.rates] + ["val_loss"] + [
            f"val_loss_{fs}" for fs in a.rates]
        log = CsvLog(self.out / "metrics.csv", columns, keep_until=start if state is not None else None)
        data = _Batches(entries, lengths, a.batch_size, a.crop_seconds, a.rates, a.seed)
        loader = DataLoader(data, sampler=_StepSampler(start, a.steps), batch_size=None, num_workers=a.workers)

        def save(step: int, elapsed: float) -> None:
            student.backbone.config.apply_spec_augment = spec_augment
            student.save(self.out / "student.pt", meta={"step": step, "recipe": "torchmos.training.sfi_distill"})
            save_atomic({"version": STATE_VERSION, "step": step, "elapsed": elapsed, "config": student.config,
                         "student": student.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                         "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                         "args": plain_args(a)}, self.out / "last.pt")
            student.backbone.config.apply_spec_augment = False

        from tqdm.auto import tqdm

        bar = tqdm(total=a.steps, initial=start, desc="sfi-distill", unit="step",
                   disable=True if a.no_progress else None, dynamic_ncols=True)
        t0 = time.monotonic()
        sums: dict[int, list[float]] = {}
        step = start
        try:
            for x_hi, x_lo, fs in loader:
                fs = int(fs)
                with torch.no_grad():
                    target = teacher(x_lo.to(self.device), output_hidden_states=True).hidden_states
                pred = student(x_hi.to(self.device), fs, output_hidden_states=True).hidden_states
                loss = hidden_mse(pred, target)
                if not bool(torch.isfinite(loss)):
                    raise TrainError(f"the loss became {float(loss)} at step {step + 1}; lower --lr (or set "
                                     "--grad-clip) and resume from the last checkpoint.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if a.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(student.parameters(), a.grad_clip)
                opt.step()
                step += 1
                sums.setdefault(fs, []).append(loss.item())
                bar.update(1)
                elapsed = elapsed0 + time.monotonic() - t0
                row: dict[str, Any] = {}
                if step % a.log_every == 0 or step == a.steps:
                    allv = [v for vs in sums.values() for v in vs]
                    row = {"loss": sum(allv) / len(allv), "rate": fs,
                           **{f"loss_{r}": sum(v) / len(v) for r, v in sums.items()}}
                    bar.set_postfix(loss=f"{row['loss']:.4g}")
                    sums = {}
                if (a.val_every and step % a.val_every == 0) or step == a.steps:
                    val = self._validate(student, teacher)
                    row.update(val)
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in val.items()))
                if row:
                    row.update(step=step, time_s=round(elapsed, 2), lr=opt.param_groups[0]["lr"])
                    log.write(row)
                if (a.save_every and step % a.save_every == 0) or step == a.steps:
                    save(step, elapsed)
        finally:
            bar.close()
        if step == start and not (self.out / "student.pt").exists():
            save(step, elapsed0)
        print(f"torchmos train sfi-distill: step {step}; student in {self.out / 'student.pt'}", file=sys.stderr)
        return 0
