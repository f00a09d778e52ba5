"""The Lightning side of the recipes: the run folder, the ``Trainer`` built from the
command line, and the bases of their LightningModules and LightningDataModules.

A run folder (``--out``) holds what the recipe writes (its model files and ``args.json``),
Lightning's checkpoint ``checkpoints/last.ckpt`` (``--resume``), ``metrics.csv``
(Lightning's ``CSVLogger``) and, when ``tensorboard`` or ``tensorboardX`` is installed,
TensorBoard events in ``tb/`` (``TensorBoardLogger``). The command-line options map onto
the Trainer's: ``--device``/``--devices`` (accelerator and devices), ``--strategy``,
``--precision``, ``--steps``/``--max-steps``/``--epochs``, ``--grad-clip``
(``gradient_clip_val``), ``--log-every`` (``log_every_n_steps``), ``--save-every``
(``ModelCheckpoint``), ``--resume`` (``ckpt_path``), ``--seed`` (``seed_everything``, and
the seeds of the recipes' own draws).

Several devices: every process computes the batch of a step (a pure function of the seed
and the step) and takes its own contiguous part (:func:`torchmos.training.data.rank_part`);
``--batch-size`` is the batch of all devices together, so that a run on two devices
trains as a run on one does. Validation is split between the processes and gathered.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import json
import math
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from . import TrainError, check_resumable, plain_args
from .data import StepSampler, rank_part, seed_of

__all__ = ["CHECKPOINT", "RecipeModule", "Run", "StepData", "quiet_warnings", "save_final", "trainer_device", "validation_loader"]

CHECKPOINT = Path("checkpoints") / "last.ckpt"


class _RunCSVLogger(CSVLogger):
    """Lightning's CSVLogger, writing ``metrics.csv`` into the run folder itself; a resumed
    run keeps the rows up to the step it resumes from (Lightning would start afresh)."""

    def __init__(self, out: Path, keep_until: int | None) -> None:
        super().__init__(str(out), name="", version="")
        self._kept: list[dict[str, str]] = []
        path = out / "metrics.csv"
        if keep_until is not None and path.is_file():
            with open(path, newline="") as f:
                self._kept = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)
                              if row.get("step") and float(row["step"]) <= keep_until]

    @property
    def experiment(self) -> Any:
        exp = super().experiment
        if self._kept and isinstance(getattr(exp, "metrics", None), list):
            exp.metrics[:0] = self._kept  # written with the first new rows
            self._kept = []
        return exp


def _loggers(out: Path, keep_until: int | None) -> list[Logger]:
    loggers: list[Logger] = [_RunCSVLogger(out, keep_until)]
    try:  # TensorBoard when installed: purge the events after the step a resumed run starts from
        purge = {} if keep_until is None else {"purge_step": keep_until + 1}
        loggers.append(TensorBoardLogger(str(out), name="", version="tb", default_hp_metric=False, **purge))
    except ModuleNotFoundError:
        pass
    return loggers


def trainer_device(device: str, devices: int | str) -> tuple[str, Any]:
    """``--device`` and ``--devices`` as the Trainer's accelerator and devices.

    >>> trainer_device("cuda:1", 1), trainer_device("cpu", 2)
    (('gpu', [1]), ('cpu', 2))
    """
    if device == "auto":  # as before Lightning: cuda if available, else cpu (never mps unasked)
        return ("gpu" if torch.cuda.is_available() else "cpu"), devices
    kind, _, index = device.partition(":")
    kind = {"cuda": "gpu"}.get(kind, kind)
    if kind not in ("cpu", "gpu", "mps", "tpu", "hpu"):
        raise TrainError(f"--device {device}: use auto, cpu, cuda, cuda:N or mps.")
    if index:
        if devices not in (1, "1"):
            raise TrainError(f"--device {device} names one device; for several use --device cuda --devices "
                             f"{devices}.")
        return kind, [int(index)]
    return kind, devices


class Run:
    """The run folder of one ``torchmos train`` call, and its Trainer.

    Refuses to clobber a run (``--resume`` or ``--overwrite``); with ``--resume`` finds the
    checkpoint and checks that the options in ``fixed`` are those of the run it resumes.
    ``outputs`` are the recipe's model files, removed by ``--overwrite``.
    """

    def __init__(self, args: argparse.Namespace, recipe: str, fixed: Sequence[str], outputs: Sequence[str]) -> None:
        self.args, self.recipe = args, recipe
        self.out = Path(args.out)
        self.last = self.out / CHECKPOINT
        self.ckpt_path: Path | None = None
        self.state: dict[str, Any] = {}
        self.step0: int | None = None
        if args.threads:
            torch.set_num_threads(args.threads)
        # the recipes draw their randomness from seeds derived from --seed (data.seed_of);
        # this seeds anything else (python, numpy, torch; data-loading workers) the same way
        pl.seed_everything(args.seed, workers=True, verbose=False)
        for name in ("log_every", "save_every", "val_every"):
            if getattr(args, name) < 0 or (name == "log_every" and args.log_every < 1):
                raise TrainError(f"--{name.replace('_', '-')} must be at least {int(name == 'log_every')}, "
                                 f"got {getattr(args, name)}.")
        if args.resume:
            path = self.last if args.resume == "last" else Path(args.resume)
            if not path.is_file():
                raise TrainError(f"--resume: {path} does not exist; start the run without --resume.")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            state = ckpt.get("torchmos") if isinstance(ckpt, dict) else None
            if not isinstance(state, dict) or state.get("recipe") != recipe:
                raise TrainError(f"--resume: {path} is not a checkpoint of `torchmos train {recipe}`.")
            check_resumable(state.get("args", {}), plain_args(args), fixed, self.out)
            self.ckpt_path, self.state, self.step0 = path, state, int(ckpt["global_step"])
        elif self.last.is_file() and not args.overwrite:
            raise TrainError(f"{self.out} already holds a run ({self.last}); pass --resume to continue it, "
                             "--overwrite to start afresh, or choose another --out.")
        elif rank_zero_only.rank == 0:  # a fresh run: nothing of an older one may remain
            for name in (*outputs, "metrics.csv", "hparams.yaml"):
                (self.out / name).unlink(missing_ok=True)
            for name in ("checkpoints", "tb"):
                shutil.rmtree(self.out / name, ignore_errors=True)
        if rank_zero_only.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "args.json").write_text(json.dumps(plain_args(args), indent=2, default=str) + "\n")

    def trainer(self, *, max_steps: int = -1, max_epochs: int = -1, val_every_epochs: int | None = 1,
                save_every_steps: int | None = None, save_every_epochs: int | None = None,
                clip: float = 0.0) -> pl.Trainer:
        """A Trainer for this run: the options of the command line, Lightning's loggers, a
        ``ModelCheckpoint`` that keeps ``checkpoints/last.ckpt``."""
        a = self.args
        accelerator, devices = trainer_device(a.device, a.devices)
        every = ({"every_n_train_steps": save_every_steps} if save_every_steps else
                 {"every_n_epochs": save_every_epochs} if save_every_epochs else {"every_n_epochs": 0})  # 0: at the end
        checkpoint = ModelCheckpoint(dirpath=str(self.last.parent), save_last=True, save_top_k=0,
                                     save_on_train_epoch_end=True, enable_version_counter=False, **every)
        return pl.Trainer(
            accelerator=accelerator, devices=devices, strategy=a.strategy, precision=a.precision,
            max_steps=max_steps, max_epochs=max_epochs, gradient_clip_val=clip if clip > 0 else None,
            check_val_every_n_epoch=val_every_epochs, num_sanity_val_steps=0, log_every_n_steps=a.log_every,
            logger=_loggers(self.out, self.step0), callbacks=[checkpoint, _SaveAtEnd(self.last)], default_root_dir=str(self.out),
            enable_progress_bar=not a.no_progress, enable_model_summary=False, use_distributed_sampler=False,
            reload_dataloaders_every_n_epochs=1, inference_mode=False,  # validation under no_grad, as before
        )

    def fit(self, trainer: pl.Trainer, module: pl.LightningModule, data: pl.LightningDataModule) -> None:
        """``trainer.fit`` from the checkpoint being resumed (if any)."""
        with quiet_warnings():
            module.train()  # Lightning keeps the modes it finds; recipes set their frozen parts' own
            safe = {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
            trainer.fit(module, datamodule=data, ckpt_path=str(self.ckpt_path) if self.ckpt_path else None, **safe)


@contextlib.contextmanager
def quiet_warnings(*more: str) -> Iterator[None]:
    """Lightning's warnings that say nothing to a recipe's user (and ``more`` messages).

    >>> with quiet_warnings("a message of mine"):
    ...     warnings.warn("a message of mine, and more")  # not shown
    """
    with warnings.catch_warnings():
        # the folder holds args.json (and a resumed run's rows, kept by _RunCSVLogger)
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        warnings.filterwarnings("ignore", message=".*LeafSpec.* is deprecated")  # Lightning on newer torch
        warnings.filterwarnings("ignore", message="The number of training batches")  # epochs: validation periods
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")  # frozen parts
        warnings.filterwarnings("ignore", message="It is recommended to use `self.log")  # values gathered
        for message in more:
            warnings.filterwarnings("ignore", message=message)
        yield


class _SaveAtEnd(Callback):
    """The end state into ``checkpoints/last.ckpt`` (in every process, as saving wants), so
    that a later ``--resume`` with more steps or epochs continues from it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(str(self.path), weights_only=False)


class RecipeModule(pl.LightningModule):
    """The LightningModule base of the recipes: the run's options and state in every
    checkpoint, per-step seeding, the split of a batch between processes, gathering."""

    recipe = ""
    version = 2  # of the checkpoint's "torchmos" entry (1 was the pre-Lightning last.pt)

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        self._rows: list = []  # this process's validation results, gathered at the epoch's end

    def on_validation_epoch_start(self) -> None:
        self._rows = []

    # -- state beside Lightning's (best values, counters), kept in checkpoints ----------

    def run_state(self) -> dict[str, Any]:
        return {}

    def load_run_state(self, state: dict[str, Any]) -> None:
        pass

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["torchmos"] = {"recipe": self.recipe, "version": self.version, "args": plain_args(self.args),
                                  **self.run_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.load_run_state(checkpoint.get("torchmos", {}))

    def on_train_start(self) -> None:
        """A resumed run follows the learning-rate schedule of its current options (a run
        extended with a larger ``--steps`` gets the schedule of the new length from the
        step it resumes at), not the last rate its checkpoint's optimiser was left with."""
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
                lrs = [base * f(sched.last_epoch) for base, f in zip(sched.base_lrs, sched.lr_lambdas)]
                for group, lr in zip(sched.optimizer.param_groups, lrs):
                    group["lr"] = lr
                sched._last_lr = lrs

    # -- randomness and processes ------------------------------------------------------

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Dropout and the like draw from torch's RNG seeded by (seed, step, process): a
        resumed run continues as an uninterrupted one, on any number of devices."""
        torch.manual_seed(seed_of(self.args.seed, "dropout", self.global_step, self.global_rank))

    @property
    def world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def part(self, n: int) -> range:
        """The positions of a batch of ``n`` this process trains on."""
        return rank_part(n, self.global_rank, self.world)

    def share(self, n_local: int, n: int) -> float:
        """The factor that makes this process's mean loss over ``n_local`` of ``n`` items,
        averaged by DDP over the processes, the mean loss of the whole batch."""
        return n_local * self.world / n

    def gather(self, x: Tensor) -> Tensor:
        """``x`` (n, ...) of every process (n may differ), concatenated in rank order."""
        if self.world == 1:
            return x
        n = torch.tensor([x.shape[0]], device=x.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        longest = int(max(sizes))
        padded = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))]).contiguous()
        every = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(every, padded)
        return torch.cat([e[: int(s)] for e, s in zip(every, sizes)])

    def check_finite(self, loss: Tensor, hint: str = "lower --lr (or set --grad-clip)") -> None:
        if not bool(torch.isfinite(loss)):
            raise TrainError(f"the loss became {float(loss)} at step {self.global_step + 1}; {hint} and resume "
                             "from the last checkpoint.")

    # -- logging -------------------------------------------------------------------------

    def log_train(self, values: dict[str, Any]) -> None:
        """Training values of this step and the learning rate (every --log-every steps in
        the logs), at the step's number (1 = after the first optimiser step)."""
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log_dict({**values, "lr": lr, "step": float(self.global_step + 1)}, on_step=True, on_epoch=False,
                      batch_size=1, sync_dist=self.world > 1)

    def log_eval(self, values: dict[str, Any]) -> None:
        """Validation values (the same in every process), at the number of steps done."""
        clean = {k: float(v) for k, v in values.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
        self.log_dict({**clean, "step": float(self.global_step)}, rank_zero_only=True, batch_size=1)


    def report(self, values: dict[str, Any], what: str = "") -> None:
        """One line of validation results on stderr (from the first process)."""
        if self.trainer.is_global_zero:
            print(f"step {self.global_step}{what}: " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()), file=sys.stderr)


def save_final(trainer: pl.Trainer, model: Any, out: Path, recipe: str, main: str, last: str | None = None,
               selected: bool = False) -> None:
    """After training, in the first process: the last model into ``last`` (when given)
    and into ``main``, unless validation ``selected`` the model kept there."""
    if not trainer.is_global_zero:
        return
    model.eval()
    step = {"step": trainer.global_step}
    if last:
        model.save(out / last, meta=step)
    if not selected or not (out / main).exists():
        model.save(out / main, meta=step)
    print(f"torchmos train {recipe}: step {trainer.global_step}; model in {out / main}", file=sys.stderr)


class _Indices(Dataset):
    def __init__(self, items: Sequence[int]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> int:
        return self.items[i]


def validation_loader(n: int, rank: int, world: int) -> DataLoader | list:
    """Indices ``rank, rank + world, ...`` of ``n`` validation items (-1 alone where a
    process gets none, so that every process runs the validation hooks)."""
    if n == 0:
        return []
    return DataLoader(_Indices(list(range(rank, n, world)) or [-1]), batch_size=None)


class _StepLoader(DataLoader):
    """Batches from the trainer's global step on (:class:`StepSampler`): resumable by
    construction, so the state Lightning keeps for it is empty."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class StepData(pl.LightningDataModule):
    """Training batches indexed by step: ``dataset[step]`` is this process's part of the
    batch of that step. An epoch is one validation period (``val_every`` steps; the whole
    run without one), so that Lightning validates at its end, and at the end of the run."""

    def __init__(self, dataset: Dataset, steps: int, val_every: int, workers: int, n_valid: int = 0) -> None:
        super().__init__()
        self.dataset, self.steps, self.period = dataset, steps, val_every or steps
        self.workers, self.n_valid = workers, n_valid

    def train_dataloader(self) -> DataLoader:
        step = self.trainer.global_step
        first = step // self.period * self.period
        stop = min(first + self.period, self.steps)
        self.dataset.rank, self.dataset.world = self.trainer.global_rank, self.trainer.world_size
        return _StepLoader(self.dataset, sampler=StepSampler(step, stop, stop - first), batch_size=None,
                          num_workers=self.workers)

    def val_dataloader(self) -> DataLoader | list:
        return validation_loader(self.n_valid, self.trainer.global_rank, self.trainer.world_size)
