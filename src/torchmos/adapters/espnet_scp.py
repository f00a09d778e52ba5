"""Score a Kaldi ``wav.scp`` the way ESPnet's evaluation stages do (the Python side).

``integrations/espnet/local/score_mos.sh`` splits a ``wav.scp`` into contiguous parts (as
:func:`split_scp` does), then runs this module's command line (``python -m
torchmos.adapters.espnet_scp``, or the recipe's ``local/score_mos.py``):

* ``score [--config score.yaml] [--ngpu 0|1] [--job J] [--model NAME] ... <wav.J.scp>
  <utt2pmos.J>``, once per job. Options may come from a YAML file, as ESPnet's
  ``*_inference`` programs take them (``espnet2.utils.config_argparse``: keys are option
  names, the command line wins); with ``--ngpu 1``, job J picks its GPU (:func:`job_device`);
* ``merge --model NAME <outdir> <utt2pmos.1> ...``: ``utt2pmos`` (``utt score``, sorted by
  id, as ESPnet's ``evaluate_pseudomos.py`` writes it), ``avg_result.txt`` (``NAME: mean``,
  a ``name: value`` line that ESPnet's ``show_tts_result.sh`` collects into RESULTS.md)
  and ``result.txt`` (count, mean, std, min, max); ``split --nj N <wav.scp> <dir>`` too.

Entries are read with ESPnet's own readers: files with ``soundfile_read``; pipes
``cmd |`` and ark offsets ``foo.ark:123`` with ``kaldiio.load_mat``, as ESPnet's
``kaldi_ark`` loader does. Integer PCM is scaled to [-1, 1] and channels are averaged, as
:func:`torchmos.audio.read` does, and scores come from :class:`torchmos.adapters.Scorer`,
so they equal :mod:`torchmos.functional`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import audio
from ._scoring import Scorer, missing_extra

try:
    import kaldiio
    from espnet2.fileio.read_text import read_2columns_text
    from espnet2.fileio.sound_scp import soundfile_read
    from espnet2.utils import config_argparse
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("espnet", "espnet (and kaldiio)", _e) from _e

__all__ = [
    "job_device",
    "load_entry",
    "main",
    "merge",
    "read_scores",
    "read_scp",
    "score_scp",
    "split_scp",
    "summary",
    "write_results",
    "write_scores",
]

SCORES = "utt2pmos"  # ESPnet's name for per-utterance pseudo (predicted) MOS
AVERAGES = "avg_result.txt"  # "name: value" lines, gathered by show_tts_result.sh
SUMMARY = "result.txt"

_ARK_OFFSET = re.compile(r"^(.+\.ark):(\d+)(\[.*\])?$")


# ----------------------------------------------------------------------------- reading


def read_scp(path: str | os.PathLike) -> dict[str, str]:
    """``utt -> entry`` of a Kaldi scp file, in file order (ESPnet's ``read_2columns_text``)."""
    return dict(read_2columns_text(Path(path)))


def _is_kaldi_entry(entry: str) -> bool:
    entry = entry.strip()
    return entry.endswith("|") or bool(_ARK_OFFSET.match(entry))


def load_entry(entry: str, where: str = "") -> tuple[torch.Tensor, int]:
    """Read one ``wav.scp`` value (a path, ``cmd |`` or ``foo.ark:offset``) as mono float32.

    Raises :class:`torchmos.audio.AudioError` naming the utterance when it cannot be read.
    """
    where = where or entry
    try:
        if _is_kaldi_entry(entry):
            out = kaldiio.load_mat(entry.strip())
            if not (isinstance(out, tuple) and len(out) == 2):
                raise audio.AudioError(
                    f"{where}: '{entry}' holds a feature matrix, not audio; point wav.scp at waveforms."
                )
            rate, array = (out[0], out[1]) if isinstance(out[0], int) else (out[1], out[0])
        else:
            array, rate = soundfile_read(entry, dtype="float32")
    except audio.AudioError:
        raise
    except Exception as e:  # soundfile, kaldiio and subprocess errors alike
        hint = " Check that the command runs in a shell and writes WAV to stdout." if entry.strip().endswith("|") else ""
        raise audio.AudioError(f"{where}: cannot read '{entry}' ({type(e).__name__}: {e}).{hint}") from e
    x = audio.to_float(np.ascontiguousarray(array), where)  # integer PCM -> [-1, 1]
    if x.dim() == 2:  # (time, channel): average the channels, as torchmos.audio.read does
        x = x.mean(dim=1)
    if x.dim() != 1:
        raise audio.AudioError(f"{where}: expected mono or (time, channel) audio, got shape {tuple(x.shape)}.")
    return x, int(rate)


# ----------------------------------------------------------------------------- scoring


def _batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def score_scp(
    wav_scp: str | os.PathLike,
    model: str = "distillmos",
    reference: str | os.PathLike | None = None,
    batch_size: int = 8,
    device: str | None = None,
    errors: list[str] | None = None,
    **options: Any,
) -> dict[str, float]:
    """Score every utterance of ``wav_scp``; ``{utt: score}`` in file order.

    Args:
        wav_scp: a Kaldi ``wav.scp``.
        model: a torchmos card name.
        reference: a ``wav.scp`` of references (same utterance ids) for reference models.
        batch_size: utterances per forward pass.
        device: ``"cpu"``, ``"cuda:1"``, ... (default: CPU).
        errors: if given, unreadable or invalid utterances are appended here (a message
            each) and skipped; otherwise the first one raises.
        options: predictor options (e.g. ``precision="bf16"``).
    """
    scorer = Scorer(model, device=device or "cpu", **options)
    if (reference is not None) != (scorer.card.mode == "ref"):
        raise ValueError(
            f"model {scorer.name!r} is a no-reference predictor; drop --reference."
            if reference is not None else
            f"model {scorer.name!r} compares each utterance with a reference; pass --reference ref_wav.scp."
        )
    entries = read_scp(wav_scp)
    refs = read_scp(reference) if reference is not None else None
    if refs is not None:
        missing = [u for u in entries if u not in refs]
        if missing:
            raise ValueError(f"{reference}: no reference for {len(missing)} utterance(s), e.g. {missing[:3]}.")
    out: dict[str, float] = {}
    for utts in _batches(list(entries), max(1, int(batch_size))):
        # read and check each utterance on its own, so one bad entry costs only itself
        groups: dict[tuple[int, int | None], list[tuple[str, torch.Tensor, torch.Tensor | None]]] = {}
        for u in utts:
            try:
                x, fs = load_entry(entries[u], where=f"{wav_scp}: {u}")
                _check(scorer, x, fs, u)
                r, rfs = None, None
                if refs is not None:
                    r, rfs = load_entry(refs[u], where=f"{reference}: {u}")
                    _check(scorer, r, rfs, u)
                groups.setdefault((fs, rfs), []).append((u, x, r))
            except (audio.AudioError, ValueError) as e:
                if errors is None:
                    raise
                errors.append(str(e))
        # score a batch per sample rate (a wav.scp may mix rates), exactly as functional does
        for (fs, rfs), group in groups.items():
            names = [u for u, _, _ in group]
            ref_clips = [r for _, _, r in group] if refs is not None else None
            try:
                scores = scorer([x for _, x, _ in group], fs, names=names, refs=ref_clips, ref_fs=rfs)
            except (audio.AudioError, ValueError) as e:
                if errors is None:
                    raise
                errors.append(str(e))
                continue
            out.update(zip(names, (float(s) for s in scores.detach().cpu().reshape(-1))))
    return {u: out[u] for u in entries if u in out}


def _check(scorer: Scorer, x: torch.Tensor, fs: int, name: str) -> None:
    # the checks of torchmos.audio.prepare (length, NaN/Inf, ...) for one clip, no resampling
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", audio.SilentAudioWarning)  # warned once, when scored
        audio.prepare([x], fs, None, min_seconds=scorer.card.min_seconds, names=[name])


def job_device(ngpu: int, job: int = 1) -> str:
    """The device of scoring job ``job`` (1-based): ``"cpu"`` or ``"cuda:<(job - 1) mod GPUs>"``.

    A scheduler that shows each job only the GPU it gave it (``CUDA_VISIBLE_DEVICES``, as
    ``slurm.pl`` sets it) leaves one visible device, so every job uses ``cuda:0``, its own;
    on one machine with several visible GPUs (``run.pl``), jobs 1, 2, ... take GPUs 0, 1,
    ... in turn.

    >>> job_device(0, job=3)
    'cpu'
    """
    if ngpu <= 0:
        return "cpu"
    if job < 1:
        raise ValueError(f"--job counts from 1 (it is Kaldi's JOB), got {job}.")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise RuntimeError(
            f"job {job}: --ngpu {ngpu} asks for a GPU, but CUDA sees none "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}); "
            "run with --gpu_inference false, or on a GPU node."
        )
    return f"cuda:{(job - 1) % count}"


# ----------------------------------------------------------------------------- files


def split_scp(wav_scp: str | os.PathLike, nj: int, outdir: str | os.PathLike) -> list[Path]:
    """Split ``wav_scp`` into ``nj`` contiguous parts ``outdir/wav.{1..nj}.scp``.

    Lines are distributed as evenly as possible, in order (like ``split_scp.pl``). With
    fewer lines than jobs, the extra parts are empty files.
    """
    lines = [ln for ln in Path(wav_scp).read_text().splitlines() if ln.strip()]
    nj = int(nj)
    if nj < 1:
        raise ValueError(f"--nj must be at least 1, got {nj}.")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    base, extra = divmod(len(lines), nj)
    parts, start = [], 0
    for j in range(nj):
        n = base + (1 if j < extra else 0)
        p = outdir / f"wav.{j + 1}.scp"
        p.write_text("".join(f"{ln}\n" for ln in lines[start : start + n]))
        parts.append(p)
        start += n
    return parts


def write_scores(scores: dict[str, float], path: str | os.PathLike) -> None:
    """``utt score`` lines, in the given order."""
    Path(path).write_text("".join(f"{u} {s:.6f}\n" for u, s in scores.items()))


def read_scores(paths: Iterable[str | os.PathLike]) -> dict[str, float]:
    """``{utt: score}`` of ``utt score`` files (e.g. the per-job ``utt2pmos.JOB``)."""
    out: dict[str, float] = {}
    for p in paths:
        for lineno, line in enumerate(Path(p).read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{p}:{lineno}: expected 'utt score', got {line!r}.")
            if parts[0] in out:
                raise ValueError(f"{p}:{lineno}: utterance {parts[0]!r} scored twice.")
            out[parts[0]] = float(parts[1])
    return out


def summary(scores: dict[str, float]) -> dict[str, Any]:
    """count, mean, std (population, as numpy's default), min and max (with their ids)."""
    if not scores:
        raise ValueError("no scores to summarize.")
    values = np.array(list(scores.values()), dtype=np.float64)
    ids = list(scores)
    return {
        "count": len(values),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "min_id": ids[int(values.argmin())],
        "max": float(values.max()),
        "max_id": ids[int(values.argmax())],
    }


def write_results(scores: dict[str, float], outdir: str | os.PathLike, model: str = "") -> dict[str, Any]:
    """Write ``utt2pmos``, ``avg_result.txt`` and ``result.txt`` into ``outdir``; return the summary.

    ``utt2pmos`` is sorted by utterance id; ``avg_result.txt`` is one ``name: value`` line,
    the name being ``model`` (``pmos`` when empty), the value the mean.
    """
    if model and (":" in model or any(c.isspace() for c in model)):
        raise ValueError(f"model name {model!r} cannot head an avg_result.txt line ('name: value').")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    ordered = dict(sorted(scores.items()))
    write_scores(ordered, outdir / SCORES)
    s = summary(ordered)
    (outdir / AVERAGES).write_text(f"{model or 'pmos'}: {s['mean']:.6f}\n")
    head = f"# torchmos {model} predicted MOS\n" if model else "# torchmos predicted MOS\n"
    (outdir / SUMMARY).write_text(
        head
        + f"count: {s['count']}\n"
        + f"mean: {s['mean']:.4f}\n"
        + f"std: {s['std']:.4f}\n"
        + f"min: {s['min']:.4f} ({s['min_id']})\n"
        + f"max: {s['max']:.4f} ({s['max_id']})\n"
    )
    return s


def merge(outdir: str | os.PathLike, parts: Iterable[str | os.PathLike], model: str = "",
          expected: str | os.PathLike | None = None) -> dict[str, Any]:
    """Merge per-job ``utt2pmos.JOB`` files into ``outdir`` (see :func:`write_results`).

    With ``expected`` (the full ``wav.scp``), refuses to write when utterances are missing.
    """
    scores = read_scores(parts)
    if expected is not None:
        missing = [u for u in read_scp(expected) if u not in scores]
        if missing:
            raise ValueError(
                f"{len(missing)} utterance(s) of {expected} have no score (e.g. {missing[:3]}); "
                "see the job logs."
            )
    return write_results(scores, outdir, model=model)


# ----------------------------------------------------------------------------- command line


def _score_parser() -> argparse.ArgumentParser:
    # ESPnet's parser: "--config x.yaml" sets defaults, the command line overrides them
    p = config_argparse.ArgumentParser(
        prog="score", description="Score one part of a wav.scp (one job of score_mos.sh).")
    p.add_argument("--model", default="distillmos", help="torchmos card name")
    p.add_argument("--reference", default=None, help="wav.scp of references (reference models)")
    p.add_argument("--batch_size", type=int, default=8, help="utterances per forward pass")
    p.add_argument("--num_threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--precision", default=None, help="predictor precision option, e.g. bf16")
    p.add_argument("--ngpu", type=int, default=0, help="0: CPU; 1: a GPU, chosen by --job")
    p.add_argument("--job", type=int, default=1, help="this job's number, Kaldi's JOB (1-based)")
    p.add_argument("--device", default=None, help="an explicit device; overrides --ngpu/--job")
    p.add_argument("wav_scp")
    p.add_argument("output", help="utt2pmos file of this part")
    return p


def _score(argv: Sequence[str]) -> int:
    args = _score_parser().parse_args(argv)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    options = {"precision": args.precision} if args.precision else {}
    errors: list[str] = []
    try:
        device = args.device or job_device(args.ngpu, args.job)
        print(f"job {args.job}: model={args.model} device={device} batch_size={args.batch_size} "
              f"num_threads={torch.get_num_threads()} options={options} config={args.config}", flush=True)
        scores = score_scp(args.wav_scp, args.model, args.reference, args.batch_size, device,
                           errors=errors, **options)
    except (RuntimeError, ValueError, KeyError, audio.AudioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_scores(scores, args.output)
    if errors:
        errors.append(f"{len(errors)} utterance(s) of {args.wav_scp} could not be scored.")
        print("".join(f"error: {m}\n" for m in errors), end="", file=sys.stderr)
        return 1
    print(f"{args.wav_scp}: {len(scores)} utterances scored by {args.model}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``split`` / ``score`` / ``merge``; see the module docstring (``score -h`` for its options)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["score"]:
        return _score(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m torchmos.adapters.espnet_scp",
        description="Score a Kaldi wav.scp with a torchmos predictor (the steps of score_mos.sh).",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("split", help="split a wav.scp into N contiguous parts")
    p.add_argument("--nj", type=int, required=True)
    p.add_argument("wav_scp")
    p.add_argument("outdir")
    sub.add_parser("score", help="score one part (see: score -h)", add_help=False)
    p = sub.add_parser("merge", help="merge parts into utt2pmos, avg_result.txt and result.txt")
    p.add_argument("--model", default="")
    p.add_argument("--expected", default=None, help="the full wav.scp, to check completeness")
    p.add_argument("outdir")
    p.add_argument("parts", nargs="+")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "split":
            split_scp(args.wav_scp, args.nj, args.outdir)
            return 0
        s = merge(args.outdir, args.parts, model=args.model, expected=args.expected)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.model or 'pmos'}: mean {s['mean']:.4f} std {s['std']:.4f} over {s['count']} utterances "
          f"-> {Path(args.outdir) / SCORES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
