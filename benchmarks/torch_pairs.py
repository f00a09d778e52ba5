"""Which torch / torchaudio pairs load together: the evidence behind pyproject's ranges.

    python benchmarks/torch_pairs.py                    # the default pairs below
    python benchmarks/torch_pairs.py 2.14.1/2.11.1 ...  # others (torch/torchaudio)

For each pair: a fresh venv, ``pip install torch==T torchaudio==A``, then ``import
torchaudio`` and one resampling, in a fresh interpreter. Results go to
``benchmarks/results/torch_pairs.json`` with the commit and machine (not a speed figure:
a compatibility matrix). Minutes per pair (each venv is several GB; it is deleted after).

``T`` ending in ``+cpu`` asks for a CPU-only build (on these machines a local wheel of
torch 2.13.0+cpu; elsewhere add PyTorch's CPU index to pip's configuration). Plain ``T``
is PyPI's build: pip runs with ``PIP_CONFIG_FILE=/dev/null`` and an empty find-links
folder, so that no local wheel (nor a local version cap) stands in for PyPI's file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance  # noqa: E402

PAIRS = ["2.11.0/2.11.0", "2.11.0/2.11.1", "2.12.0/2.11.1", "2.12.1/2.11.0", "2.12.1/2.11.1",
         "2.13.0/2.11.1", "2.13.0+cpu/2.11.1", "2.14.0/2.11.1", "2.14.1/2.11.1"]

PROBE = r"""
import json, torch
out = {"torch": torch.__version__, "cuda_build": torch.version.cuda}
try:
    import torchaudio, torchaudio.functional as F
    y = F.resample(torch.randn(1, 44100), 44100, 16000)
    out.update(torchaudio=torchaudio.__version__, loads=True, resample_shape=list(y.shape))
except Exception as e:
    # torchaudio's loader hides the dynamic linker's reason: ask the linker directly
    import ctypes, glob, importlib.util, os
    reasons = []
    lib = os.path.join(os.path.dirname(importlib.util.find_spec("torchaudio").origin), "lib")
    for so in sorted(glob.glob(os.path.join(lib, "*.so"))):
        try:
            ctypes.CDLL(so)
        except OSError as why:
            reasons.append(f"{os.path.basename(so)}: {str(why).rsplit(': ', 1)[-1]}")
    out.update(loads=False, error=f"{type(e).__name__}: {e}"[-300:], linker=reasons)
print(json.dumps(out))
"""


def try_pair(torch_v: str, audio_v: str, work: Path) -> dict:
    venv = work / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ)
    if not torch_v.endswith("+cpu"):  # PyPI's own build, not a local stand-in
        empty = work / "no-wheels"
        empty.mkdir(exist_ok=True)
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS=str(empty))
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    # torchaudio without its dependencies, so that pip cannot swap the torch under test
    inst = subprocess.run(pip + [f"torch=={torch_v}", "numpy"], env=env, capture_output=True, text=True)
    if inst.returncode == 0:
        inst = subprocess.run(pip + ["--no-deps", f"torchaudio=={audio_v}"], env=env, capture_output=True, text=True)
    row: dict = {"torch_requested": torch_v, "torchaudio_requested": audio_v}
    if inst.returncode != 0:
        row.update(installed=False, error=inst.stderr[-500:])
    else:
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", PROBE], capture_output=True, text=True)
        row.update(installed=True, **json.loads(probe.stdout.strip().splitlines()[-1]))
    shutil.rmtree(venv, ignore_errors=True)
    return row


def main(argv: list[str]) -> int:
    pairs = argv or PAIRS
    where = provenance()  # the commit and tree this run starts from
    rows = []
    with tempfile.TemporaryDirectory(prefix="torch-pairs-") as tmp:
        for pair in pairs:
            t, a = pair.split("/")
            row = try_pair(t, a, Path(tmp))
            rows.append(row)
            why = "; ".join(row.get("linker") or []) or row.get("error", "")
            verdict = "loads" if row.get("loads") else f"FAILS  {why[:200]}"
            print(f"torch {row.get('torch', t):<16} torchaudio {row.get('torchaudio', a):<14} {verdict}", flush=True)
    out = Path(__file__).resolve().parent / "results" / "torch_pairs.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"provenance": where, "pairs": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
