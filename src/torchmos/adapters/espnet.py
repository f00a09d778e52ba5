"""ESPnet adapter: score a Kaldi ``wav.scp`` in the style of ESPnet's scoring stages.

The shell stage ``integrations/espnet/local/score_mos.sh`` splits a ``wav.scp`` into
jobs and calls this module (``python -m torchmos.adapters.espnet``) three times:

* ``split --nj N <wav.scp> <dir>``: ``<dir>/wav.{1..N}.scp``, contiguous chunks in order
  (as Kaldi's ``split_scp.pl`` does);
* ``score [--model NAME] [--reference ref.scp] <wav.JOB.scp> <utt2mos.JOB>``: one job;
* ``merge <outdir> <utt2mos.1> ...``: ``<outdir>/utt2mos`` (``utt score`` per line,
  sorted by utterance id) and ``<outdir>/result.txt`` (count, mean, std, min, max).

Entries are read through ESPnet's own readers: plain files with
``espnet2.fileio.sound_scp.soundfile_read`` (anything libsndfile reads) and Kaldi
entries -- pipes ``cmd |`` and ark offsets ``foo.ark:123`` -- with ``kaldiio.load_mat``,
as ESPnet's ``kaldi_ark`` loader and ``format_wav_scp.py`` do. Integer PCM is scaled to
[-1, 1] and channels are averaged, as :func:`torchmos.audio.read` does, and scores come
from :class:`torchmos.adapters.Scorer`, so they equal :mod:`torchmos.functional`.

For monitoring MOS during ESPnet training (TTS, SE), :class:`MOSMonitor` computes the
batch mean for the ``stats`` dict that an ESPnet model's ``forward`` returns, without
adding the predictor to the model's ``state_dict`` (see docs/integrations/espnet.md).
"""

from __future__ import annotations

import argparse
import math
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
from . import Scorer, missing_extra

try:
    import kaldiio
    from espnet2.fileio.read_text import read_2columns_text
    from espnet2.fileio.sound_scp import soundfile_read
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise missing_extra("espnet", "espnet (and kaldiio)", _e) from _e

__all__ = [
    "MOSCriterion",
    "MOSMonitor",
    "load_entry",
    "main",
    "merge",
    "read_scp",
    "score_scp",
    "split_scp",
    "summary",
    "write_results",
]

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
        device: ``"cpu"``, ``"cuda"``, ... (default: CPU).
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
        chunk = lines[start : start + n]
        p.write_text("".join(f"{ln}\n" for ln in chunk))
        parts.append(p)
        start += n
    return parts


def write_scores(scores: dict[str, float], path: str | os.PathLike) -> None:
    """``utt score`` lines, in the given order."""
    Path(path).write_text("".join(f"{u} {s:.6f}\n" for u, s in scores.items()))


def read_scores(paths: Iterable[str | os.PathLike]) -> dict[str, float]:
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
    """Write ``outdir/utt2mos`` (sorted by id) and ``outdir/result.txt``; return the summary."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    ordered = dict(sorted(scores.items()))
    write_scores(ordered, outdir / "utt2mos")
    s = summary(ordered)
    head = f"# torchmos {model} predicted MOS\n" if model else "# torchmos predicted MOS\n"
    (outdir / "result.txt").write_text(
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
    """Merge per-job ``utt2mos.JOB`` files into ``outdir`` (see :func:`write_results`).

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


# ----------------------------------------------------------------------------- training monitor


class MOSMonitor:
    """Mean predicted MOS of a batch of generated waveforms, for an ESPnet ``stats`` dict.

    ESPnet models report per-batch statistics from ``forward`` (``stats`` in
    ``force_gatherable((loss, stats, weight), device)``); the trainer averages them over
    the epoch and ``--best_model_criterion valid mos max`` can select checkpoints on them.
    The predictor is kept out of the model's modules, so it is not trained, not in
    ``state_dict`` and not in the optimizer; it follows the waveforms' device.

    >>> import torch
    >>> monitor = MOSMonitor("distillmos", fs=16000)
    >>> float(monitor(torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000]))) > 1.0
    True
    """

    def __init__(self, model: str = "distillmos", fs: int = 16000, **options: Any) -> None:
        self.scorer = Scorer(model, **options)
        self.fs = int(fs)

    @torch.no_grad()
    def scores(self, wavs: torch.Tensor | Sequence[torch.Tensor], lengths: Any = None) -> torch.Tensor:
        """One score per waveform; ``wavs`` ``(B, T)`` or ``(B, 1, T)`` with sample ``lengths``."""
        if isinstance(wavs, torch.Tensor):
            wavs = wavs.detach()
            if wavs.dim() == 3 and wavs.shape[1] == 1:
                wavs = wavs[:, 0]
        return self.scorer(wavs, self.fs, lengths)

    def __call__(self, wavs: torch.Tensor | Sequence[torch.Tensor], lengths: Any = None) -> torch.Tensor:
        """Mean score of the batch (a 0-dim tensor on the waveforms' device)."""
        return self.scores(wavs, lengths).mean()


def _time_domain_loss() -> type:
    from espnet2.enh.loss.criterions.time_domain import TimeDomainLoss

    return TimeDomainLoss


class MOSCriterion(_time_domain_loss()):  # type: ignore[misc]
    """Predicted MOS as an ESPnet enhancement "criterion", evaluated on validation only.

    ESPnet's enhancement task reports every criterion in its ``stats``; with this one
    registered (``criterion_choices.classes["torchmos_mos"] = MOSCriterion``) and listed
    in the config with ``wrapper: fixed_order`` and ``wrapper_conf: {weight: 0.0}``, the
    validation MOS of the enhanced speech is logged per epoch and can select checkpoints
    (``--best_model_criterion valid mos max``); it never affects the training loss
    (``only_for_test`` is always true and the weight is 0). The predictor is kept out of
    the module registry, so it is not in the model's ``state_dict``.

    ``forward(ref, inf)`` returns one score per row of ``inf`` (B, T); ``ref`` is used only
    by reference models. ESPnet passes criteria padded batches without lengths; DistillMOS
    is unaffected by trailing zeros on clips shorter than 7.68 s, other models may be.
    """

    def __init__(self, model: str = "distillmos", fs: int = 16000, name: str = "mos", **options: Any) -> None:
        super().__init__(name, only_for_test=True)
        object.__setattr__(self, "monitor", MOSMonitor(model, fs=fs, **options))

    def forward(self, ref: torch.Tensor, inf: torch.Tensor) -> torch.Tensor:
        mon = self.monitor
        refs = ref.detach() if mon.scorer.card.mode == "ref" else None
        return mon.scorer(inf.detach(), mon.fs, refs=refs).to(inf.device)


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torchmos.adapters.espnet",
        description="Score a Kaldi wav.scp with a torchmos predictor (ESPnet-style stage helper).",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("split", help="split a wav.scp into N contiguous parts")
    p.add_argument("--nj", type=int, required=True)
    p.add_argument("wav_scp")
    p.add_argument("outdir")
    p = sub.add_parser("score", help="score one part")
    p.add_argument("--model", default="distillmos")
    p.add_argument("--reference", default=None, help="wav.scp of references (reference models)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num_threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--precision", default=None, help="predictor precision option, e.g. bf16")
    p.add_argument("wav_scp")
    p.add_argument("output", help="utt2mos file of this part")
    p = sub.add_parser("merge", help="merge parts into utt2mos and result.txt")
    p.add_argument("--model", default="")
    p.add_argument("--expected", default=None, help="the full wav.scp, to check completeness")
    p.add_argument("outdir")
    p.add_argument("parts", nargs="+")
    args = parser.parse_args(argv)

    if args.cmd == "split":
        split_scp(args.wav_scp, args.nj, args.outdir)
        return 0
    if args.cmd == "merge":
        try:
            s = merge(args.outdir, args.parts, model=args.model, expected=args.expected)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{args.model or 'MOS'}: mean {s['mean']:.4f} std {s['std']:.4f} over {s['count']} utterances "
              f"-> {Path(args.outdir) / 'utt2mos'}")
        return 0
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    options = {"precision": args.precision} if args.precision else {}
    errors: list[str] = []
    try:
        scores = score_scp(args.wav_scp, args.model, args.reference, args.batch_size, args.device,
                           errors=errors, **options)
    except (ValueError, KeyError, audio.AudioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_scores(scores, args.output)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if errors:
        print(f"error: {len(errors)} utterance(s) of {args.wav_scp} could not be scored.", file=sys.stderr)
        return 1
    mean = sum(scores.values()) / len(scores) if scores else math.nan
    print(f"{args.wav_scp}: {len(scores)} utterances, mean {args.model} {mean:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
