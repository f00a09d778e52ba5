"""Distillation and pruning (issue 14): student size against agreement with the teacher.

    python benchmarks/bench_distill.py --json benchmarks/results/distill.json
    python benchmarks/bench_distill.py --quick          # a smoke run of a few minutes

Teacher: the official DistillMOS. Data: generated speech-like clips (``torchmos.synth``),
``--train-files`` for training and ``--eval-files`` held out, each file in several
degraded versions (``torchmos train distill``'s degradations). Students, each trained by
``torchmos train distill`` (the commands are recorded in the results):

* the DistillMOS architecture at three sizes (``--width``/``--depth``), random start;
* a SCOREQ-style wav2vec 2.0 NR predictor, small (no SCOREQ weights are available here:
  it starts from random weights), first distilled whole from the same teacher, then
  pruned (``--student pruned-scoreq --keep-layers --keep-heads``) and fine-tuned; the
  pruned model before its fine-tuning is measured too.

For every model: parameters, speed as x real time (audio seconds per second of compute,
``--threads`` threads, the best of ``--repeat`` timings, all models timed side by side in
this run), and agreement with the teacher on the held-out clips (Pearson, Spearman, MAE).
The teacher scores each (clip, degradation) once; its scores are cached and shared by
all runs. Writes ``--json`` with the provenance of :mod:`common`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

from torchmos import cli, synth
from torchmos.models.distillmos import DistillMOSModel
from torchmos.models.scoreq import ScoreqModel
from torchmos.models.scoreq_prune import keep_layers, prune_heads
from torchmos.training import pearson, spearman
from torchmos.training.distill_data import Items, make_items

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance  # noqa: E402

SIZES = [(0.5, 0.5), (0.25, 0.5), (0.125, 0.3)]  # (width, depth) of the DistillMOS students
# the small SCOREQ-style wav2vec 2.0 (BASE layout: 64-wide heads)
SMALL_W2V = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 512,
             "num_conv_pos_embedding_groups": 8, "num_conv_pos_embeddings": 32, "conv_dim": (64,) * 7}
KEEP = (2, 2)  # layers, heads per layer of the pruned model


def write_clips(folder: Path, n: int, seconds: float, seed: int, name: str = "s{0:05d}") -> Path:
    """``n`` speech-like clips (seeds ``seed`` ...) in ``folder``, named ``name.format(seed + i, i)``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        x = synth.speech_like(seconds, 16000, seed=seed + i)
        sf.write(str(folder / f"{name.format(seed + i, i)}.wav"), x.numpy(), 16000)
    return folder


def train(argv: list[str], log: list[dict]) -> float:
    """``torchmos train distill ARGV`` in this process; returns the wall time."""
    t = time.perf_counter()
    code = cli.main(["train", "distill", *argv])
    wall = time.perf_counter() - t
    if code:
        raise RuntimeError(f"torchmos train distill {' '.join(argv)}: exit {code}")
    log.append({"command": "torchmos train distill " + " ".join(argv), "wall_s": round(wall, 1)})
    return wall


def speeds(nets: list[torch.nn.Module], clips: list[torch.Tensor], repeat: int) -> list[float]:
    """x real time of each net: audio seconds scored per second, the best of ``repeat``
    rounds; every round times all nets in turn (side by side on a shared machine)."""
    best = [float("inf")] * len(nets)
    with torch.inference_mode():
        for net in nets:
            net(clips[:1])  # warm-up
        for _ in range(repeat):
            for k, net in enumerate(nets):
                t = time.perf_counter()
                net(clips)
                best[k] = min(best[k], time.perf_counter() - t)
    return [sum(c.shape[0] for c in clips) / 16000 / b for b in best]


def agreement(pred: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    return {"pearson": round(pearson(pred, teacher), 4), "spearman": round(spearman(pred, teacher), 4),
            "mae": round(float((pred.double() - teacher.double()).abs().mean()), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-files", type=int, default=96)
    ap.add_argument("--eval-files", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=7.5, help="length of the generated clips (7.5 s)")
    ap.add_argument("--variants", type=int, default=3, help="degraded versions per training file (3)")
    ap.add_argument("--eval-variants", type=int, default=4, help="degraded versions per held-out file (4)")
    ap.add_argument("--steps", type=int, default=360, help="steps of each DistillMOS student (360)")
    ap.add_argument("--scoreq-steps", type=int, default=150, help="steps of the whole small wav2vec 2.0 (150)")
    ap.add_argument("--prune-steps", type=int, default=60, help="fine-tuning steps after pruning (60)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="timing rounds (the best of each model counts)")
    ap.add_argument("--quick", action="store_true", help="smoke setting: 12+4 files, 2 variants, 6 steps")
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep data and runs in DIR (default: temp)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.quick:
        a.train_files, a.eval_files, a.variants, a.eval_variants = 12, 4, 2, 2
        a.steps = a.scoreq_steps = a.prune_steps = 6
    torch.set_num_threads(a.threads)
    where = provenance()
    t_all = time.perf_counter()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-distill-"))
    train_dir = write_clips(root / "train", a.train_files, a.seconds, seed=0)
    eval_dir = write_clips(root / "eval", a.eval_files, a.seconds, seed=100_000)
    cache = root / "teacher_cache"
    common = ["--audio", str(train_dir), "--valid", str(eval_dir), "--teacher", "distillmos", "--cache", str(cache),
              "--variants", str(a.variants), "--valid-variants", str(a.eval_variants), "--batch-size",
              str(a.batch_size), "--threads", str(a.threads), "--seed", "1", "--val-every", "0", "--no-progress",
              "--overwrite"]
    log: list[dict] = []

    # the held-out clips, exactly as the recipe's validation builds them
    eval_items = Items(sorted_entries(eval_dir), [])
    durs = [a.seconds] * len(eval_items.entries)
    eval_items.items = make_items(eval_items.ids, durs, a.eval_variants, 1, 7.68, list(synth.KINDS), 0.1, "valid")
    clips = [eval_items.load(i) for i in range(len(eval_items))]
    teacher = DistillMOSModel.from_pretrained()
    with torch.inference_mode():
        t_scores = teacher(clips)

    nets: dict[str, tuple[torch.nn.Module, dict]] = {"teacher (official DistillMOS)": (teacher, {"kind": "teacher"})}
    for width, depth in SIZES:
        out = root / f"dm_w{width}_d{depth}"
        wall = train([*common, "--out", str(out), "--width", str(width), "--depth", str(depth), "--steps",
                      str(a.steps)], log)
        net = DistillMOSModel.from_pretrained(checkpoint=out / "student.pt")
        nets[f"DistillMOS w{width} d{depth}"] = (net, {"kind": "distillmos", "width": width, "depth": depth,
                                                       "size": net.size, "steps": a.steps, "train_s": round(wall, 1)})

    small = root / "scoreq_small_init.pt"
    with torch.random.fork_rng():
        torch.manual_seed(1)
        torch.save(ScoreqModel("nr", **SMALL_W2V).to_official_state_dict(), small)
    whole = root / "scoreq_small"
    wall = train([*common, "--out", str(whole), "--student", "pruned-scoreq", "--student-init", str(small),
                  "--train-cnn", "--lr", "3e-4", "--steps", str(a.scoreq_steps)], log)
    net = ScoreqModel.from_pretrained(checkpoint=whole / "student.pt")
    nets["SCOREQ-style small (4 layers x 4 heads)"] = (net, {"kind": "scoreq", "steps": a.scoreq_steps,
                                                            "train_s": round(wall, 1), "config": SMALL_W2V})
    cut = ScoreqModel.from_pretrained(checkpoint=whole / "student.pt")
    keep_layers(cut, KEEP[0])
    prune_heads(cut, KEEP[1])
    nets[f"pruned to {KEEP[0]} layers x {KEEP[1]} heads, not fine-tuned"] = (cut, {"kind": "pruned", "steps": 0})
    pruned = root / "scoreq_pruned"
    wall = train([*common, "--out", str(pruned), "--student", "pruned-scoreq", "--student-init",
                  str(whole / "student.pt"), "--keep-layers", str(KEEP[0]), "--keep-heads", str(KEEP[1]),
                  "--train-cnn", "--lr", "1e-4", "--steps", str(a.prune_steps)], log)
    net = ScoreqModel.from_pretrained(checkpoint=pruned / "student.pt")
    nets[f"pruned to {KEEP[0]} layers x {KEEP[1]} heads, fine-tuned"] = (
        net, {"kind": "pruned", "steps": a.prune_steps, "train_s": round(wall, 1)})

    rtf = speeds([net for net, _ in nets.values()], clips[:8], a.repeat)  # the held-out clips as they are
    rows = []
    for (name, (net, info)), x_rt in zip(nets.items(), rtf):
        with torch.inference_mode():
            scores = t_scores if info["kind"] == "teacher" else net(clips)
        rows.append({"model": name, "parameters": sum(p.numel() for p in net.parameters()),
                     "x_real_time": round(x_rt, 1), **agreement(scores, t_scores),
                     **info})
        print(f"{name:45s} {rows[-1]['parameters']:>10,d} params  {rows[-1]['x_real_time']:7.1f} x RT  "
              f"r {rows[-1]['pearson']:.3f} rho {rows[-1]['spearman']:.3f} MAE {rows[-1]['mae']:.3f}", flush=True)
    result = {"benchmark": "distill", "quick": a.quick, "threads": a.threads, "train_files": a.train_files,
              "eval_files": a.eval_files, "seconds": a.seconds, "variants": a.variants,
              "eval_variants": a.eval_variants, "eval_clips": len(clips), "batch_size": a.batch_size,
              "teacher_score_range": [round(float(t_scores.min()), 3), round(float(t_scores.max()), 3)],
              "rows": rows, "commands": log, "total_s": round(time.perf_counter() - t_all, 1),
              "provenance": where}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def sorted_entries(folder: Path):
    from torchmos import audio

    return audio.find_audio([str(folder)])


if __name__ == "__main__":
    sys.exit(main())
