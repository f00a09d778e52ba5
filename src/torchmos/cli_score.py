"""``torchmos score``: score files and folders, keep going past bad ones, resume a cut-off run.

Reads audio in blocks with a progress bar within long files, writes CSV or JSON Lines
rows as it goes (``FIELDS``), and repairs a cut-off last row on ``--resume``.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from . import audio, functional, hub, models

# The exit status of a usage error (argparse's own convention).
USAGE = 2

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
    """The rows of an earlier run's output (CSV or JSON Lines), for ``--resume``.

    A run killed mid-write can leave its last row cut off: that row is dropped, the file
    is truncated back to its last complete row (so the next row cannot glue onto it), and
    its file is scored again. A damaged row anywhere else is an error naming the line.
    """
    if not path or not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1  # the end of the last complete line
    rows: list[dict[str, Any]] = []
    lines = data[:end].decode("utf-8", errors="replace").splitlines()
    jsonl = path.endswith((".jsonl", ".json"))
    if jsonl:
        for lineno, line in enumerate(lines, 1):
            if line.strip():
                rows.append(_checked_row(_json_row(line), path, lineno))
    elif lines:
        reader = csv.DictReader(lines)
        for lineno, row in enumerate(reader, 2):
            rows.append(_checked_row(row, path, lineno))
    if end < len(data):  # a cut-off last row: repair the file
        print(f"torchmos: {path}: the last row was cut off (an interrupted run); it is removed and "
              "its file scored again.", file=sys.stderr)
        with open(path, "r+b") as f:
            f.truncate(end)
    return rows


def _json_row(line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return row if isinstance(row, dict) else {}


def _checked_row(row: dict[str, Any], path: str, lineno: int) -> dict[str, Any]:
    try:
        ok = bool(row.get("id")) and math.isfinite(float(row.get("score")))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UsageError(f"{path}:{lineno}: a damaged row ({row!r}); fix or delete that line, "
                         "then rerun with --resume.")
    return row


class UsageError(Exception):
    """A wrong command line: one line on stderr and exit status 2."""


def _resolve_model(spec: str, checkpoint: str | None) -> tuple[str, str | None]:
    """``--model`` as a card name, or as a weight file whose family is recognised."""
    if spec in hub.CARDS:
        return spec, checkpoint
    if os.path.isfile(spec):
        return models.identify(spec), spec
    names = sorted(hub.CARDS)
    close = [n for n in names if spec and n.startswith(spec)] or difflib.get_close_matches(spec, names, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(n) for n in close[:3])}?" if close else ""
    raise UsageError(f"unknown model {spec!r} (and no such weight file).{hint} "
                     "`torchmos models` lists the models.")


def _check_device(spec: str) -> torch.device:
    """``--device`` as a torch device that exists here, or a :class:`UsageError`."""
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"--device {spec!r} is not a torch device ({e}); use cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
            raise UsageError(f"--device {spec}: no CUDA GPU is available on this machine (torch "
                             f"{torch.__version__}, {build}); use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA "
                             "device(s), numbered from 0.")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {spec}: Apple's MPS backend is not available here; use --device cpu.")
    return dev


class _InFileProgress:
    """A second progress bar, inside one long file (read and resampled in blocks)."""

    LONG = 1 << 21  # frames (44 s at 48 kHz): shorter files show no bar of their own

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, label: str) -> Callable[[int, int], None] | None:
        if self.quiet:
            return None
        bar: Any = None

        def update(done: int, total: int) -> None:
            nonlocal bar
            if total < self.LONG:
                return
            if bar is None:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="frame", unit_scale=True, desc=f"  {label}", leave=False,
                           position=1, file=sys.stderr, disable=None)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        return update


def _batches(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def cmd_score(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be 1 or more, got {args.batch_size}.")
    if args.resume and not args.output:
        raise UsageError("--resume needs --output FILE: the rows of the earlier run are read from it.")
    if args.sha256 and not (args.checkpoint or os.path.isfile(args.model)):
        raise UsageError("--sha256 pins your own weight file: give it with --checkpoint FILE (or --model FILE).")
    if args.sha256:  # the user's own file is verified before it is ever read
        hub.check_file(args.checkpoint or args.model, args.sha256)
    name, checkpoint = _resolve_model(args.model, args.checkpoint)
    card = hub.get_card(name)
    device = _check_device(args.device)
    try:
        entries = audio.find_audio(args.inputs)
    except audio.AudioError as e:
        print(f"torchmos: {e}", file=sys.stderr)
        return USAGE
    if card.mode == "ref" and not (args.reference or args.reference_set):
        print(f"torchmos: model {name!r} compares with clean speech: give --reference DIR "
              "(paired by relative path / id) or --reference-set DIR.", file=sys.stderr)
        return USAGE
    if card.mode != "ref" and (args.reference or args.reference_set):
        print(f"torchmos: model {name!r} is no-reference; --reference/--reference-set do not apply.",
              file=sys.stderr)
        return USAGE
    repeats = len(entries) - len({audio.source_key(e.source) for e in entries})
    if repeats:
        print(f"torchmos: note: {repeats} file(s) are listed more than once; each listing is scored "
              "(repeats are named id#2, id#3, ...).", file=sys.stderr)
    previous = _previous_rows(args.output) if args.resume else []
    done = {r["id"] for r in previous}
    todo = [e for e in entries if e.id not in done]
    if args.output:
        Path(args.output).expanduser().parent.mkdir(parents=True, exist_ok=True)
    options = {"precision": args.precision} if args.precision else {}
    model = functional.get_model(name, checkpoint, device=device, **options)  # --sha256: checked above

    failures: list[tuple[str, str]] = []
    refs = ref_set = None
    if args.reference:
        refs = {e.id: e for e in audio.find_audio([args.reference])}
    if args.reference_set:
        clips = []
        for e in audio.find_audio([args.reference_set]):
            x, sr = e.read()
            clips += audio.prepare([x], sr, card.sample_rate, min_seconds=card.min_seconds, names=[e.label], arg="")
        ref_set = model.embed([c.to(device) for c in clips])

    writer = _Writer(args.output, args.resume)
    rows: list[dict[str, Any]] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), unit="file", desc=f"torchmos {name}", disable=args.quiet or None,
               file=sys.stderr)
    in_file = _InFileProgress(quiet=args.quiet)
    interrupted = False
    try:
        for batch in _batches(todo, args.batch_size):
            good, clips, ref_clips, meta = [], [], [], []
            for e in batch:
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", audio.SilentAudioWarning)
                        # read in blocks, resampled to the model's rate as they arrive
                        got = e.load(target_fs=card.sample_rate or None, progress=in_file(e.label))
                        clip = audio.prepare([got.samples], got.rate, card.sample_rate,
                                             min_seconds=card.min_seconds, names=[e.label], arg="")[0]
                        if refs is not None:
                            if e.id not in refs:
                                raise audio.AudioError(f"{e.label}: no reference with id {e.id!r} in {args.reference}.")
                            ref = refs[e.id].load(target_fs=card.sample_rate or None)
                            ref_clips += audio.prepare([ref.samples], ref.rate, card.sample_rate,
                                                       min_seconds=card.min_seconds, names=[refs[e.id].label], arg="")
                    for w in caught:
                        print(f"torchmos: warning: {w.message}", file=sys.stderr)
                except audio.AudioError as err:
                    failures.append((e.label, str(err)))
                    print(f"torchmos: skipped: {err}", file=sys.stderr)
                    bar.update(1)
                    continue
                good.append(e)
                clips.append(clip.to(device))
                meta.append((got.frames / got.file_rate, got.file_rate))
            if not good:
                continue
            with torch.inference_mode():
                if refs is not None:
                    scores = model.distance(clips, [c.to(device) for c in ref_clips])
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
    except KeyboardInterrupt:  # every row so far is written and flushed
        interrupted = True
    finally:
        bar.close()
        writer.close()
    _summary(previous + rows, failures, name, card.higher_is_better,
             resumed=len(previous) if args.resume else None, output=args.output)
    if interrupted:
        again = ("rerun the same command with --resume to score the rest" if args.output else
                 "rerun with --output FILE to be able to resume")
        print(f"torchmos: interrupted after {len(rows)} new row(s); {again}.", file=sys.stderr)
        return 130
    return 1 if failures else 0


def _summary(rows: list[dict[str, Any]], failures: list[tuple[str, str]], name: str, higher: bool,
             resumed: int | None = None, output: str | None = None) -> None:
    out = sys.stderr
    scores = [(float(r["score"]), r["id"]) for r in rows]
    print(f"\n{name}: {len(scores)} scored, {len(failures)} failed", file=out)
    if resumed is not None:
        print(f"  resumed: {resumed} already in {output}, {len(scores) - resumed} new", file=out)
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
