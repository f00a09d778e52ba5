"""SCOREQ's triplet loss against plain L2 regression on an unseen degradation (a miniature).

The SCOREQ paper (Ragano, Skoglund & Hines, NeurIPS 2024) claims that its contrastive
regression (triplet) loss generalises better than L2 (MSE) regression to conditions not
seen in training. This reproduces the experiment in miniature, on the synthetic labelled
speech of :func:`torchmos.synth.labelled_set` (MOS a known function of the severity of one
of four degradations: noise, clipping, lowpass, dropouts) with a small randomly
initialised encoder, trained on a CPU through the real ``torchmos train scoreq`` CLI:

    python benchmarks/bench_scoreq_loss.py                  # 4 held-out kinds x 3 methods, ~20 min
    python benchmarks/bench_scoreq_loss.py --seeds 2 --json benchmarks/results/scoreq_loss.json
    python benchmarks/bench_scoreq_loss.py --quick          # smoke test: ~10 s a run, ~2.5 min

(times on 1 thread of an x86-64 CPU: a full run trains for about 130 s, the control 20 s;
``docs/make_figures.py`` plots ``benchmarks/results/scoreq_loss.json``.)

For each held-out kind: train on the other three kinds (``--train-clips``), validate on a
small set of the same three (``--valid-clips``), test on clips of the held-out kind
(``--test-clips``, "unseen") and on fresh clips of the three seen kinds ("in-domain").
Methods (``--methods``), all on the same data with the same ``--seed``: ``scoreq``
(``--loss scoreq``, validated in reference mode against a clean set, ``--reference``:
stage 1 keeps its best epoch by that Spearman, stage 2 fits the MOS head); ``l2`` (``--loss
l2``, best epoch by validation MSE; see ``--l2-select``, ``--l2-lr-head``); and the control
``untrained``: the same random encoder never trained (one stage-1 epoch at learning rate
0), only the MOS head fitted by stage 2, which tells what training the encoder adds. Data,
training seeds and clean references change with each of ``--seeds`` repetitions.

Metrics per (held-out kind, method): the no-reference MOS's Pearson, Spearman and RMSE on
the unseen-kind test and Pearson and Spearman on the in-domain test; the reference-mode
Spearman (minus the mean distance to the clean set vs MOS) on both (for l2 and the control
too: their encoder's embedding, which nothing trained for distances); wall time of the
training run. With several seeds: mean and standard deviation over seeds (the JSON keeps
every run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

from torchmos import synth
from torchmos.models.scoreq import ScoreqModel
from torchmos.training import pearson, spearman
from torchmos.training.data import read_mos_csv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance  # noqa: E402

KINDS = list(synth.MOS_MODEL)
# method -> options of its run: the two losses, and a control whose encoder is never
# trained (one stage-1 epoch with zero learning rates; stage 2 fits the MOS head on the
# embeddings of the random encoder), to tell what training the encoder adds
METHODS = {"scoreq": ["--loss", "scoreq"], "l2": ["--loss", "l2"],
           "untrained": ["--loss", "scoreq", "--epochs", "1", "--lr-encoder", "0", "--lr-head", "0"]}
# the small random encoder known to learn on these data (about 130 s a run on 1 thread)
MODEL = ["--init", "random", "--layers", "2", "--hidden", "64", "--conv-dim", "64", "--train-cnn"]
METRICS = ["unseen_pearson", "unseen_spearman", "unseen_rmse", "indomain_pearson", "indomain_spearman",
           "ref_unseen_spearman", "ref_indomain_spearman", "train_s"]


def data_seeds(rep: int, kind: str) -> dict[str, int]:
    """Seeds of the labelled sets, distinct per repetition, held-out kind and split (apart
    by 10 000, so that no two clips share a signal or a noise seed)."""
    base = 1_000_000 * (rep + 1) + 100_000 * KINDS.index(kind)
    return {"train": base + 10_000, "valid": base + 20_000, "unseen": base + 30_000, "indomain": base + 40_000}


def make_data(root: Path, held_out: str, rep: int, args: argparse.Namespace) -> dict[str, Path]:
    seen = tuple(k for k in KINDS if k != held_out)
    seeds = data_seeds(rep, held_out)
    sizes = {"train": args.train_clips, "valid": args.valid_clips, "unseen": args.test_clips,
             "indomain": args.test_clips}
    out = {}
    for split, n in sizes.items():
        kinds = (held_out,) if split == "unseen" else seen
        out[split] = synth.labelled_set(root / split, n, seconds=args.seconds, kinds=kinds, seed=seeds[split])
    return out


def make_reference(folder: Path, rep: int, n: int, seconds: float) -> Path:
    """``n`` clean speech-like clips (seeds 9000 + 1000 * rep + i)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        x = synth.speech_like(seconds, 16000, seed=9000 + 1000 * rep + i)
        sf.write(str(folder / f"clean_{i:03d}.wav"), x.numpy(), 16000, subtype="FLOAT")
    return folder


def train(data: dict[str, Path], ref: Path, out: Path, method: str, seed: int, args: argparse.Namespace) -> float:
    """One ``torchmos train scoreq`` run in a subprocess; returns its wall time. A run of
    the same command already finished in ``out`` (``--keep``) is reused with its time."""
    cmd = [sys.executable, "-m", "torchmos.cli", "train", "scoreq", *MODEL,
           "--train", str(data["train"]), "--valid", str(data["valid"]), "--out", str(out),
           "--crop-seconds", str(args.crop_seconds), "--batch-size", str(args.batch_size),
           "--epochs", str(args.epochs), "--lr-encoder", str(args.lr_encoder), "--seed", str(seed),
           "--threads", str(args.threads), "--device", args.device, "--no-progress", "--overwrite"]
    if method != "l2" or args.l2_select == "reference":
        cmd += ["--reference", str(ref)]
    if method == "l2" and args.l2_lr_head is not None:
        cmd += ["--lr-head", str(args.l2_lr_head)]
    cmd += METHODS[method]  # last, so that they win
    done = out / "bench_done.json"
    if done.is_file() and json.loads(done.read_text())["cmd"] == cmd[1:]:
        return float(json.loads(done.read_text())["wall_s"])
    done.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.is_dir():
        (out / "train.log").write_text(res.stdout + res.stderr)
    if res.returncode:
        raise RuntimeError(f"training failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-4000:]}")
    done.write_text(json.dumps({"cmd": cmd[1:], "wall_s": wall}))
    return wall


def recipe_hash() -> str:
    """sha256 of the recipe's source, to notice it changing under a long run."""
    import torchmos.training.scoreq as recipe

    return hashlib.sha256(Path(recipe.__file__).read_bytes()).hexdigest()[:16]


def load_set(csv: Path) -> tuple[list[torch.Tensor], torch.Tensor]:
    clips, mos = [], []
    for it in read_mos_csv(csv):
        x, sr = sf.read(it.path, dtype="float32")
        assert sr == 16000
        clips.append(torch.from_numpy(x))
        mos.append(it.mos)
    return clips, torch.tensor(mos, dtype=torch.float64)


def evaluate(out: Path, data: dict[str, Path], ref: Path) -> dict[str, float]:
    nr = ScoreqModel.from_pretrained(checkpoint=out / "nr.pt", mode="nr")
    rm = ScoreqModel.from_pretrained(checkpoint=out / "ref.pt", mode="ref")
    refs = [torch.from_numpy(sf.read(str(f), dtype="float32")[0]) for f in sorted(ref.glob("*.wav"))]
    ref_emb = rm.embed(refs)
    row = {}
    for split in ("unseen", "indomain"):
        clips, mos = load_set(data[split])
        pred = nr(clips).double()
        row[f"{split}_pearson"] = pearson(pred, mos)
        row[f"{split}_spearman"] = spearman(pred, mos)
        if split == "unseen":
            row["unseen_rmse"] = float((pred - mos).pow(2).mean().sqrt())
        row[f"ref_{split}_spearman"] = spearman(-rm.distance_to_set(clips, ref_emb), mos)
    return row


def summarise(runs: list[dict], held_out: list[str], methods: list[str]) -> list[dict]:
    """Mean, standard deviation (over seeds; 0 for one), min and max of every metric per
    (held-out kind, method), and an "all" row per method averaging the kinds of each seed."""
    rows = []
    for kind in [*held_out, "all"] if len(held_out) > 1 else held_out:
        for method in methods:
            mine = [r for r in runs if r["method"] == method and (kind == "all" or r["held_out"] == kind)]
            if kind == "all":  # one value per seed: the mean over held-out kinds
                seeds = sorted({r["rep"] for r in mine})
                mine = [{m: statistics.fmean(r[m] for r in mine if r["rep"] == s) for m in METRICS} for s in seeds]
            row: dict = {"held_out": kind, "method": method, "n": len(mine)}
            for m in METRICS:
                v = [r[m] for r in mine]
                row[m] = statistics.fmean(v)
                row[m + "_std"] = statistics.stdev(v) if len(v) > 1 else 0.0
                row[m + "_min"], row[m + "_max"] = min(v), max(v)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--held-out", nargs="+", choices=KINDS, default=KINDS, help="held-out kinds (default all four)")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                    help="scoreq and l2 (the two losses) and untrained (the control: random encoder, MOS head "
                    "fitted by stage 2); default all three")
    ap.add_argument("--seeds", type=int, default=1, help="repetitions with fresh data and seeds (default 1)")
    ap.add_argument("--seed", type=int, default=1337, help="training --seed of the first repetition (default 1337)")
    ap.add_argument("--train-clips", type=int, default=400)
    ap.add_argument("--valid-clips", type=int, default=40)
    ap.add_argument("--test-clips", type=int, default=80, help="clips of each test set (default 80)")
    ap.add_argument("--reference-clips", type=int, default=16, help="clean reference clips (default 16)")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of every clip (default 2)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--crop-seconds", type=float, default=2.0)
    ap.add_argument("--lr-encoder", type=float, default=6e-4)
    ap.add_argument("--l2-select", choices=["mse", "reference"], default="mse",
                    help="how the l2 run picks its best epoch: validation MSE (default) or, like scoreq, the "
                    "reference-mode Spearman (--reference given to it too)")
    ap.add_argument("--l2-lr-head", type=float, default=None,
                    help="--lr-head of the l2 runs (default: the recipe's, 1e-3)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke setting: 60 training, 15 validation, 24 test clips, 2 epochs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of training and scoring (default 1)")
    ap.add_argument("--device", default="cpu", help="training device (default cpu)")
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="keep the data and runs in DIR (default: a temp dir); finished runs found there are "
                    "reused (to continue an interrupted benchmark; their recorded wall times count)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.train_clips, args.valid_clips, args.test_clips, args.epochs = 60, 15, 24, 2
    torch.set_num_threads(args.threads)

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-scoreq-loss-"))
    root.mkdir(parents=True, exist_ok=True)
    runs = []
    where = provenance()  # the commit and tree this run starts from
    recipe_at_start = recipe_hash()
    t_all = time.perf_counter()
    for rep in range(args.seeds):
        ref = make_reference(root / f"rep{rep}" / "reference", rep, args.reference_clips, args.seconds)
        for kind in args.held_out:
            data = make_data(root / f"rep{rep}" / f"heldout_{kind}", kind, rep, args)
            for method in args.methods:
                out = root / f"rep{rep}" / f"heldout_{kind}" / f"run_{method}"
                wall = train(data, ref, out, method, args.seed + rep, args)
                row = {"rep": rep, "seed": args.seed + rep, "held_out": kind, "method": method,
                       **evaluate(out, data, ref), "train_s": wall}
                runs.append(row)
                print(f"[rep {rep}] held out {kind:8s} {method:9s}: unseen r {row['unseen_pearson']:.3f} "
                      f"rho {row['unseen_spearman']:.3f}, in-domain r {row['indomain_pearson']:.3f}, "
                      f"ref-mode rho {row['ref_unseen_spearman']:.3f} ({wall:.0f} s)", flush=True)
    rows = summarise(runs, args.held_out, args.methods)

    info = {"torch": torch.__version__, "threads": args.threads, "device": args.device,
            "cpu": platform.processor() or platform.machine(), "seeds": args.seeds, "quick": args.quick,
            "methods": {m: " ".join(METHODS[m]) for m in args.methods},
            "held_out": args.held_out, "train_clips": args.train_clips, "valid_clips": args.valid_clips,
            "test_clips": args.test_clips, "reference_clips": args.reference_clips, "seconds": args.seconds,
            "epochs": args.epochs, "batch_size": args.batch_size, "crop_seconds": args.crop_seconds,
            "lr_encoder": args.lr_encoder, "l2_select": args.l2_select, "l2_lr_head": args.l2_lr_head, "model": " ".join(MODEL),
            "total_s": round(time.perf_counter() - t_all, 1), "recipe_sha256": recipe_at_start,
            "provenance": where}
    if recipe_hash() != recipe_at_start:
        print("warning: src/torchmos/training/scoreq.py changed during the benchmark", file=sys.stderr)
        info["recipe_sha256_end"] = recipe_hash()
    pm = "" if args.seeds == 1 else " (mean ± std over seeds)"
    print(f"\nSCOREQ loss vs L2, held-out degradation kind; {args.train_clips} training clips of the other three "
          f"kinds, {args.test_clips} test clips per set, {args.epochs} epochs, {args.seeds} seed(s){pm}; "
          f"{args.threads} thread(s), torch {info['torch']}. NR = predicted MOS, ref = minus the mean distance "
          f"to {args.reference_clips} clean clips\n")
    print("| held-out kind | method | unseen NR Pearson | unseen NR Spearman | unseen NR RMSE | in-domain NR Pearson | "
          "in-domain NR Spearman | unseen ref Spearman | in-domain ref Spearman | train time (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def cell(r: dict, m: str, fmt: str = ".3f") -> str:
        return f"{r[m]:{fmt}}" + (f" ± {r[m + '_std']:{fmt}}" if args.seeds > 1 else "")

    for r in rows:
        print(f"| {r['held_out']} | {r['method']} | " + " | ".join(cell(r, m) for m in METRICS[:-1])
              + f" | {cell(r, 'train_s', '.0f')} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows, "runs": runs}, indent=2))
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
