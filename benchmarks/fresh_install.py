"""The README's first two commands in a fresh clone, as a newcomer runs them.

    python benchmarks/fresh_install.py [--keep DIR]

Clones the committed HEAD into a new folder beside this checkout (so that ``../shared``
is found as in CI), runs the README's install-and-demo command and its test command
exactly as written (read from README.md), and records: each command's exit status and
wall time, the venv's size after each (``du -sb``), whether ``pip freeze`` equals
``requirements/lock.txt``, and the tests' summary line. Results, with the commit and
machine, go to ``benchmarks/results/fresh_install.json``. Needs the network (PyPI) and
several GB of disk; takes minutes. Not a test: wall times depend on the machine's load
(the CPU's load average is recorded beside them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import provenance  # noqa: E402


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", default=None, help="clone here and keep it (default: a new folder, removed after)")
    args = ap.parse_args()
    where = provenance()
    clone = Path(args.keep) if args.keep else ROOT.parent / f"torchmos-fresh-{os.getpid()}"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    steps: list[dict] = []
    same = False
    try:
        for name, cmd in zip(("install_and_demo", "tests"), readme_commands()):
            t0 = time.perf_counter()
            proc = subprocess.run(["bash", "-c", cmd], cwd=clone, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            tail = [ln for ln in proc.stdout.splitlines() if ln.strip()][-3:]
            steps.append({"step": name, "command": cmd, "rc": proc.returncode, "wall_s": round(wall, 1),
                          "load_average_after": os.getloadavg(), "venv_bytes": du(clone / ".venv"),
                          "stdout_tail": tail})
            print(f"{name}: rc {proc.returncode}, {wall:.0f} s, venv {steps[-1]['venv_bytes'] / 1e9:.2f} GB; "
                  f"{tail[-1] if tail else ''}", flush=True)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                break
        frozen = subprocess.run([str(clone / ".venv/bin/pip"), "freeze", "--exclude-editable"],
                                capture_output=True, text=True).stdout.splitlines()
        locked = (clone / "requirements/lock.txt").read_text().splitlines()

        def pins(lines: list[str]) -> list[str]:
            return sorted(ln.strip() for ln in lines if ln.strip() and not ln.startswith("#"))

        same = pins(frozen) == pins(locked)
        print(f"pip freeze equals requirements/lock.txt: {same}")
    finally:
        if not args.keep:
            shutil.rmtree(clone, ignore_errors=True)
    out = HERE / "results" / "fresh_install.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"provenance": where, "steps": steps, "freeze_equals_lock": same}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(s["rc"] == 0 for s in steps) and len(steps) == 2 and same else 1


if __name__ == "__main__":
    sys.exit(main())
