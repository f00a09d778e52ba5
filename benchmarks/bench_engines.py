"""Throughput of the corpus engines (Ray Data, Hugging Face datasets, Lhotse) against one process.

    python benchmarks/bench_engines.py [--files 48] [--workers 2] [--model distillmos] [--json FILE]

One corpus of generated 16 kHz WAV files (3-8 s, the demo's degradations) is scored, in one
run, by: one process reading each file and calling ``torchmos.functional`` on batches (the
baseline, with every torch thread); ``MOSPredictor`` in Ray Data's ``map_batches`` on a
local cluster of ``--workers`` CPUs (one actor per CPU); ``add_mos`` on a ``datasets.Dataset``
of paths in one process and in ``--workers`` processes; and ``score_cuts`` on a Lhotse
``CutSet``. Each engine's wall time includes starting its workers and loading the model
there (not starting the Ray cluster, timed apart), so on a small corpus it is an
upper bound on the per-file cost. The table gives audio seconds scored per wall second
and the ratio to the baseline, plus the largest difference from the baseline's scores
(every engine scores as torchmos.functional). An engine that is not installed is listed
as skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, provenance  # noqa: E402

import torchmos.functional as F  # noqa: E402
from torchmos import audio  # noqa: E402


def write_corpus(folder: Path, n: int) -> tuple[list[str], float]:
    paths, seconds = [], 0.0
    for i, x in enumerate(corpus(n, seed=7, lo=3.0, hi=8.0)):
        p = folder / f"u{i:04d}.wav"
        sf.write(p, x.numpy(), 16000, subtype="PCM_16")
        paths.append(str(p))
        seconds += x.numel() / 16000
    return paths, seconds


def baseline(paths: list[str], model: str, batch: int) -> tuple[float, list[float]]:
    net_scores: list[float] = []
    t0 = time.perf_counter()
    F.get_model(model)  # loading is part of the job, as for the engines
    for i in range(0, len(paths), batch):
        clips = [audio.load(p, target_fs=16000).samples for p in paths[i : i + batch]]
        with torch.inference_mode():
            net_scores += F.score(F.get_model(model), F.hub.get_card(model), clips, 16000).tolist()
    return time.perf_counter() - t0, net_scores


def run_ray(paths: list[str], model: str, batch: int, workers: int) -> dict[str, Any]:
    import ray

    from torchmos.adapters.ray import MOSPredictor

    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, object_store_memory=300 * 1024**2)
    start = time.perf_counter() - t0
    try:
        ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=max(workers * 4, 1))
        t0 = time.perf_counter()
        rows = ds.map_batches(MOSPredictor, fn_constructor_kwargs={"model": model},
                              compute=ray.data.ActorPoolStrategy(size=workers), batch_size=batch).take_all()
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    by_path = {r["path"]: r[model] for r in rows}
    return {"wall_s": wall, "scores": [by_path[p] for p in paths], "cluster_start_s": round(start, 2)}


def run_datasets(paths: list[str], model: str, batch: int, workers: int | None) -> dict[str, Any]:
    import datasets

    from torchmos.adapters.datasets import add_mos

    datasets.disable_progress_bars()
    F._clear_cache()  # the workers load their own model; so does this process
    ds = datasets.Dataset.from_dict({"audio": paths})
    t0 = time.perf_counter()
    out = add_mos(ds, model=model, batch_size=batch, num_proc=workers)
    return {"wall_s": time.perf_counter() - t0, "scores": list(out[model])}


def run_lhotse(paths: list[str], model: str, batch: int) -> dict[str, Any]:
    import lhotse

    from torchmos.adapters.lhotse import score_cuts

    cuts = lhotse.CutSet.from_cuts(
        lhotse.MonoCut(id=f"c{i}", start=0.0, duration=r.duration, channel=0, recording=r)
        for i, r in enumerate(lhotse.Recording.from_file(p) for p in paths))
    F._clear_cache()
    t0 = time.perf_counter()
    scored = score_cuts(cuts, model=model, batch_size=batch)
    return {"wall_s": time.perf_counter() - t0, "scores": [c.custom[model] for c in scored]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=48)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--model", default="distillmos")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    where = provenance()
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        paths, seconds = write_corpus(Path(tmp), args.files)
        F._clear_cache()
        base_wall, base_scores = baseline(paths, args.model, args.batch)
        rows = [{"engine": "one process (torchmos.functional)", "workers": 1, "wall_s": round(base_wall, 2),
                 "audio_s_per_s": round(seconds / base_wall, 2), "vs_one_process": 1.0, "max_abs_diff": 0.0}]
        plans = [
            ("ray", f"Ray Data map_batches(MOSPredictor), {args.workers} actors", args.workers,
             lambda: run_ray(paths, args.model, args.batch, args.workers)),
            ("datasets", "datasets add_mos, num_proc=None", 1, lambda: run_datasets(paths, args.model, args.batch, None)),
            ("datasets", f"datasets add_mos, num_proc={args.workers}", args.workers,
             lambda: run_datasets(paths, args.model, args.batch, args.workers)),
            ("lhotse", "lhotse score_cuts", 1, lambda: run_lhotse(paths, args.model, args.batch)),
        ]
        for module, name, workers, fn in plans:
            if importlib.util.find_spec(module) is None:
                rows.append({"engine": name, "workers": workers, "skipped": f"{module} is not installed"})
                continue
            got = fn()
            diff = float(np.max(np.abs(np.asarray(got["scores"], dtype=np.float64) - np.asarray(base_scores))))
            row = {"engine": name, "workers": workers, "wall_s": round(got["wall_s"], 2),
                   "audio_s_per_s": round(seconds / got["wall_s"], 2),
                   "vs_one_process": round(base_wall / got["wall_s"], 3), "max_abs_diff": diff}
            if "cluster_start_s" in got:
                row["ray_cluster_start_s"] = got["cluster_start_s"]
            rows.append(row)
    print(f"{args.files} files, {seconds:.1f} s of 16 kHz audio, model {args.model}, batch {args.batch}, "
          f"{where['cores']} cores ({where['cpu']})\n")
    print("| engine | workers | wall (s) | audio s / s | vs one process | max abs diff |\n|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['engine']} | {r['workers']} | skipped: {r['skipped']} | | | |")
        else:
            print(f"| {r['engine']} | {r['workers']} | {r['wall_s']} | {r['audio_s_per_s']} | "
                  f"{r['vs_one_process']} | {r['max_abs_diff']:.1e} |")
    if args.json:
        versions = {}
        for pkg in ("ray", "datasets", "lhotse", "torchcodec"):
            try:
                import importlib.metadata as md

                versions[pkg] = md.version(pkg)
            except Exception:  # not installed
                versions[pkg] = None
        result = {**where, "engine_versions": versions, "files": args.files, "audio_seconds": round(seconds, 1),
                  "model": args.model, "batch": args.batch, "workers": args.workers,
                  "torch_threads": torch.get_num_threads(), "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    sys.exit(main())
