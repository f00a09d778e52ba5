"""VQScore scoring throughput: clips/s and real-time factor, batched vs clip by clip.

    python benchmarks/bench_vqscore.py                      # 2 threads, full-size model
    python benchmarks/bench_vqscore.py --threads 1 --clips 64 --json benchmarks/results/vqscore.json
    python benchmarks/bench_vqscore.py --reference-repo /path/to/JasonSWFu/VQscore

The model is the full-size one (2048 x 32 codebook, widths 128/64) with random weights:
the compute does not depend on the values. Three ways of scoring the same clips:

* ``per-clip``: ``max_batch_frames=0``, one clip at a time (as the authors' scripts);
* ``batched``: the default grouping (clips sorted by length, up to 8192 padded frames);
* ``one batch``: everything in one padded batch.

Each is timed ``--repeat`` times; the best time is reported (the machines are shared).
RTF = processing time / audio duration (lower is faster). With ``--reference-repo``
(a checkout of the authors' repository; needs ``einops``) their quality-estimation model
scores the same clips one by one as their ``inference_folder.py`` does, and the ratio
to it is printed: the reference is never a dependency of torchmos.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from torchmos.models.vqscore import VQScoreModel


def _clips(n: int, seconds: float, mixed: bool, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if mixed:  # lengths spread over [0.5, 1.5] x seconds
        lens = (seconds * 16000 * (0.5 + torch.rand(n, generator=g))).long().tolist()
    else:
        lens = [int(seconds * 16000)] * n
    return [torch.randn(k, generator=g) * 0.1 for k in lens]


def _best(fn: Any, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _reference(repo: str) -> Any:
    """The authors' VQVAE_QE and their scoring steps, from a checkout (not a dependency)."""
    import warnings

    sys.path.insert(0, repo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from models.VQVAE_models import VQVAE_QE  # type: ignore[import-not-found]

    net = VQVAE_QE(codebook_size=2048, codebook_num=1, codebook_dim=32, orthogonal_reg_weight=0,
                   use_cosine_sim=True, ema_update=True, learnable_codebook=False,
                   stochastic_sample_codes=False, sample_codebook_temp=6, straight_through=False,
                   reinmax=False, kmeans_init=False, threshold_ema_dead_code=-1000).eval()
    window = torch.hann_window(512)

    @torch.no_grad()
    def score(clip: torch.Tensor) -> float:
        x = clip[None]
        s = torch.view_as_real(torch.stft(x, 512, 256, 512, window=window, return_complex=True))
        mag = torch.sqrt(torch.clamp(s[..., 0] ** 2 + s[..., 1] ** 2, min=1e-7)).transpose(2, 1)
        z = net.CNN_1D_encoder(mag)
        zq, _, _, _ = net.quantizer(z, stochastic=False, update=False)
        zt = z.transpose(2, 1)
        a = zt / (zt.norm(dim=-1, keepdim=True) + 1e-5)
        b = zq / (zq.norm(dim=-1, keepdim=True) + 1e-5)
        return float((a * b).sum(-1).mean())

    return score


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--seconds", type=float, default=4.0, help="clip length (mean length with --mixed)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--reference-repo", default=None, help="checkout of JasonSWFu/VQscore to compare with")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VQScoreModel(kmeans_init=False).eval().to(args.device)  # full size, random weights
    results: dict[str, Any] = {
        "torch": torch.__version__, "threads": args.threads, "device": args.device,
        "cpu": platform.processor() or platform.machine(), "clips": args.clips, "seconds": args.seconds, "rows": [],
    }
    reference = _reference(args.reference_repo) if args.reference_repo else None
    print(f"VQScore scoring, {args.clips} clips, torch {torch.__version__}, {args.threads} thread(s), {args.device}")
    print(f"{'lengths':<22} {'mode':<10} {'clips/s':>9} {'RTF':>9} {'x per-clip':>11}")
    for mixed in (False, True):
        clips = [c.to(args.device) for c in _clips(args.clips, args.seconds, mixed)]
        audio_s = sum(c.shape[0] for c in clips) / 16000
        label = f"{args.seconds:g} s each" if not mixed else f"{args.seconds / 2:g}-{1.5 * args.seconds:g} s mixed"
        times: dict[str, float] = {}
        for mode, budget in (("per-clip", 0), ("batched", 8192), ("one batch", 10**9)):
            model.max_batch_frames = budget
            times[mode] = _best(lambda clips=clips: model(clips), args.repeat)
        if reference is not None:
            cpu_clips = [c.cpu() for c in clips]
            times["reference"] = _best(lambda cpu_clips=cpu_clips: [reference(c) for c in cpu_clips], args.repeat)
        for mode, t in times.items():
            row = {"lengths": label, "mode": mode, "seconds": t, "clips_per_s": len(clips) / t,
                   "rtf": t / audio_s, "speedup_vs_per_clip": times["per-clip"] / t}
            results["rows"].append(row)
            print(f"{label:<22} {mode:<10} {row['clips_per_s']:>9.1f} {row['rtf']:>9.5f} "
                  f"{row['speedup_vs_per_clip']:>10.2f}x")
        if reference is not None:
            print(f"{'':<22} torchmos per-clip vs reference: {times['reference'] / times['per-clip']:.2f}x faster")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
