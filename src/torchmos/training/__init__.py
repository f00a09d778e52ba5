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
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["TrainError", "add_run_arguments", "check_resumable", "pearson", "plain_args", "precision", "spearman"]


class TrainError(ValueError):
    """A problem with the run's options, data or state; the message says what to do."""


# torchmos' short names of the Trainer's precisions (the Trainer's own names work too)
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
_LIGHTNING_PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16-true", "16-true")


def precision(text: str) -> str:
    """``--precision``: a torchmos short name or a Lightning precision, as Lightning's name.

    >>> precision("bf16"), precision("32-true")
    ('bf16-mixed', '32-true')
    """
    if text in PRECISIONS:
        return PRECISIONS[text]
    if text in _LIGHTNING_PRECISIONS:
        return text
    raise argparse.ArgumentTypeError(
        f"--precision {text!r}: use one of {', '.join(PRECISIONS)} or a Lightning precision "
        f"({', '.join(_LIGHTNING_PRECISIONS)})")


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
                   help="fp32 (default), bf16 or fp16 (mixed), or a Lightning precision such as bf16-true")
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


def _pair(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(a, dtype=torch.float64).detach().cpu().flatten()
    y = torch.as_tensor(b, dtype=torch.float64).detach().cpu().flatten()
    if x.shape != y.shape:
        raise ValueError(f"a correlation needs two sequences of one length, got {len(x)} and {len(y)}.")
    return x, y


def _correlation(fn_name: str, a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    x, y = _pair(a, b)
    if len(x) < 2 or bool(x.min() == x.max()) or bool(y.min() == y.max()):
        return math.nan  # undefined: a constant side
    import torchmetrics.functional as tmf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-constant inputs: torchmetrics warns and returns nan
        return float(getattr(tmf, fn_name)(x, y))


def pearson(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Pearson correlation (``torchmetrics.functional.pearson_corrcoef``; nan when either
    side is constant).

    >>> round(pearson([1, 2, 3], [2, 4, 7]), 4)
    0.9934
    """
    return _correlation("pearson_corrcoef", a, b)


def spearman(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Spearman rank correlation (``torchmetrics.functional.spearman_corrcoef``: ties get
    their average rank; nan when either side is constant).

    >>> round(spearman([1, 1, 2, 3], [1, 2, 3, 4]), 4)
    0.9487
    """
    return _correlation("spearman_corrcoef", a, b)
