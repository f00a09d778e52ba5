"""Training recipes: train or distil torchmos predictors on your own data.

Each recipe module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is
mounted by the command line as ``torchmos train <recipe> ...``.
"""

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class CsvLog:
    """A CSV log with fixed columns; on resume, rows after the resumed step are dropped."""

    def __init__(self, path: Path, columns: Sequence[str], keep_until: int | None) -> None:
        self.path, self.columns = path, list(columns)
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


def add_run_arguments(parser, *, seed_help: str, log_every: int, val_every: int, save_every: int):
    """The "run" options every recipe shares: seed, device, threads, workers, logging,
    validation and checkpoint cadence, resume/overwrite, progress bar."""
    r = parser.add_argument_group("run")
    r.add_argument("--seed", type=int, default=1337, help=f"seed of {seed_help} (default 1337)")
    r.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--workers", type=int, default=0, help="data-loading processes (default 0)")
    r.add_argument("--log-every", type=int, default=log_every, help=f"log training losses every N steps ({log_every})")
    r.add_argument("--val-every", type=int, default=val_every,
                   help=f"validate every N steps ({val_every}; also at the end)")
    r.add_argument("--save-every", type=int, default=save_every,
                   help=f"write last.pt every N steps ({save_every}; also at the end)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    r.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a run")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    return r
