"""DistillMOS throughput and error: torchmos (fp32 exact, bf16) against the reference package.

One run, side by side, interleaved rounds, median wall and CPU time per method, reported
as ratios (timings on shared machines are noisy; ratios taken in the same run are what
we report; the process CPU time is the less disturbed by other processes).

    python benchmarks/bench_distillmos.py                 # 2 threads, 12 clips of 3-20 s
    python benchmarks/bench_distillmos.py --threads 2 --rounds 3 --clips 12 --json out.json

Corpus: speech-like signals (torchmos.synth) with the demo's degradations, lengths drawn
uniformly in 3-20 s, scored file by file as a user's folder would be; plus the real speech
of ../shared/data/speech for the error figures when it is present.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from common import corpus, real_speech

from torchmos.models.distillmos import DistillMOSModel, bf16_supported


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--crops-per-batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    # the reference, a benchmark/test dependency only
    from distillmos import ConvTransformerSQAModel

    ref = ConvTransformerSQAModel().eval()
    methods = {"reference (distillmos 0.9.1)": lambda x: float(ref(x[None]))}
    for cpb in args.crops_per_batch:
        m = DistillMOSModel.from_pretrained(crops_per_batch=cpb)
        methods[f"torchmos fp32, {cpb} crop(s)/batch"] = lambda x, m=m: float(m([x]))
    bf16 = bf16_supported()
    if bf16:
        for cpb in args.crops_per_batch:
            m = DistillMOSModel.from_pretrained(precision="bf16", crops_per_batch=cpb)
            methods[f"torchmos bf16, {cpb} crop(s)/batch"] = lambda x, m=m: float(m([x]))

    clips = corpus(args.clips)
    real = real_speech()
    audio_s = sum(x.shape[0] for x in clips) / 16000
    times: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    scores: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for fn in methods.values():  # warm-up
            fn(clips[0][:16000])
        for _ in range(args.rounds):
            for name, fn in methods.items():
                t, c = time.perf_counter(), time.process_time()
                s = [fn(x) for x in clips]
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                scores[name] = torch.tensor(s)
        real_scores = {name: torch.tensor([fn(x) for x in real]) for name, fn in methods.items()} if real else {}

    base = next(iter(methods))
    t_ref = statistics.median(times[base])
    c_ref = statistics.median(cpu[base])
    rows = []
    for name in methods:
        t = statistics.median(times[name])
        c = statistics.median(cpu[name])
        err = float((scores[name] - scores[base]).abs().max())
        err_real = float((real_scores[name] - real_scores[base]).abs().max()) if real else float("nan")
        rows.append({"method": name, "median_s": t, "x_realtime": audio_s / t, "ratio_vs_reference": t_ref / t,
                     "cpu_s": c, "cpu_ratio_vs_reference": c_ref / c,
                     "max_abs_diff_corpus": err, "max_abs_diff_real_speech": err_real})
    info = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_native": bf16,
            "corpus_seconds": round(audio_s, 1), "clips": len(clips), "rounds": args.rounds,
            "real_speech_files": len(real)}
    print(f"\nDistillMOS, {info['clips']} clips / {info['corpus_seconds']} s of audio, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds; torch {info['torch']}, CPU capability "
          f"{info['cpu_capability']}, native bf16: {bf16}\n")
    print("| method | wall (s) | x real time | speed vs reference (wall) | CPU (s) | speed vs reference (CPU) "
          "| max abs diff (corpus) | max abs diff (real speech) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['median_s']:.2f} | {r['x_realtime']:.1f} | {r['ratio_vs_reference']:.2f}x | "
              f"{r['cpu_s']:.2f} | {r['cpu_ratio_vs_reference']:.2f}x | "
              f"{r['max_abs_diff_corpus']:.2e} | {r['max_abs_diff_real_speech']:.2e} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
