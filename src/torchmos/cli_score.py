"""``torchmos score``: score files and folders, keep going past bad ones, resume a cut-off run.

Files are read, decoded and resampled by background worker processes while the model
scores the batch before (:mod:`torchmos.audio.loader`); rows go out in input order as CSV
or JSON Lines (:mod:`torchmos.cli_rows`), and ``--resume`` repairs a cut-off last row.
Under ``torchrun`` each rank scores its shard and rank 0 merges (:mod:`torchmos.cli_shard`).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import audio, cli_shard, functional, hub, models
from .audio.loader import Item, Reader, default_workers, read_batches
from .cli_rows import FIELDS as FIELDS
from .cli_rows import USAGE, Stats, UsageError, Writer, iter_rows, say, summary
from .cli_rows import previous_rows as _previous_rows  # noqa: F401 - torchmos.cli (the demo) reads it here

__all__ = ["FIELDS", "USAGE", "UsageError", "cmd_score"]


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


def _device_spec(spec: str, dist: cli_shard.Dist | None) -> str:
    """``--device``, with ``auto`` resolved and, under torchrun, ``cuda`` made this rank's GPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if dist is not None and spec == "cuda" and torch.cuda.is_available():
        spec = f"cuda:{dist.local_rank % torch.cuda.device_count()}"
    return spec


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


def _workers(spec: str, todo: int, batch_size: int, dist: cli_shard.Dist | None,
             device: torch.device | None = None) -> int:
    """``--workers``: a number (0 reads in this process), or ``auto``: on an accelerator
    :func:`~torchmos.audio.loader.default_workers` for this process's share of the cores
    (they read while the device computes); in this process for a model on the CPU (its
    threads use every core, and a reading process competes with them: on 2 cores one
    worker made the run 1.15x the model's own time where reading in the process made it
    1.03x, ``benchmarks/results/cli.json``) and for a run of one or two batches (nothing
    to overlap)."""
    if spec == "auto":
        if todo <= 2 * batch_size or device is None or device.type == "cpu":
            return 0
        return default_workers(dist.local_world if dist else 1)
    try:
        n = int(spec)
    except ValueError:
        n = -1
    if n < 0:
        raise UsageError(f"--workers must be auto or a number 0 or more, got {spec!r}.")
    return n


def _check_args(args: argparse.Namespace, dist: cli_shard.Dist | None) -> None:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be 1 or more, got {args.batch_size}.")
    if args.resume and not args.output:
        raise UsageError("--resume needs --output FILE: the rows of the earlier run are read from it.")
    if dist is not None and not args.output:
        raise UsageError(f"under torchrun (WORLD_SIZE={dist.world}), give --output FILE: each rank writes its part "
                         "next to it and rank 0 merges them into it.")
    if args.sha256 and not (args.checkpoint or os.path.isfile(args.model)):
        raise UsageError("--sha256 pins your own weight file: give it with --checkpoint FILE (or --model FILE).")
    _workers(args.workers, 0, 1, None)  # a bad value is refused before anything is read


def cmd_score(args: argparse.Namespace) -> int:
    dist = cli_shard.context()
    _check_args(args, dist)
    if args.sha256:  # the user's own file is verified before it is ever read
        hub.check_file(args.checkpoint or args.model, args.sha256)
    name, checkpoint = _resolve_model(args.model, args.checkpoint)
    card = hub.get_card(name)
    device = _check_device(_device_spec(args.device, dist))
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
    lead = dist is None or dist.rank == 0  # the process that speaks for the run
    repeats = len(entries) - len({audio.source_key(e.source) for e in entries})
    if repeats and lead:
        print(f"torchmos: note: {repeats} file(s) are listed more than once; each listing is scored "
              "(repeats are named id#2, id#3, ...).", file=sys.stderr)
    if args.output:
        Path(args.output).expanduser().parent.mkdir(parents=True, exist_ok=True)
    before, done = Stats(), set()  # the earlier run's rows (--resume): counted, never held
    for r in iter_rows(args.output, repair=lead) if args.resume else ():
        done.add(r["id"])
        before.add(float(r["score"]), r["id"])
    n_before = before.n
    part, token = None, ""
    if dist is None:
        todo = [(i, e) for i, e in enumerate(entries) if e.id not in done]
    else:
        mine, token = cli_shard.plan(entries, dist)
        part = cli_shard.Part(args.output, dist, token)
        kept = part.start(entries, args.resume)
        todo = [(i, entries[i]) for i in mine if entries[i].id not in done and entries[i].id not in kept]
        if args.resume:
            cli_shard.note(dist, f"{len(mine)} file(s) in this shard: {len(kept)} already in its part, "
                                 f"{len(todo)} to score.")
    refs = {e.id: e for e in audio.find_audio([args.reference])} if args.reference else None
    in_file = _InFileProgress(quiet=args.quiet or not lead)
    reader = Reader(card.sample_rate or None, card.min_seconds, refs, args.reference or "",
                    long_frames=_InFileProgress.LONG)
    workers = _workers(args.workers, len(todo), args.batch_size, dist, device)
    # the workers start reading now, while the model loads
    reading = read_batches(todo, reader, args.batch_size, workers, progress=lambda e: in_file(e.label))
    try:
        options = {"precision": args.precision} if args.precision else {}
        model = functional.get_model(name, checkpoint, device=device, **options)  # --sha256: checked above
        ref_set = _reference_set(args.reference_set, model, card, device) if args.reference_set else None
        sink: Any = part if part is not None else Writer(args.output, args.resume)
        stats = Stats() if part is not None else before
        failures, new, interrupted = _score_all(reading, reader, in_file, model, card, name, device, ref_set,
                                                sink, stats, total=len(todo), quiet=args.quiet or not lead)
    finally:
        getattr(reading, "close", lambda: None)()
        if part is not None:
            part.stop()
    if part is not None:
        return _finish_shard(args, dist, part, token, entries, done, before, failures, new, interrupted, name,
                             card.higher_is_better)
    summary(before, failures, name, card.higher_is_better,
            resumed=n_before if args.resume else None, output=args.output)
    return _exit(interrupted, new, args.output, failures)


def _exit(interrupted: bool, new: int, output: str | None, failures: list[tuple[str, str]]) -> int:
    if interrupted:
        again = ("rerun the same command with --resume to score the rest" if output else
                 "rerun with --output FILE to be able to resume")
        say(f"torchmos: interrupted after {new} new row(s); {again}.")
        return 130
    return 1 if failures else 0


def _reference_set(folder: str, model: Any, card: Any, device: torch.device) -> torch.Tensor:
    clips = []
    for e in audio.find_audio([folder]):
        x, sr = e.read()
        clips += audio.prepare([x], sr, card.sample_rate, min_seconds=card.min_seconds, names=[e.label], arg="")
    return model.embed([c.to(device) for c in clips])


def _score_all(reading: Any, reader: Reader, in_file: _InFileProgress, model: Any, card: Any, name: str,
               device: torch.device, ref_set: torch.Tensor | None, sink: Any, stats: Stats, total: int,
               quiet: bool) -> tuple[list[tuple[str, str]], int, bool]:
    """Score every batch as it comes; rows to ``sink`` in input order. Returns the failures,
    the number of new rows and whether Ctrl-C ended it (every row so far is written)."""
    from tqdm.auto import tqdm

    failures: list[tuple[str, str]] = []
    new = 0
    bar = tqdm(total=total, unit="file", desc=f"torchmos {name}", disable=quiet or None, file=sys.stderr)
    try:
        for batch in reading:
            good: list[Item] = []
            for item in batch:
                if item.interrupted:
                    raise KeyboardInterrupt
                if item.deferred:  # a long file: read here, with its own progress bar
                    item = reader(item.index, item.entry, progress=in_file(item.entry.label))
                for w in item.warnings:
                    say(f"torchmos: warning: {w}")
                if item.error is not None:
                    failures.append((item.entry.label, item.error))
                    say(f"torchmos: skipped: {item.error}")
                    if isinstance(sink, cli_shard.Part):
                        sink.write({"i": item.index, "id": item.entry.id, "error": item.error})
                    bar.update(1)
                    continue
                good.append(item)
            if not good:
                continue
            for item, s in zip(good, _scores(model, card, good, device, ref_set).tolist()):
                row = {"id": item.entry.id, "path": item.entry.source, "model": name, "score": round(float(s), 6),
                       "duration_s": round(item.duration_s, 4), "sample_rate": item.file_rate}
                sink.write({"i": item.index, **row} if isinstance(sink, cli_shard.Part) else row)
                stats.add(row["score"], row["id"])
                new += 1
            bar.update(len(good))
    except KeyboardInterrupt:
        return failures, new, True
    finally:
        bar.close()
        if isinstance(sink, Writer):
            sink.close()
    return failures, new, False


def _scores(model: Any, card: Any, items: list[Item], device: torch.device,
            ref_set: torch.Tensor | None) -> torch.Tensor:
    clips = [it.clip.to(device) for it in items if it.clip is not None]
    with torch.inference_mode():
        if items[0].ref is not None:
            return model.distance(clips, [it.ref.to(device) for it in items if it.ref is not None])
        if ref_set is not None:
            return model.distance_to_set(clips, ref_set)
        if card.sample_rate == 0:  # native-rate model: each clip at its own rate
            return model(clips, [it.file_rate for it in items])
        return model(clips)


def _finish_shard(args: argparse.Namespace, dist: cli_shard.Dist, part: cli_shard.Part, token: str,
                  entries: list[audio.AudioEntry], done: set[str], before: Stats, failures: list[tuple[str, str]],
                  new: int, interrupted: bool, name: str, higher: bool) -> int:
    """A rank's end under torchrun: its part completed; rank 0 waits for all and merges."""
    if interrupted:
        cli_shard.note(dist, f"interrupted after {new} new row(s); rerun the same command with --resume.")
        return 130
    part.finish()
    if dist.rank != 0:  # exit 0 even with failed files: a failing rank would stop the others
        cli_shard.note(dist, f"{new} scored, {len(failures)} failed; rank 0 merges the parts into {args.output}.")
        return 0
    problems = cli_shard.wait_for_parts(args.output, dist, token)
    if problems:
        print(f"torchmos: {args.output} is not written: {len(problems)} shard(s) did not finish:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        print("torchmos: rerun the same command with --resume: each rank keeps the rows of its part and "
              "scores the rest.", file=sys.stderr)
        return 1
    all_failures: list[tuple[str, str]] = []
    resumed = before.n
    kept = cli_shard.merge(args.output, dist, entries, done, args.resume, before, all_failures)
    summary(before, all_failures, name, higher, resumed=resumed + kept if args.resume else None, output=args.output)
    return 1 if all_failures else 0
