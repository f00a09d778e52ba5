"""How DistillMOS's and SCOREQ's cost grows: time and peak memory against clip length
(1 s to 10 min) and against corpus size, each point in a fresh process.

    python benchmarks/bench_scaling.py --json benchmarks/results/scaling.json
    python benchmarks/bench_scaling.py --models scoreq --lengths 1 2 5 10 20 30 60 --corpus   # a curve

Each point: one process loads the model, scores a 1 s clip (warm-up), notes its resident
set size (RSS), then scores the clip (or the list of clips, in one call) once, timed
(wall and process CPU); ``peak RSS growth`` is the process's peak RSS (``ru_maxrss``) less
the RSS before the timed call, i.e. what scoring needed beyond the loaded model. Clips
are speech-like signals (torchmos.synth). SCOREQ runs with random weights of the full
wav2vec 2.0 BASE architecture (cost does not depend on the weights), whole clip (the
faithful default; up to ``--scoreq-whole-max`` seconds, its attention grows with the
square of the length) and in 20 s chunks (``chunk_seconds=20``). The process runs under
the CPU setting given (benchmarks/cpu_settings.py; default the AVX2 cap).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from pathlib import Path

from cpu_settings import SETTINGS, cpu_flags, run_child

MODES = {"distillmos": {}, "scoreq whole clip": {"chunk_seconds": None}, "scoreq 20 s chunks": {"chunk_seconds": 20.0}}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def point(args: argparse.Namespace) -> dict:
    import torch

    from torchmos import synth

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    if args.mode == "distillmos":
        from torchmos.models.distillmos import DistillMOSModel

        model = DistillMOSModel.from_pretrained()
    else:
        from torchmos.models.scoreq import ScoreqModel

        torch.manual_seed(0)
        model = ScoreqModel("nr", **MODES[args.mode])
    clips = [synth.speech_like(args.seconds, 16000, seed=i) for i in range(args.count)]
    with torch.inference_mode():
        model([synth.speech_like(1.0, 16000, seed=99)])
        before = rss_mib()
        t, c = time.perf_counter(), time.process_time()
        model(clips)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    audio = args.seconds * args.count
    return {"mode": args.mode, "clip_seconds": args.seconds, "clips": args.count, "wall_s": wall, "cpu_s": cpu,
            "x_realtime": audio / wall, "rss_before_mib": before, "peak_rss_mib": peak,
            "peak_rss_growth_mib": peak - before, "threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["distillmos", "scoreq"], choices=["distillmos", "scoreq"])
    ap.add_argument("--lengths", type=float, nargs="*", default=[1, 5, 10, 20, 30, 60, 600], help="clip seconds")
    ap.add_argument("--corpus", type=int, nargs="*", default=[1, 10, 100], help="clips of --corpus-seconds")
    ap.add_argument("--corpus-seconds", type=float, default=4.0)
    ap.add_argument("--scoreq-whole-max", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--setting", default="avx2", choices=list(SETTINGS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(point(args)))
        return
    from common import provenance

    modes = [m for m in MODES if m.split()[0] in args.models]
    plan = []
    for mode in modes:
        for sec in args.lengths:
            if mode == "scoreq whole clip" and sec > args.scoreq_whole_max:
                continue
            plan.append((mode, sec, 1))
        for n in args.corpus:
            plan.append((mode, args.corpus_seconds, n))
    rows = []
    print(f"\nCPU setting {args.setting}, {args.threads} threads; each point in a fresh process\n")
    print("| model | clip length (s) | clips | wall (s) | CPU (s) | x real time | peak RSS growth (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for mode, sec, n in plan:
        r = run_child(__file__, args.setting, ["--mode", mode, "--seconds", str(sec), "--count", str(n),
                                               "--threads", str(args.threads)])
        rows.append(r)
        print(f"| {mode} | {sec:g} | {n} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['x_realtime']:.1f} | "
              f"{r['peak_rss_growth_mib']:.0f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"provenance": provenance(), "cpu_flags": cpu_flags(),
                                               "command": " ".join(["python", *sys.argv]),
                                               "setting": {"name": args.setting, "env": SETTINGS[args.setting]},
                                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
