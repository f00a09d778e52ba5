"""Run every benchmarks/bench_*.py in turn (the `nox -s bench` session).

    python benchmarks/run_all.py            # all of them
    python benchmarks/run_all.py distillmos # those whose name contains the word

Each benchmark prints a markdown table of ratios against its reference implementation
and writes JSON to benchmarks/results/<name>.json. Benchmarks are never tests: timings on
shared machines are noisy, so only ratios measured in the same run are reported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if argv and not any(a in name for a in argv):
            continue
        print(f"\n=== {script.name}", flush=True)
        rc = subprocess.call([sys.executable, str(script), "--json", str(results / f"{name}.json")])
        if rc:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
