"""Where DistillMOS's time goes, stage by stage, torchmos against the reference package.

For one clip of each length, every stage of its first 7.68 s crop is run alone (median
CPU time of ``--reps`` runs, the process CPU time being the less disturbed by other
processes): cropping and padding, peak normalisation, the compressed STFT, the CNN, the
transformer head; and the whole call over all its crops (what the stages times the number
of crops do not account for is allocation, copies, Python and, for the reference, its
batching of all crops at once).
``cold`` is the first call in a fresh process (thread-pool start, oneDNN's kernel
set-up), ``warm`` the median of the following ones. Then a torch.profiler table of one
warm call: the ten operators with the most self CPU time. Each CPU setting
(benchmarks/cpu_settings.py) runs in its own process.

    python benchmarks/bench_distillmos_stages.py --json benchmarks/results/distillmos_stages.json
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


def cpu_ms(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        ts.append(time.process_time() - t)
    return 1000 * statistics.median(ts)


def one_clip(x, m, ref, reps: int) -> dict:
    """Stage times of torchmos and the reference for the clip ``x``."""
    import torch
    from distillmos.sqa import _complex_compressed
    from torch import nn
    from torch.profiler import ProfilerActivity, profile

    from torchmos.models import distillmos_splice as sp
    from torchmos.models.distillmos import HOP, SEQ_LEN, WIN, crop_starts

    n = x.shape[0]
    crop = nn.functional.pad(x, (0, max(0, SEQ_LEN - n)))[None, :SEQ_LEN]
    norm = crop / (crop.abs().amax(dim=1, keepdim=True) + 1e-8)
    # torchmos
    z = m.cnn.zero_from(sp.content_end(norm))
    width = m.cnn.frames_needed(z)
    part = norm[:, : width * HOP + (WIN - HOP) // 2] if width < 768 else norm
    spec = m.cnn.spectrum(part).contiguous(memory_format=torch.channels_last)
    feat = m.cnn(spec, z if width < 768 else None).transpose(1, 2)
    ours = {
        "crop + pad": cpu_ms(lambda: nn.functional.pad(x, (0, max(0, SEQ_LEN - n)))[None, :SEQ_LEN], reps),
        "normalise + find the zero tail": cpu_ms(
            lambda: m.cnn.zero_from(sp.content_end(crop / (crop.abs().amax(dim=1, keepdim=True) + 1e-8))),
            reps),
        "STFT + compression": cpu_ms(
            lambda: m.cnn.spectrum(part).contiguous(memory_format=torch.channels_last), reps),
        "CNN": cpu_ms(lambda: m.cnn(spec, z if width < 768 else None), reps),
        "head (transformer + pooling)": cpu_ms(lambda: m.transformer_pool_attn(feat), reps),
        "whole call": cpu_ms(lambda: m([x]), reps),
    }
    crops = len(crop_starts(n))  # the stages are per crop (the first); the call runs them all
    ours["not in a stage"] = ours["whole call"] - crops * sum(v for k, v in ours.items() if k != "whole call")
    # the reference
    rspec = _complex_compressed(norm, 160, 320).permute(0, 3, 1, 2)
    rfeat = torch.flatten(ref.cnn.cnn(rspec), 1, -2).permute(0, 2, 1)
    theirs = {
        "crop + pad": ours["crop + pad"],
        "normalise + find the zero tail": cpu_ms(
            lambda: crop / (torch.max(torch.abs(crop), dim=1, keepdim=True).values + 1e-8), reps),
        "STFT + compression": cpu_ms(lambda: _complex_compressed(norm, 160, 320).permute(0, 3, 1, 2),
                                     reps),
        "CNN": cpu_ms(lambda: ref.cnn.cnn(rspec), reps),
        "head (transformer + pooling)": cpu_ms(lambda: ref.transformer_pool_attn(rfeat), reps),
        "whole call": cpu_ms(lambda: ref(x[None]), reps),
    }
    theirs["not in a stage"] = theirs["whole call"] - crops * sum(
        v for k, v in theirs.items() if k != "whole call")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        m([x])
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    return {
        "crops": crops, "cnn_frames": width, "torchmos_ms": ours, "reference_ms": theirs,
        "profiler_top_ops": [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1000, "calls": e.count}
                             for e in top]}


def measure(args: argparse.Namespace) -> dict:
    import torch

    from torchmos import synth
    from torchmos.models.distillmos import DistillMOSModel

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from distillmos import ConvTransformerSQAModel

    with contextlib.redirect_stdout(io.StringIO()):
        ref = ConvTransformerSQAModel().eval()
    m = DistillMOSModel.from_pretrained()
    out = {"info": child_info(), "clips": {}}
    with torch.inference_mode():
        first = synth.speech_like(3.0, 16000, seed=5)
        t = time.process_time()
        m([first])
        cold_ours = 1000 * (time.process_time() - t)
        t = time.process_time()
        ref(first[None])
        cold_ref = 1000 * (time.process_time() - t)
        out["cold_first_call_ms"] = {"torchmos": cold_ours, "reference": cold_ref}
        for sec in args.seconds:
            x = synth.degrade(synth.speech_like(sec, 16000, seed=1), 16000, "noise_20dB", seed=1)
            out["clips"][f"{sec:g} s"] = one_clip(x, m, ref, args.reps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=float, nargs="+", default=[1.5, 3.5, 6.0, 15.0])
    add_arguments(ap)
    args = parse(ap, measure)
    if args is None:  # a child: it printed its measurement
        return
    from common import provenance

    passed = ["--threads", str(args.threads), "--reps", str(args.reps), "--seconds", *map(str, args.seconds)]
    results = {"provenance": provenance(), "cpu_flags": cpu_flags(), "command": " ".join(["python", *sys.argv]),
               "settings": [run_child(__file__, s, passed) for s in args.settings]}
    for r in results["settings"]:
        print(f"\n### CPU setting {r['setting']['name']}: capability {r['info']['torch_cpu_capability']}, "
              f"{r['info']['threads']} threads; CPU ms per call (median of {args.reps}); first call in a fresh "
              f"process: torchmos {r['cold_first_call_ms']['torchmos']:.0f} ms, reference "
              f"{r['cold_first_call_ms']['reference']:.0f} ms")
        clips = r["clips"]
        stages = list(next(iter(clips.values()))["torchmos_ms"])
        print("\n| stage | " + " | ".join(f"{c} torchmos | {c} reference" for c in clips) + " |")
        print("|---|" + "---|---|" * len(clips))
        for s in stages:
            print(f"| {s} | " + " | ".join(f"{v['torchmos_ms'][s]:.1f} | {v['reference_ms'][s]:.1f}"
                                          for v in clips.values()) + " |")
        print("| CNN frames (of 768) | " + " | ".join(f"{v['cnn_frames']} | 768" for v in clips.values()) + " |")
        print("| crops per call | " + " | ".join(f"{v['crops']} | {v['crops']}" for v in clips.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
