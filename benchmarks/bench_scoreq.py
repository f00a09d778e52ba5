"""SCOREQ throughput and error: torchmos (fp32 exact, bf16) against the port scoreq-pytorch.

One run, side by side, file by file, interleaved rounds, median time per method,
reported as ratios (timings on shared machines are noisy; ratios from the same run are
what we report). Both sides load the *same* random weights of the full wav2vec 2.0 BASE
architecture: the port's model is built with random weights, its ``state_dict()`` (the
official file layout) is saved, and both the port (``SCOREQScoreTorch(ckpt_path=...)``) and
torchmos (``ScoreqModel.from_pretrained(checkpoint=...)``) load that file.

    python benchmarks/bench_scoreq.py                        # 2 threads, 10 clips of 2-15 s
    python benchmarks/bench_scoreq.py --threads 2 --rounds 3 --clips 10 --json out.json
    python benchmarks/bench_scoreq.py --setting avx2 --json benchmarks/results/scoreq_avx2.json

``--setting avx2`` re-runs the measurement in a process capped at AVX2 + FMA (the common
x86 CPU; benchmarks/cpu_settings.py); the results record the caps and the CPU's flags.

Methods: the port file by file (its ``score()``, under no_grad); torchmos fp32 file by
file; torchmos fp32 given the whole list in one call (on a CPU only clips of equal padded
length share a batch; on an accelerator clips of similar length are packed into padded
batches; scores unchanged); torchmos bf16 (bf16 weights + autocast) file by file, only where the CPU has native bf16
(``bf16_native`` in the results; not under ``--setting avx2``). Errors: max |MOS difference|
and max |embedding difference| against the port, on the corpus and on the real speech
of ../shared/data/speech when it is present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import corpus, provenance, real_speech
from cpu_settings import SETTINGS, cpu_flags

from torchmos.models.distillmos import bf16_supported
from torchmos.models.scoreq import HOP, ScoreqModel


def port_model(path: Path, seed: int = 0):
    """The port with random (but non-trivial) weights, saved to ``path``, then loaded by its own API."""
    from scoreq_pytorch.scoreq_torch import SCOREQModel, SCOREQScoreTorch

    torch.manual_seed(seed)
    m = SCOREQModel("nr")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        m.model.mos_layer.weight.copy_(torch.randn(m.model.mos_layer.weight.shape, generator=g))
        m.model.mos_layer.bias.fill_(3.0)
    torch.save(m.model.state_dict(), path)
    return SCOREQScoreTorch(ckpt_path=str(path), data_domain="natural", mode="nr", device="cpu")


def port_embedding(port, x: torch.Tensor) -> torch.Tensor:
    from scoreq_pytorch.wav2vec2 import pad_tensor_to_multiple

    with torch.no_grad():
        w, _ = pad_tensor_to_multiple(x[None, None], multiple=HOP, dim=-1, value=0.0)
        return port.model.model.pt_model(w)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--json", default=None)
    ap.add_argument("--setting", default=None, choices=list(SETTINGS),
                    help="re-run under this CPU setting (default: the environment as it is)")
    args = ap.parse_args()
    if args.setting is not None:
        import subprocess
        import sys

        env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                                "MKL_ENABLE_INSTRUCTIONS")}
        env.update(SETTINGS[args.setting])
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        argv = [a for i, a in enumerate(sys.argv[1:]) if a != "--setting" and sys.argv[i] != "--setting"]
        raise SystemExit(subprocess.call([sys.executable, __file__, *argv], env=env))
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    where = provenance()  # the tree as the run starts

    tmp = Path(tempfile.mkdtemp(prefix="bench-scoreq-"))
    ckpt = tmp / "adapt_nr_telephone.pt"
    port = port_model(ckpt)
    fp32 = ScoreqModel.from_pretrained(checkpoint=ckpt, card="scoreq-nr-natural", mode="nr")
    methods = {
        "scoreq-pytorch 0.1.0, file by file": lambda xs: [float(port.score(x)) for x in xs],
        "torchmos fp32, file by file": lambda xs: [float(fp32([x])) for x in xs],
        "torchmos fp32, whole list in one call": lambda xs: fp32(xs).tolist(),
    }
    # bf16 only where the CPU runs it natively: emulated (e.g. under the AVX2 cap) it is
    # an order of magnitude slower than fp32 and would take most of the run
    if bf16_supported():
        bf16 = ScoreqModel.from_pretrained(checkpoint=ckpt, card="scoreq-nr-natural", mode="nr", precision="bf16")
        methods["torchmos bf16 autocast, file by file"] = lambda xs: [float(bf16([x])) for x in xs]
    clips = corpus(args.clips, lo=2.0, hi=15.0)
    real = real_speech()
    audio_s = sum(x.shape[0] for x in clips) / 16000
    times: dict[str, list[float]] = {k: [] for k in methods}
    scores: dict[str, torch.Tensor] = {}
    for fn in methods.values():  # warm-up
        fn([clips[0][:32000]])
    for _ in range(args.rounds):
        for name, fn in methods.items():
            t = time.perf_counter()
            s = fn(clips)
            times[name].append(time.perf_counter() - t)
            scores[name] = torch.tensor(s)

    # errors against the port: scores (corpus + real speech) and embeddings
    real_scores = {name: torch.tensor(fn(real)) for name, fn in methods.items()} if real else {}
    everything = clips + real
    ref_emb = torch.stack([port_embedding(port, x) for x in everything])
    emb = {"torchmos fp32, file by file": torch.cat([fp32.embed([x]) for x in everything]),
           "torchmos fp32, whole list in one call": fp32.embed(everything),
           }
    if "torchmos bf16 autocast, file by file" in methods:
        emb["torchmos bf16 autocast, file by file"] = torch.cat([bf16.embed([x]) for x in everything])

    base = next(iter(methods))
    t_ref = statistics.median(times[base])
    rows = []
    for name in methods:
        t = statistics.median(times[name])
        rows.append({
            "method": name, "median_s": t, "x_realtime": audio_s / t, "speed_vs_port": t_ref / t,
            "max_abs_mos_diff": float((scores[name] - scores[base]).abs().max()),
            "max_abs_mos_diff_real": float((real_scores[name] - real_scores[base]).abs().max()) if real else float("nan"),
            "max_abs_embedding_diff": float((emb[name] - ref_emb).abs().max()) if name in emb else 0.0,
        })
    info = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "corpus_seconds": round(audio_s, 1), "clips": len(clips), "rounds": args.rounds,
            "real_speech_files": len(real), "bf16_native": bf16_supported(), "architecture": "wav2vec 2.0 BASE (Wav2Vec2Config()), random weights",
            "cpu_caps_env": {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                            "MKL_ENABLE_INSTRUCTIONS", "OMP_WAIT_POLICY")},
            "cpu_flags": cpu_flags()}
    print(f"\nSCOREQ NR, {info['clips']} clips / {info['corpus_seconds']} s of audio (2-15 s each), "
          f"{args.threads} threads, median of {args.rounds} interleaved rounds; torch {info['torch']}, "
          f"CPU capability {info['cpu_capability']}; errors also over {len(real)} real speech files\n")
    print("| method | median time (s) | x real time | speed vs port | max abs MOS diff | max abs MOS diff (real) | max abs embedding diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['median_s']:.2f} | {r['x_realtime']:.1f} | {r['speed_vs_port']:.2f}x | "
              f"{r['max_abs_mos_diff']:.1e} | {r['max_abs_mos_diff_real']:.1e} | {r['max_abs_embedding_diff']:.1e} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"provenance": where, "info": info, "rows": rows}, indent=2))
    ckpt.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
