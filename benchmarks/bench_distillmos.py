"""DistillMOS throughput and error: torchmos (fp32 exact, bf16) against the reference package.

One run, side by side, interleaved rounds, median wall and CPU time per method, reported
as ratios (timings on shared machines are noisy; ratios taken in the same run are what
we report; the process CPU time is the less disturbed by other processes). Each CPU
setting runs in its own process (benchmarks/cpu_settings.py): ``avx2`` caps torch's
libraries at AVX2 + FMA (the common x86 CPU), ``native`` uses all the CPU has.

    python benchmarks/bench_distillmos.py --json benchmarks/results/distillmos.json
    python benchmarks/bench_distillmos.py --settings avx2 --rounds 5 --short 24 --mixed 12

Corpora: speech-like signals (torchmos.synth) with the demo's degradations, scored file
by file as a user's folder would be: ``short``, utterances of 1-6 s (most TTS and
voice-conversion test sets), and ``mixed``, clips of 3-20 s; plus the real speech of
../shared/data/speech for the error figures when it is present.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

from cpu_settings import add_arguments, child_info, cpu_flags, parse, run_child


def measure(args: argparse.Namespace) -> dict:
    import torch
    from common import corpus, real_speech

    from torchmos.models.distillmos import DistillMOSModel, bf16_supported

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from distillmos import (
        ConvTransformerSQAModel,  # the reference, a benchmark/test dependency only
    )

    with contextlib.redirect_stdout(io.StringIO()):  # it prints where it loaded weights from
        ref = ConvTransformerSQAModel().eval()
    methods = {"reference (distillmos 0.9.1)": lambda x: float(ref(x[None]))}
    m = DistillMOSModel.from_pretrained()
    methods["torchmos fp32 (exact, default)"] = lambda x: float(m([x]))
    if bf16_supported():
        b = DistillMOSModel.from_pretrained(precision="bf16")
        methods["torchmos bf16"] = lambda x: float(b([x]))

    corpora = {"short (1-6 s)": corpus(args.short, seed=1, lo=1.0, hi=6.0),
               "mixed (3-20 s)": corpus(args.mixed, seed=0, lo=3.0, hi=20.0)}
    real = real_speech()
    out = {"info": child_info(), "corpora": {}}
    with torch.inference_mode():
        for fn in methods.values():  # warm-up
            fn(corpora["short (1-6 s)"][0])
        for cname, clips in corpora.items():
            times = {k: [] for k in methods}
            cpu = {k: [] for k in methods}
            scores: dict[str, torch.Tensor] = {}
            for _ in range(args.rounds):
                for name, fn in methods.items():
                    t, c = time.perf_counter(), time.process_time()
                    s = [fn(x) for x in clips]
                    times[name].append(time.perf_counter() - t)
                    cpu[name].append(time.process_time() - c)
                    scores[name] = torch.tensor(s)
            base = next(iter(methods))
            audio_s = sum(x.shape[0] for x in clips) / 16000
            rows = []
            for name in methods:
                t, c = statistics.median(times[name]), statistics.median(cpu[name])
                rows.append({"method": name, "median_s": t, "x_realtime": audio_s / t,
                             "ratio_vs_reference": statistics.median(times[base]) / t, "cpu_s": c,
                             "cpu_ratio_vs_reference": statistics.median(cpu[base]) / c,
                             "max_abs_diff": float((scores[name] - scores[base]).abs().max())})
            out["corpora"][cname] = {"clips": len(clips), "seconds": round(audio_s, 1), "rows": rows}
        if real:
            ref_real = torch.tensor([methods[base](x) for x in real])
            out["real_speech"] = {"files": len(real), "max_abs_diff": {
                name: float((torch.tensor([fn(x) for x in real]) - ref_real).abs().max()) for name, fn in methods.items()}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--short", type=int, default=24, help="clips of 1-6 s")
    ap.add_argument("--mixed", type=int, default=10, help="clips of 3-20 s")
    add_arguments(ap)
    args = parse(ap, measure)
    if args is None:  # a child: it printed its measurement
        return
    from common import provenance

    passed = ["--threads", str(args.threads), "--rounds", str(args.rounds), "--short", str(args.short),
              "--mixed", str(args.mixed)]
    results = {"provenance": provenance(), "cpu_flags": cpu_flags(), "command": " ".join(["python", *sys.argv]),
               "settings": [run_child(__file__, s, passed) for s in args.settings]}
    for r in results["settings"]:
        info = r["info"]
        print(f"\n### DistillMOS, CPU setting {r['setting']['name']} ({r['setting']['env'] or 'no caps'}): torch "
              f"capability {info['torch_cpu_capability']}, native bf16 {info['bf16_native']}, "
              f"{info['threads']} threads, median of {args.rounds} interleaved rounds")
        for cname, c in r["corpora"].items():
            print(f"\n{cname}: {c['clips']} clips, {c['seconds']} s\n")
            print("| method | wall (s) | x real time | speed vs reference (wall) | CPU (s) "
                  "| speed vs reference (CPU) | max abs diff |")
            print("|---|---|---|---|---|---|---|")
            for x in c["rows"]:
                print(f"| {x['method']} | {x['median_s']:.2f} | {x['x_realtime']:.1f} | "
                      f"{x['ratio_vs_reference']:.2f}x | {x['cpu_s']:.2f} | {x['cpu_ratio_vs_reference']:.2f}x | "
                      f"{x['max_abs_diff']:.1e} |")
        if "real_speech" in r:
            print(f"\nmax abs diff on {r['real_speech']['files']} real speech files: "
                  + ", ".join(f"{k}: {v:.1e}" for k, v in r["real_speech"]["max_abs_diff"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
