"""SCOREQ peak memory (and time) against clip length: whole clip (faithful) vs chunked.

Every measurement runs in a fresh Python subprocess (peak RSS, ``ru_maxrss``, is a
per-process high-water mark), with the full wav2vec 2.0 BASE architecture (random
weights: memory and time do not depend on the weight values). Reported: the process's
peak RSS, the model's own resident size before scoring (baseline), the growth while
scoring one clip, and the wall time.

    python benchmarks/bench_scoreq_memory.py                         # 15 s, 60 s, 10 min; whole + chunked
    python benchmarks/bench_scoreq_memory.py --lengths 15 60 --modes whole --port
    python benchmarks/bench_scoreq_memory.py --lengths 600 --modes chunked --chunk-seconds 10

``--port`` adds the scoreq-pytorch port (whole clip, file by file) for comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads({threads})
seconds, mode, chunk = {seconds}, {mode!r}, {chunk}
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
torch.manual_seed(0)
if mode == "port":
    from scoreq_pytorch.scoreq_torch import SCOREQModel, remove_weight_norm_for_jit
    model = remove_weight_norm_for_jit(SCOREQModel("nr").eval())
    run = lambda x: model(x)
else:
    from torchmos.models.scoreq import ScoreqModel
    model = ScoreqModel("nr", chunk_seconds=chunk if mode == "chunked" else None)
    run = lambda x: model([x])
with torch.inference_mode():
    run(torch.randn(16000) * 0.1)  # warm-up
    base = rss_mb()
    x = torch.randn(int(seconds * 16000)) * 0.1
    t = time.perf_counter()
    score = float(run(x))
    wall = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "mode": mode, "peak_rss_mb": rss_mb(), "baseline_mb": base,
                  "growth_mb": rss_mb() - base, "wall_s": wall, "score": score}}))
"""


def measure(seconds: float, mode: str, chunk: float, threads: int, timeout: float) -> dict:
    code = CHILD.format(seconds=seconds, mode=mode, chunk=chunk, threads=threads)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": seconds, "mode": mode, "error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"seconds": seconds, "mode": mode, "error": out.stderr.strip().splitlines()[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=float, nargs="+", default=[15, 60, 600])
    ap.add_argument("--modes", nargs="+", default=["whole", "chunked"], choices=["whole", "chunked"])
    ap.add_argument("--chunk-seconds", type=float, default=10.0)
    ap.add_argument("--port", action="store_true", help="also measure scoreq-pytorch (whole clip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    modes = list(args.modes) + (["port"] if args.port else [])
    rows = []
    for sec in args.lengths:
        for mode in modes:
            r = measure(sec, mode, args.chunk_seconds, args.threads, args.timeout)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    names = {"whole": "torchmos, whole clip (default)", "chunked": f"torchmos, chunk_seconds={args.chunk_seconds:g}",
             "port": "scoreq-pytorch 0.1.0, whole clip"}
    print(f"\nSCOREQ BASE, one clip, {args.threads} threads, peak RSS of a fresh process\n")
    print("| length | method | peak RSS (MB) | model + runtime before scoring (MB) | growth while scoring (MB) | time (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        length = f"{r['seconds'] / 60:g} min" if r["seconds"] >= 60 else f"{r['seconds']:g} s"
        if "error" in r:
            print(f"| {length} | {names[r['mode']]} | {r['error']} | | | |")
            continue
        print(f"| {length} | {names[r['mode']]} | {r['peak_rss_mb']:.0f} | {r['baseline_mb']:.0f} | "
              f"{r['growth_mb']:.0f} | {r['wall_s']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
