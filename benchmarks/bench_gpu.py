"""DistillMOS and SCOREQ on a CUDA GPU: x real time by batch size and precision, with the
error of each precision against the CPU's fp32 scores. One command, a few minutes:

    python benchmarks/bench_gpu.py --json benchmarks/results/gpu.json

Corpus: ``--clips`` speech-like clips (torchmos.synth, the demo's degradations) of
``--seconds`` each (default 128 of 4 s: one 7.68 s DistillMOS crop each). Batch sizes
1, 8, 32, 128: DistillMOS's ``crops_per_batch``; SCOREQ's padded batches of that many
clips (``max_batch_seconds``). Precisions: exact fp32 (TF32 off for matmuls and cuDNN),
DistillMOS's own ``precision="bf16"`` (the CNN in bf16) and SCOREQ's (bf16 weights +
autocast), and the whole call under ``torch.autocast`` in bf16 and fp16. Each figure is
the median of ``--rounds`` timed rounds after a warm-up, with ``torch.cuda.synchronize``.
Errors: max |score difference| against fp32 on the CPU, over the first ``--error-clips``
clips. SCOREQ runs with random weights of the full wav2vec 2.0 BASE architecture (speed
does not depend on the weights; its official files need a download).

Without a CUDA device it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

BATCHES = (1, 8, 32, 128)


# name -> (the model's precision option, the autocast dtype around the whole call or None)
PRECISIONS = {"fp32 exact (TF32 off)": ("fp32", None), "model precision='bf16'": ("bf16", None),
              "autocast bf16": ("fp32", torch.bfloat16), "autocast fp16": ("fp32", torch.float16)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, rounds: int, device: str) -> float:
    fn()  # warm-up (cuDNN autotuning, allocator)
    sync(device)
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_model(name: str, build, clips: list[torch.Tensor], args: argparse.Namespace) -> list[dict]:
    """``build(precision, batch)`` -> a CUDA model scoring a list of clips."""
    audio_s = sum(x.shape[0] for x in clips) / 16000
    cpu = build("fp32", 1, "cpu")
    with torch.inference_mode():
        ref = cpu(clips[: args.error_clips]).double()
    del cpu
    dev = args.device
    gpu_clips = [x.to(dev) for x in clips]
    rows = []
    for pname, (prec, dtype) in PRECISIONS.items():
        for batch in BATCHES:
            model = build(prec, batch, dev)
            ctx = (lambda d=dtype: torch.autocast(dev, dtype=d)) if dtype else contextlib.nullcontext

            def run(model=model, ctx=ctx):
                with torch.inference_mode(), ctx():
                    return model(gpu_clips)

            t = timed(run, args.rounds, dev)
            with torch.inference_mode(), ctx():
                err = float((model(gpu_clips[: args.error_clips]).double().cpu() - ref).abs().max())
            peak = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None
            rows.append({"model": name, "precision": pname, "batch": batch, "seconds": t,
                         "x_realtime": audio_s / t, "max_abs_diff_vs_cpu_fp32": err, "peak_gpu_mib": peak})
            print(f"| {name} | {pname} | {batch} | {t:.3f} | {audio_s / t:.0f} | {err:.1e} |", flush=True)
            del model
            if dev == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--error-clips", type=int, default=16)
    ap.add_argument("--models", nargs="+", default=["distillmos", "scoreq"], choices=["distillmos", "scoreq"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu": a dry run of the script
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device is available here (torch.cuda.is_available() is False); "
              "nothing was measured. Run this command on a machine with an NVIDIA GPU.")
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import corpus, provenance

    from torchmos.models.distillmos import DistillMOSModel
    from torchmos.models.scoreq import ScoreqModel

    warnings.simplefilter("ignore")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(min(8, torch.get_num_threads()))
    clips = corpus(args.clips, seed=3, lo=args.seconds, hi=args.seconds)

    def distillmos(prec: str, batch: int, device: str):
        return DistillMOSModel.from_pretrained(precision=prec, crops_per_batch=batch).to(device)

    torch.manual_seed(0)
    scoreq_state = ScoreqModel("nr").state_dict()  # random BASE weights, the same for every build

    def scoreq(prec: str, batch: int, device: str):
        m = ScoreqModel("nr", precision=prec, max_batch_seconds=batch * args.seconds + 0.5)
        m.load_state_dict(scoreq_state)
        return m.to(device)

    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (dry run)"
    print(f"\n{gpu}; {args.clips} clips of {args.seconds:g} s; median of "
          f"{args.rounds} rounds\n\n| model | precision | batch | seconds | x real time | max abs diff vs CPU fp32 |\n"
          "|---|---|---|---|---|---|")
    rows = []
    if "distillmos" in args.models:
        rows += bench_model("DistillMOS", distillmos, clips, args)
    if "scoreq" in args.models:
        rows += bench_model("SCOREQ NR (random weights)", scoreq, clips, args)
    if args.json:
        info = {"gpu": gpu, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(), "clips": args.clips, "clip_seconds": args.seconds,
                "rounds": args.rounds, "tf32": False}
        Path(args.json).write_text(json.dumps({"provenance": provenance(), "info": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
