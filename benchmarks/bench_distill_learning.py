"""What the learning test of ``torchmos train distill`` needs: a half-width, half-depth
DistillMOS student distilled from the official DistillMOS on generated speech-like clips,
its agreement with the teacher on held-out files, for a data shape (files x versions,
clip length), steps, learning rate and seed.

    python benchmarks/bench_distill_learning.py --files 96 --variants 3 --seconds 7.5 --steps 360
    python benchmarks/bench_distill_learning.py --files 24 --variants 6 --seconds 3 --steps 240 --json out.json

Held out: 6 files in 4 versions (the recipe's validation, as in the test) and 16 files in
4 versions of another seed (the test's set: what ``tests/unit/test_distill_learning.py``
asserts on), and the fit on 12 of the training files (their training versions), so a
student that memorises its data shows as one. Each run appends one JSON line to
``--json`` with the provenance of :mod:`common`. Minutes per run on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distill import agreement as _agreement  # noqa: E402
from bench_distill import write_clips  # noqa: E402
from common import provenance  # noqa: E402

from torchmos import audio, cli, synth  # noqa: E402
from torchmos.models.distillmos import DistillMOSModel  # noqa: E402
from torchmos.training.distill_data import Items, make_items  # noqa: E402


def agreement(folder: Path, seconds: float, variants: int, seed: int, stream: str, student, teacher,
              first: int | None = None) -> dict[str, float]:
    entries = audio.find_audio([str(folder)])[:first]
    items = Items(entries, [])
    items.items = make_items(items.ids, [seconds] * len(entries), variants, seed=seed, crop_seconds=7.68,
                             kinds=list(synth.KINDS), clean_fraction=0.1, stream=stream)
    clips = [items.load(i) for i in range(len(items))]
    t, s = teacher(clips), student(clips)
    return {"clips": len(clips), **_agreement(s, t), "teacher_spread": round(float(t.max() - t.min()), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=96, help="training files (96)")
    ap.add_argument("--variants", type=int, default=3, help="degraded versions of each (3)")
    ap.add_argument("--seconds", type=float, default=7.5, help="clip length (7.5 s)")
    ap.add_argument("--steps", type=int, default=360)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="append the result to this JSON-lines file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    where = provenance()
    root = Path(tempfile.mkdtemp(prefix="bench-distill-learning-"))
    try:
        train, held, test = root / "train", root / "held", root / "test"
        for folder, n, seed in ((train, a.files, 0), (held, 6, 50_000), (test, 16, 60_000)):
            write_clips(folder, n, a.seconds, seed, name="c{1:02d}")  # the test's names: its draws
        t0 = time.perf_counter()
        code = cli.main(["train", "distill", "--audio", str(train), "--valid", str(held), "--out", str(root / "run"),
                         "--teacher", "distillmos", "--width", "0.5", "--depth", "0.5", "--steps", str(a.steps),
                         "--batch-size", "8", "--variants", str(a.variants), "--valid-variants", "4",
                         "--lr", str(a.lr), "--val-every", "0", "--seed", str(a.seed), "--no-progress"])
        if code:
            raise SystemExit(f"torchmos train distill: exit {code}")
        train_s = time.perf_counter() - t0
        student = DistillMOSModel.from_pretrained(checkpoint=root / "run" / "student.pt")
        teacher = DistillMOSModel.from_pretrained()
        res = {"provenance": where, "files": a.files, "variants": a.variants, "seconds": a.seconds,
               "steps": a.steps, "lr": a.lr, "seed": a.seed, "threads": a.threads, "train_s": round(train_s, 1),
               "held_6x4": agreement(held, a.seconds, 4, 99, "test", student, teacher),
               "test_16x4": agreement(test, a.seconds, 4, 99, "test", student, teacher),
               "fit_12_training_files": agreement(train, a.seconds, a.variants, a.seed, "train", student, teacher,
                                                  first=12)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(res))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
