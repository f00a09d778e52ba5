"""Training recipes: train or distil torchmos predictors on your own data.

Each recipe module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is
mounted by the command line as ``torchmos train <recipe> ...``.
"""

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


class CsvLog:
    """A CSV log with fixed columns; on resume, rows after the resumed step are dropped.

    With ``tensorboard=<folder>`` and the ``tensorboard`` package installed, every numeric
    value is also written there as a scalar at the row's ``step`` (resumed runs purge the
    events after the resumed step)."""

    def __init__(self, path: Path, columns: Sequence[str], keep_until: int | None,
                 tensorboard: Path | None = None) -> None:
        self.path, self.columns = path, list(columns)
        self.tb: Any = None
        if tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self.tb = SummaryWriter(str(tensorboard), purge_step=None if keep_until is None else keep_until + 1)
        rows: list[dict[str, str]] = []
        if keep_until is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= keep_until]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        clean = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(clean)
        if self.tb is not None and "step" in row:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, int(row["step"]))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def add_run_arguments(parser, *, seed_help: str, log_every: int, val_every: int, save_every: int,
                      unit: str = "steps"):
    """The "run" options every recipe shares: seed, device, threads, workers, logging,
    validation and checkpoint cadence (in ``unit``: steps or epochs), resume/overwrite,
    progress bar."""
    r = parser.add_argument_group("run")
    r.add_argument("--seed", type=int, default=1337, help=f"seed of {seed_help} (default 1337)")
    r.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--workers", type=int, default=0, help="data-loading processes (default 0)")
    r.add_argument("--log-every", type=int, default=log_every, help=f"log training losses every N steps ({log_every})")
    r.add_argument("--val-every", type=int, default=val_every,
                   help=f"validate every N {unit} ({val_every}; also at the end)")
    r.add_argument("--save-every", type=int, default=save_every,
                   help=f"write last.pt every N {unit} ({save_every}; also at the end)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    r.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a run")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    return r


class TrainError(ValueError):
    """A problem with the run's options, data or state; the message says what to do."""


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in vars(args).items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(i, (str, int, float, bool)) for i in v):
            out[k] = list(v)
    return out


def check_resumable(old: dict[str, Any], new: dict[str, Any], keys: Sequence[str], out: Path) -> None:
    for key in keys:
        if key in old and old[key] != new.get(key):
            raise TrainError(
                f"--{key.replace('_', '-')} was {old[key]!r} in the run being resumed ({out}) and is "
                f"{new.get(key)!r} now; resume with the same value, or start a new run (--overwrite or another --out)."
            )


def prepare_out(out: Path, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """The resumable state in ``out`` (with ``--resume``), else None; refuses to clobber a run."""
    last = out / "last.pt"
    if resume:
        if not last.is_file():
            raise TrainError(f"--resume: {last} does not exist; start the run without --resume.")
        return torch.load(last, map_location="cpu", weights_only=True)
    if last.is_file() and not overwrite:
        raise TrainError(f"{out} already holds a run ({last}); pass --resume to continue it or --overwrite "
                         "to start afresh.")
    out.mkdir(parents=True, exist_ok=True)
    return None


def _rank(x: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based) with ties given their average rank."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    values, inverse = torch.unique(x, return_inverse=True)
    if len(values) < len(x):  # average the ranks of tied values
        sums = torch.zeros(len(values), dtype=x.dtype).index_add_(0, inverse, ranks)
        counts = torch.zeros(len(values), dtype=x.dtype).index_add_(0, inverse, torch.ones_like(x))
        ranks = (sums / counts)[inverse]
    return ranks


def pearson(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Pearson correlation (nan when either side is constant)."""
    x = torch.as_tensor(a, dtype=torch.float64).flatten()
    y = torch.as_tensor(b, dtype=torch.float64).flatten()
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    return float((x * y).sum()) / den if den > 0 else float("nan")


def spearman(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    x = torch.as_tensor(a, dtype=torch.float64).flatten()
    y = torch.as_tensor(b, dtype=torch.float64).flatten()
    return pearson(_rank(x), _rank(y))


def start_run(args: argparse.Namespace, out: Path, version: int, fixed_on_resume: Sequence[str]) -> dict[str, Any] | None:
    """Apply ``--threads`` and open ``out``: the state to resume (checked against its format
    ``version`` and the options that may not change), or None for a fresh run."""
    if args.threads:
        torch.set_num_threads(args.threads)
    state = prepare_out(out, args.resume, args.overwrite)
    if state is not None:
        if state.get("version") != version:
            raise TrainError(f"{out / 'last.pt'}: state version {state.get('version')!r}, expected {version}.")
        check_resumable(state["args"], plain_args(args), fixed_on_resume, out)
    return state
