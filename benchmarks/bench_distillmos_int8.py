"""Would an int8 DistillMOS be a fast approximate mode for CPUs without bf16? Measured:
speed and error of a post-training statically quantised CNN (PyTorch eager-mode int8,
fbgemm engine, per-channel symmetric int8 weights, histogram-calibrated uint8
activations), against exact fp32, under the AVX2 cap (benchmarks/cpu_settings.py).

    python benchmarks/bench_distillmos_int8.py --json benchmarks/results/distillmos_int8.json

The bar for shipping it (issue 15): >= 1.5x the exact mode at <= 0.05 MOS max |error| on
the real speech of ../shared/data/speech. Calibration: eight 7.68 s speech-like clips
(torchmos.synth, the demo's degradations), never the evaluation audio. Variants: which
CNN layers run in int8 (the first layer, which sees the spectrum's wide dynamic range,
and the last may stay in fp32). The transformer head stays fp32: dynamic int8 Linear
layers disable PyTorch's fused encoder path and the head is a third of the time at most.
Speed: the CNN and head of one full 7.68 s crop (no zero padding to skip), median CPU
time, side by side with fp32 in the same process.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

from cpu_settings import add_arguments, child_info, cpu_flags, parse, run_child

VARIANTS = {"layers 1-6 int8": (0, 12), "layers 2-6 int8": (2, 12), "layers 2-5 int8": (2, 10),
            "layers 3-5 int8": (4, 10)}


def measure(args: argparse.Namespace) -> dict:
    import torch
    import torch.ao.quantization as tq
    from common import real_speech
    from torch import nn

    from torchmos import synth
    from torchmos.models.distillmos import SEQ_LEN, DistillMOSModel, crop_starts

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    torch.backends.quantized.engine = "fbgemm"
    m = DistillMOSModel.from_pretrained()
    calib = [synth.degrade(synth.speech_like(7.68, 16000, seed=100 + i), 16000, k, seed=i)[:SEQ_LEN]
             for i, k in enumerate(list(synth.DEGRADATIONS)[:8])]

    class Mixed(nn.Module):
        def __init__(self, seq: nn.Sequential, a: int, b: int) -> None:
            super().__init__()
            self.pre, self.mid, self.post = seq[:a], seq[a:b], seq[b:]
            self.q, self.dq = tq.QuantStub(), tq.DeQuantStub()

        def forward(self, x):
            return self.post(self.dq(self.mid(self.q(self.pre(x)))))

    def build(a: int, b: int) -> nn.Module:
        seq = copy.deepcopy(m.cnn.cnn).to(memory_format=torch.contiguous_format)
        net = Mixed(seq, a, b).eval()
        net.qconfig = tq.QConfig(activation=tq.HistogramObserver.with_args(reduce_range=True),
                                 weight=tq.PerChannelMinMaxObserver.with_args(
                                     dtype=torch.qint8, qscheme=torch.per_channel_symmetric))
        net.pre.qconfig = net.post.qconfig = None
        tq.prepare(net, inplace=True)
        with torch.no_grad():
            for x in calib:
                c = x[None] / (x.abs().max() + 1e-8)
                net(m.cnn.spectrum(c))
        return tq.convert(net, inplace=True)

    def score(cnn: nn.Module, x: torch.Tensor) -> float:
        w = nn.functional.pad(x, (0, max(0, SEQ_LEN - x.shape[0])))
        out = []
        for s in crop_starts(w.shape[0]):
            c = w[s: s + SEQ_LEN][None]
            c = c / (c.abs().amax(dim=1, keepdim=True) + 1e-8)
            feat = torch.flatten(cnn(m.cnn.spectrum(c)), 1, -2)
            out.append(1 + 4 * m.transformer_pool_attn(feat.transpose(1, 2)))
        return float(torch.cat(out).mean())

    def cpu_ms(fn) -> float:
        fn()
        ts = []
        for _ in range(args.reps):
            t = time.process_time()
            fn()
            ts.append(time.process_time() - t)
        return 1000 * statistics.median(ts)

    real = real_speech()
    crop = calib[0][None] / (calib[0].abs().max() + 1e-8)
    rows = []
    with torch.inference_mode():
        exact = [float(m([x])) for x in real]
        spec = m.cnn.spectrum(crop)
        fp32_ms = cpu_ms(lambda: m.transformer_pool_attn(m.cnn(spec.contiguous(memory_format=torch.channels_last))
                                                         .transpose(1, 2)))
        for name, (a, b) in VARIANTS.items():
            net = build(a, b)
            ms = cpu_ms(lambda net=net: m.transformer_pool_attn(torch.flatten(net(spec), 1, -2).transpose(1, 2)))
            err = max(abs(score(net, x) - e) for x, e in zip(real, exact)) if real else float("nan")
            rows.append({"variant": name, "crop_ms": ms, "fp32_crop_ms": fp32_ms, "speed_vs_fp32": fp32_ms / ms,
                         "max_abs_diff_real_speech": err})
    return {"info": child_info(), "real_speech_files": len(real), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    add_arguments(ap, ["avx2"])
    args = parse(ap, measure)
    if args is None:  # a child: it printed its measurement
        return
    from common import provenance

    passed = ["--threads", str(args.threads), "--reps", str(args.reps)]
    results = {"provenance": provenance(), "cpu_flags": cpu_flags(), "command": " ".join(["python", *sys.argv]),
               "settings": [run_child(__file__, s, passed) for s in args.settings]}
    for r in results["settings"]:
        print(f"\n### int8 DistillMOS CNN, CPU setting {r['setting']['name']}, {r['info']['threads']} threads; "
              f"error over {r['real_speech_files']} real speech files\n")
        print("| variant | ms per crop (CNN + head) | fp32 ms per crop | speed vs fp32 | max abs MOS diff (real) |")
        print("|---|---|---|---|---|")
        for x in r["rows"]:
            print(f"| {x['variant']} | {x['crop_ms']:.0f} | {x['fp32_crop_ms']:.0f} | {x['speed_vs_fp32']:.2f}x | "
                  f"{x['max_abs_diff_real_speech']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
