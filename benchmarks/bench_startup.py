"""Start-up time of the command line and of ``import torchmos``, against a bare ``import torch``.

    python benchmarks/bench_startup.py [--repeats 7] [--json FILE]

Each command runs ``--repeats`` times in a fresh interpreter (after one warm-up run, so
that every command reads files from the page cache); the table gives the median wall time
and its difference from ``python -c "import torch"`` measured in the same run. The
target is ``torchmos --help`` and ``torchmos models`` within 1.5 s of a bare torch import.
``import torchmetrics`` is measured for contrast: it is what the lean imports avoid.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance  # noqa: E402

PY = sys.executable
TORCHMOS = str(Path(PY).with_name("torchmos"))
COMMANDS = {
    "python -c 'import torch'": [PY, "-c", "import torch"],
    "python -c 'import torchmos'": [PY, "-c", "import torchmos"],
    "torchmos --help": [TORCHMOS, "--help"],
    "torchmos models": [TORCHMOS, "models"],
    "python -c 'import torchmetrics' (contrast)": [PY, "-c", "import torchmetrics"],
}


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    where = provenance()  # the commit and tree this run starts from
    for cmd in COMMANDS.values():  # warm the page cache
        timed(cmd)
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):  # interleaved, so that load changes hit every command alike
        for name, cmd in COMMANDS.items():
            samples[name].append(timed(cmd))
    base = statistics.median(samples["python -c 'import torch'"])
    rows = []
    print("| command | median wall (s) | minus bare torch (s) |\n|---|---|---|")
    for name, vals in samples.items():
        med = statistics.median(vals)
        rows.append({"command": name, "median_s": round(med, 3), "over_torch_s": round(med - base, 3),
                     "samples_s": [round(v, 3) for v in vals]})
        print(f"| `{name}` | {med:.2f} | {med - base:+.2f} |")
    worst = max(r["over_torch_s"] for r in rows if r["command"].startswith("torchmos "))
    print(f"\ntorchmos --help / models: at most {worst:+.2f} s over a bare torch import (target: within 1.5 s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"provenance": where, "repeats": args.repeats,
                                               "rows": rows, "cli_over_torch_max_s": worst}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
