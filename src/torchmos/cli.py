"""The ``torchmos`` command: score folders of audio, list models, run the demo, train.

    torchmos score INPUT... [--model NAME|FILE] [--output FILE.csv|.jsonl] [--batch-size N]
                            [--device D] [--resume] [--reference DIR|SCP] [--reference-set DIR]
    torchmos models
    torchmos demo
    torchmos train RECIPE ...

``score`` keeps going past files it cannot read or score: each is reported on stderr and
in the summary, and the exit status is 1 if any failed (2 for a usage error).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from . import __version__, audio, functional, hub, models

# recipe name -> module exposing add_arguments(parser) and run(args) -> int
RECIPES: dict[str, str] = {
    "vqscore": "torchmos.training.vqscore",
    "sfi-distill": "torchmos.training.sfi_distill",
    "msr-utmos": "torchmos.training.msr_utmos",
    "scoreq": "torchmos.training.scoreq",
}

FIELDS = ["id", "path", "model", "score", "duration_s", "sample_rate"]


# ----------------------------------------------------------------------------- score


@dataclass
class _Job:
    entries: list[audio.AudioEntry]
    refs: dict[str, audio.AudioEntry] | None  # full-reference pairs, by id
    ref_set: torch.Tensor | None  # non-matching reference embeddings


class _Writer:
    """Rows to CSV or JSON Lines (by extension), flushed as they come, appendable."""

    def __init__(self, path: str | None, resume: bool) -> None:
        self.path = path
        self.jsonl = bool(path) and path.endswith((".jsonl", ".json"))
        exists = bool(path) and os.path.exists(path) and os.path.getsize(path) > 0
        self.fh: TextIO = open(path, "a" if resume else "w", newline="") if path else sys.stdout
        self.csv = None
        if not self.jsonl:
            self.csv = csv.DictWriter(self.fh, fieldnames=FIELDS, extrasaction="ignore")
            if not (resume and exists):
                self.csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        if self.jsonl:
            self.fh.write(json.dumps(row) + "\n")
        else:
            assert self.csv is not None
            self.csv.writerow(row)
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not sys.stdout:
            self.fh.close()


def _previous_rows(path: str | None) -> list[dict[str, Any]]:
    if not path or not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        if path.endswith((".jsonl", ".json")):
            return [json.loads(line) for line in f if line.strip()]
        return list(csv.DictReader(f))


def _resolve_model(spec: str, checkpoint: str | None) -> tuple[str, str | None]:
    """``--model`` as a card name, or as a weight file whose family is recognised."""
    if spec in hub.CARDS:
        return spec, checkpoint
    if os.path.isfile(spec):
        return models.identify(spec), spec
    raise SystemExit(f"torchmos: unknown model {spec!r}; see `torchmos models` (or give a weight file).")


def _batches(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def cmd_score(args: argparse.Namespace) -> int:
    name, checkpoint = _resolve_model(args.model, args.checkpoint)
    card = hub.get_card(name)
    try:
        entries = audio.find_audio(args.inputs)
    except audio.AudioError as e:
        print(f"torchmos: {e}", file=sys.stderr)
        return 2
    if card.mode == "ref" and not (args.reference or args.reference_set):
        print(f"torchmos: model {name!r} compares with clean speech: give --reference DIR "
              "(paired by relative path / id) or --reference-set DIR.", file=sys.stderr)
        return 2
    if card.mode != "ref" and (args.reference or args.reference_set):
        print(f"torchmos: model {name!r} is no-reference; --reference/--reference-set do not apply.",
              file=sys.stderr)
        return 2
    previous = _previous_rows(args.output) if args.resume else []
    done = {r["id"] for r in previous}
    todo = [e for e in entries if e.id not in done]
    options = {"precision": args.precision} if args.precision else {}
    model = functional.get_model(name, checkpoint, device=args.device, **options)

    failures: list[tuple[str, str]] = []
    refs = ref_set = None
    if args.reference:
        refs = {e.id: e for e in audio.find_audio([args.reference])}
    if args.reference_set:
        clips = []
        for e in audio.find_audio([args.reference_set]):
            x, sr = e.read()
            clips += audio.prepare([x], sr, card.sample_rate, min_seconds=card.min_seconds, names=[e.source], arg="")
        ref_set = model.embed(clips)

    writer = _Writer(args.output, args.resume)
    rows = list(previous)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), unit="file", desc=f"torchmos {name}", disable=args.quiet or None,
               file=sys.stderr)
    try:
        for batch in _batches(todo, args.batch_size):
            good, clips, ref_clips, meta = [], [], [], []
            for e in batch:
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", audio.SilentAudioWarning)
                        x, sr = e.read()
                        clip = audio.prepare([x], sr, card.sample_rate, min_seconds=card.min_seconds,
                                             names=[e.source], arg="")[0]
                        if refs is not None:
                            if e.id not in refs:
                                raise audio.AudioError(f"{e.source}: no reference with id {e.id!r} in {args.reference}.")
                            rx, rsr = refs[e.id].read()
                            ref_clips += audio.prepare([rx], rsr, card.sample_rate, min_seconds=card.min_seconds,
                                                       names=[refs[e.id].source], arg="")
                    for w in caught:
                        print(f"torchmos: warning: {w.message}", file=sys.stderr)
                except audio.AudioError as err:
                    failures.append((e.source, str(err)))
                    print(f"torchmos: skipped: {err}", file=sys.stderr)
                    bar.update(1)
                    continue
                good.append(e)
                clips.append(clip)
                meta.append((x.shape[0] / sr, sr))
            if not good:
                continue
            with torch.inference_mode():
                if refs is not None:
                    scores = model.distance(clips, ref_clips)
                elif ref_set is not None:
                    scores = model.distance_to_set(clips, ref_set)
                elif card.sample_rate == 0:  # native-rate model: each clip at its own rate
                    scores = model(clips, [sr for _, sr in meta])
                else:
                    scores = model(clips)
            for e, s, (dur, sr) in zip(good, scores.tolist(), meta):
                row = {"id": e.id, "path": e.source, "model": name, "score": round(float(s), 6),
                       "duration_s": round(dur, 4), "sample_rate": sr}
                writer.write(row)
                rows.append(row)
            bar.update(len(good))
    finally:
        bar.close()
        writer.close()
    _summary(rows, failures, name, card.higher_is_better)
    return 1 if failures else 0


def _summary(rows: list[dict[str, Any]], failures: list[tuple[str, str]], name: str, higher: bool) -> None:
    out = sys.stderr
    scores = [(float(r["score"]), r["id"]) for r in rows]
    print(f"\n{name}: {len(scores)} scored, {len(failures)} failed", file=out)
    if scores:
        vals = [s for s, _ in scores]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        lo, hi = min(scores), max(scores)
        print(f"  mean {mean:.4f}  std {std:.4f}  ({'higher' if higher else 'lower'} is better)", file=out)
        print(f"  min  {lo[0]:.4f}  {lo[1]}", file=out)
        print(f"  max  {hi[0]:.4f}  {hi[1]}", file=out)
    for _src, err in failures:
        print(f"  FAILED {err}", file=out)


# ----------------------------------------------------------------------------- models


def cmd_models(args: argparse.Namespace) -> int:
    cards = hub.list_cards()
    header = ("name", "mode", "domain", "rate", "range", "weights", "licence")
    rows = []
    for c in cards:
        better = "higher" if c.higher_is_better else "lower"
        rate = f"{c.sample_rate / 1000:g} kHz" if c.sample_rate else "native"
        rows.append((c.name, c.mode, c.domain, rate,
                     f"{c.score_range[0]:g}-{c.score_range[1]:g} ({better} better)",
                     hub.local_status(c), c.licence))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)) + "  " + str(r[-1]))
    if args.verbose:
        for c in cards:
            print(f"\n{c.name}: {c.title}\n  {c.summary}\n  cite: {c.citation}\n  {c.homepage}")
    print(f"\ncache: {hub.cache_dir()}  (set TORCHMOS_HOME to move it; TORCHMOS_OFFLINE=1 forbids downloads)")
    return 0


# ----------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthesise speech-like clips and degraded versions, write them, score them."""
    import soundfile as sf

    from . import synth

    out_dir = Path(args.out or tempfile.mkdtemp(prefix="torchmos-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    fs = 16000
    for kind in synth.DEGRADATIONS:
        (out_dir / kind).mkdir(exist_ok=True)
    for s in range(args.clips):
        clean = synth.speech_like(4.0, fs, seed=s)
        for kind in synth.DEGRADATIONS:
            wav = synth.degrade(clean, fs, kind, seed=s).numpy()
            sf.write(out_dir / kind / f"clip{s}.wav", wav, fs, subtype="PCM_16")
    csv_path = out_dir / "scores.csv"
    print(f"torchmos demo: {args.clips} speech-like clips x {len(synth.DEGRADATIONS)} conditions in {out_dir}",
          file=sys.stderr)
    rc = main(["score", str(out_dir), "--model", args.model, "--output", str(csv_path), "--quiet"])
    by_cond: dict[str, list[float]] = {}
    for r in _previous_rows(str(csv_path)):
        by_cond.setdefault(r["id"].split("/")[0], []).append(float(r["score"]))
    print(f"\nmean {args.model} score per condition (synthetic speech-like signals; real clean speech scores ~4+):")
    for kind in synth.DEGRADATIONS:
        v = by_cond.get(kind, [])
        if v:
            print(f"  {kind:<14} {sum(v) / len(v):.3f}")
    print(f"\nper-file scores: {csv_path}\nscore your own audio: torchmos score <folder> --output scores.csv")
    return rc


# ----------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    return int(args.recipe_run(args))


def _unavailable(recipe: str, err: ImportError):
    def run(args: argparse.Namespace) -> int:
        print(f"torchmos: the {recipe} recipe cannot be loaded: {err}", file=sys.stderr)
        return 2

    return run


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchmos", description="Learned speech-quality (MOS) predictors.")
    p.add_argument("--version", action="version", version=f"torchmos {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score audio files, folders, wav.scp files or lists")
    s.add_argument("inputs", nargs="+", help="audio files, folders (recursive), Kaldi wav.scp, or .txt lists")
    s.add_argument("--model", default="distillmos", help="model name (see `torchmos models`) or weight file")
    s.add_argument("--checkpoint", default=None, help="local weight file for --model NAME")
    s.add_argument("--output", "-o", default=None, help="FILE.csv or FILE.jsonl (default: CSV on stdout)")
    s.add_argument("--batch-size", type=int, default=8, help="files scored together (default 8)")
    s.add_argument("--device", default="cpu", help="torch device (default cpu)")
    s.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="bf16: faster, approximate (DistillMOS; see docs/performance.md)")
    s.add_argument("--resume", action="store_true", help="skip ids already in --output and append")
    s.add_argument("--reference", default=None, help="clean references paired by id (folder, scp or list)")
    s.add_argument("--reference-set", default=None, help="clean speech set for non-matching reference mode")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_score)

    m = sub.add_parser("models", help="list the predictors, their licences and local weights")
    m.add_argument("--verbose", "-v", action="store_true", help="also titles, summaries and citations")
    m.set_defaults(func=cmd_models)

    d = sub.add_parser("demo", help="score synthetic speech-like clips and degraded versions")
    d.add_argument("--out", default=None, help="folder for the generated audio (default: a temp folder)")
    d.add_argument("--clips", type=int, default=3, help="clean clips to synthesise (default 3)")
    d.add_argument("--model", default="distillmos")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a predictor on your own data")
    tsub = t.add_subparsers(dest="recipe", required=True)
    for recipe, module in RECIPES.items():
        rp = tsub.add_parser(recipe, help=f"train {recipe}")
        rp.set_defaults(func=cmd_train, recipe_module=module)
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            rp.set_defaults(recipe_run=_unavailable(recipe, e))
            continue
        mod.add_arguments(rp)
        rp.set_defaults(recipe_run=mod.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (hub.HubError, audio.AudioError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"torchmos: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
