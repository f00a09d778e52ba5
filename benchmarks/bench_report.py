"""How long ``torchmos report`` and ``torchmos compare`` take on a large corpus, and how big the page is.

    python benchmarks/bench_report.py [--utterances 100000] [--repeats 3] [--json FILE]

Two systems' score files of ``--utterances`` utterances (four conditions, a ``mos`` column,
seeded values) are written once; then each command runs ``--repeats`` times in a fresh
process, as a user runs it (``torchmos report A.csv B.csv --by condition -o page.html``,
10,000 bootstrap resamples: the defaults; ``torchmos compare ... --by condition``). The
table gives the median wall time, its CPU time, and the page's size. There is no reference
implementation to compare with: these are absolute times on this machine's CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance  # noqa: E402

TORCHMOS = str(Path(sys.executable).with_name("torchmos"))


def write_systems(folder: Path, n: int, seed: int = 1) -> list[str]:
    """Two score files (A, B) of ``n`` utterances with condition and mos columns."""
    rng = np.random.default_rng(seed)
    ids = [f"set/utt{i:06d}" for i in range(n)]
    cond = np.array(["clean", "noise", "reverb", "codec"])[rng.integers(0, 4, n)]
    base = rng.normal(3.0, 0.6, n)
    files = []
    for k, name in enumerate(["A", "B"]):
        score = np.round(base + 0.05 * k + rng.normal(0, 0.3, n), 6)
        mos = np.round(base + rng.normal(0, 0.4, n), 2)
        path = folder / f"{name}.csv"
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "path", "model", "score", "mos", "condition"])
            w.writerows(zip(ids, (f"{name}/{i}.wav" for i in ids), ["distillmos"] * n, score, mos, cond))
        files.append(str(path))
    return files


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of ``cmd`` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--utterances", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_systems(folder, a.utterances)
        page = folder / "report.html"
        commands = {
            "torchmos report A B --by condition": [TORCHMOS, "report", *files, "--by", "condition", "-o", str(page)],
            "torchmos compare A B --by condition": [TORCHMOS, "compare", *files, "--by", "condition"],
        }
        for name, cmd in commands.items():
            runs = [run(cmd) for _ in range(a.repeats)]
            row = {"command": name, "wall_s": round(statistics.median(w for w, _ in runs), 2),
                   "cpu_s": round(statistics.median(c for _, c in runs), 2),
                   "runs_wall_s": [round(w, 2) for w, _ in runs]}
            if "report" in name:
                row["page_mb"] = round(page.stat().st_size / 1e6, 3)
            rows.append(row)
            print(f"{name:40s} {row['wall_s']:7.2f} s wall {row['cpu_s']:7.2f} s CPU"
                  + (f"  page {row['page_mb']} MB" if "page_mb" in row else ""))
    result = {**provenance(), "utterances": a.utterances, "systems": 2, "conditions": 4, "resamples": 10_000,
              "repeats": a.repeats, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
