"""Training recipes: train or distil torchmos predictors on your own data.

Each recipe module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is
mounted by the command line as ``torchmos train <recipe> ...``. The recipes are Lightning
modules run by a Lightning ``Trainer`` (:mod:`torchmos.training.trainer`): the loop,
devices, DDP, precision, gradient clipping, checkpoints and logs are Lightning's. This
module and :mod:`torchmos.training.data` do not import Lightning; the recipes need it
(``pip install 'torchmos[train]'``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .._stats_core import pearson, spearman

__all__ = ["TrainError", "add_run_arguments", "check_resumable", "pearson", "plain_args", "precision", "spearman"]


class TrainError(ValueError):
    """A problem with the run's options, data or state; the message says what to do."""


# torchmos' short names of the Trainer's precisions (fp32, bf16, fp16) and Lightning's
# names of the same mixed precisions, each as Lightning's canonical name
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
_NAMES = {**PRECISIONS, "32-true": "32-true", "32": "32-true", "16-mixed": "16-mixed", "16": "16-mixed",
          "bf16-mixed": "bf16-mixed"}


def precision(text: str) -> str:
    """``--precision``: a torchmos short name or a Lightning precision, as Lightning's name.

    Mixed precision only: with the weights themselves in bf16 or fp16 (``bf16-true``), an
    update smaller than 1/256 of a weight (Adam at the recipes' learning rates, 1e-5 for
    SCOREQ's encoder) is lost to rounding, and the recipes' fp32 parts (spectra, codebooks,
    losses) would meet half-precision weights.

    >>> precision("bf16"), precision("32-true"), precision("16")
    ('bf16-mixed', '32-true', '16-mixed')
    """
    if text in _NAMES:
        return _NAMES[text]
    hint = " (weights in half precision lose Adam's small updates; use bf16, i.e. bf16-mixed)" \
        if text.endswith("-true") else ""
    raise argparse.ArgumentTypeError(
        f"--precision {text!r}: use one of {', '.join(PRECISIONS)} or a Lightning mixed precision "
        f"({', '.join(n for n in _NAMES if n not in PRECISIONS)}){hint}")


def _devices(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def add_run_arguments(parser: argparse.ArgumentParser, *, seed_help: str, log_every: int, val_every: int,
                      save_every: int, unit: str = "steps") -> argparse._ArgumentGroup:
    """The "run" options every recipe shares: seed, devices and strategy, precision,
    threads, workers, logging, validation and checkpoint cadence (in ``unit``: steps or
    epochs), resume/overwrite, progress bar. Epoch-based recipes also get ``--max-steps``
    (step-based ones take it as another name of their ``--steps``)."""
    r = parser.add_argument_group("run (Lightning Trainer)")
    r.add_argument("--seed", type=int, default=1337, help=f"seed of {seed_help} (default 1337)")
    r.add_argument("--device", default="auto",
                   help="accelerator: auto (cuda if available, else cpu; the default), cpu, cuda, cuda:N or mps")
    r.add_argument("--devices", type=_devices, default=1,
                   help="devices (processes) to train on, or a list such as 0,1 (default 1); with more than "
                   "one, --batch-size is split between them")
    r.add_argument("--strategy", default="auto",
                   help="Lightning strategy: auto (default), ddp, ddp_spawn, ddp_find_unused_parameters_true...")
    r.add_argument("--precision", type=precision, default="32-true",
                   help="fp32 (default), bf16 or fp16 (mixed precision), or Lightning's name of one (bf16-mixed...)")
    if unit == "epochs":
        r.add_argument("--max-steps", type=int, default=-1, help="stop after N optimiser steps (default: no limit)")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default: torch's choice)")
    r.add_argument("--workers", type=int, default=0, help="data-loading processes per device (default 0)")
    r.add_argument("--log-every", type=int, default=log_every, help=f"log training losses every N steps ({log_every})")
    r.add_argument("--val-every", type=int, default=val_every,
                   help=f"validate every N {unit} ({val_every}; also at the end)")
    r.add_argument("--save-every", type=int, default=save_every,
                   help=f"write checkpoints/last.ckpt every N {unit} ({save_every}; also at the end)")
    r.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                   help="continue the run in --out from checkpoints/last.ckpt ('last', the default) or from CKPT")
    r.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a run")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    return r


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``args`` that are plain values (what a checkpoint and args.json keep)."""
    out: dict[str, Any] = {}
    for k, v in vars(args).items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(i, (str, int, float, bool)) for i in v):
            out[k] = list(v)
    return out


def check_resumable(old: dict[str, Any], new: dict[str, Any], keys: Sequence[str], where: object) -> None:
    """Refuse to resume the run in ``where`` when one of ``keys`` changed."""
    for key in keys:
        if key in old and old[key] != new.get(key):
            raise TrainError(
                f"--{key.replace('_', '-')} was {old[key]!r} in the run being resumed ({where}) and is "
                f"{new.get(key)!r} now; resume with the same value, or start a new run (--overwrite or another --out)."
            )


