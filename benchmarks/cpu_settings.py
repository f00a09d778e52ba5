"""CPU settings the benchmarks measure under, each in its own process.

The common x86 CPU has AVX2 and FMA only. On a CPU with AVX-512 (and AVX512-BF16) it is
emulated by capping every library torch calls before torch is imported: ATen's kernels
(``ATEN_CPU_CAPABILITY``), oneDNN's convolutions (``ONEDNN_MAX_CPU_ISA``) and MKL's GEMMs
(``MKL_ENABLE_INSTRUCTIONS``). Native bf16 needs AVX512-BF16 or AMX, so under the AVX2
cap oneDNN reports none and ``precision="bf16"`` falls back to fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SETTINGS: dict[str, dict[str, str]] = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "native": {},
}
_CAPPED = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_flags() -> list[str]:
    """The vector-extension flags of /proc/cpuinfo (what the CPU has, whatever the caps)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split()
                              if f.startswith(("avx", "amx", "fma", "sse4", "f16c")))
    except OSError:
        pass
    return []


def run_child(script: str, setting: str, args: list[str]) -> dict:
    """Run ``script --child ARGS`` under ``setting``; it prints one JSON object last."""
    env = {k: v for k, v in os.environ.items() if k not in _CAPPED}
    env.update(SETTINGS[setting])
    out = subprocess.run([sys.executable, script, "--child", *args], env=env, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"{Path(script).name} under {setting!r} failed (exit {out.returncode}).")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["setting"] = {"name": setting, "env": SETTINGS[setting], "OMP_WAIT_POLICY": wait_policy()}
    return result


def wait_policy() -> str:
    """OpenMP's wait policy the measured processes run with: ``OMP_WAIT_POLICY`` as set, or
    the default users get (GNU OpenMP: spin a while, then sleep). Benchmarks run with the
    default on a quiet machine; ``OMP_WAIT_POLICY=PASSIVE`` steadies them on a shared one,
    and costs the side with more, smaller parallel regions more wall time."""
    return os.environ.get("OMP_WAIT_POLICY", "default (unset)")


def reexec_under(setting: str) -> None:
    """Make this process run under ``setting``: when its environment does not have exactly
    the setting's caps, start this script again with them (torch reads them at import), so
    that the process and every command it starts run under the setting."""
    env = {k: v for k, v in os.environ.items() if k not in _CAPPED}
    env.update(SETTINGS[setting])
    if any(os.environ.get(k) != env.get(k) for k in _CAPPED):
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def add_arguments(ap: argparse.ArgumentParser, settings: list[str] | None = None) -> None:
    """The options of every benchmark that measures per setting: ``--settings`` (default
    ``settings``, else all), ``--json``, and the hidden ``--child`` of :func:`run_child`."""
    ap.add_argument("--settings", nargs="+", default=settings or list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def parse(ap: argparse.ArgumentParser, measure) -> argparse.Namespace | None:
    """The parsed arguments; in a child (``--child``), print ``measure(args)`` as JSON and
    return None instead."""
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return None
    return args


def child_info() -> dict:
    """What the child process sees: torch's CPU capability and whether bf16 is native."""
    import torch

    from torchmos.models.distillmos import bf16_supported

    return {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_native": bf16_supported(),
            "threads": torch.get_num_threads()}
