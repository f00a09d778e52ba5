"""``torchmos compare`` and ``torchmos report``: paired comparison of systems' score files.

    torchmos compare A.csv B.csv [C.csv ...] [--by COLUMN] [--baseline NAME] [--json]
    torchmos report A.csv [B.csv ...] [-o report.html] [--top N] [--embed-audio]

The statistics (:mod:`torchmos.stats`) and the page (:mod:`torchmos.report`) load only when
one of these commands runs, so ``torchmos --help`` and ``torchmos score`` stay lean. A bad
input is a ``ValueError`` naming the file and line, which ``torchmos`` turns into one line
on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_subcommands", "cmd_compare", "cmd_report"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--names", default=None, metavar="A,B,...",
                   help="the systems' names, comma-separated (default: the files' names)")
    p.add_argument("--baseline", default=None, metavar="NAME",
                   help="compare every system with this one only (default: every pair)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="keep only this model's rows (for files holding several models' scores)")
    p.add_argument("--resamples", type=int, default=10_000, metavar="N",
                   help="bootstrap resamples (default 10000)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    way = p.add_mutually_exclusive_group()
    way.add_argument("--lower-is-better", dest="higher_is_better", action="store_const", const=False,
                     default=None, help="the scores are distances (default: from the model column)")
    way.add_argument("--higher-is-better", dest="higher_is_better", action="store_const", const=True,
                     help="the scores are qualities (the default for an unknown model)")


def add_subcommands(sub: Any) -> None:
    """Add ``compare`` and ``report`` to the ``torchmos`` command's subparsers."""
    c = sub.add_parser("compare", help="compare systems scored on the same utterances (CIs, Wilcoxon, Holm)",
                       description="Pair the systems by utterance id; for each system its mean with a bootstrap "
                       "interval, for each pair the mean difference with its interval, the Wilcoxon signed-rank "
                       "p-value (Holm-adjusted) and the share of utterances each wins.")
    c.add_argument("files", nargs="+", help="score files: torchmos score's CSV / JSON Lines, or 'utt score' "
                   "files (ESPnet's utt2pmos)")
    c.add_argument("--by", default=None, metavar="COLUMN", help="also per value of this column (e.g. condition)")
    _common(c)
    c.add_argument("--json", action="store_true", help="print the full result as JSON")
    c.set_defaults(func=cmd_compare)

    r = sub.add_parser("report", help="write one self-contained HTML page to see and hear the comparison",
                       description="Score distributions, the paired comparison, the breakdown by condition, the "
                       "agreement with labels (a mos column), the largest differences and the worst and best "
                       "utterances with audio players, in one HTML file that needs no network.")
    r.add_argument("files", nargs="+", help="score files (as for compare); one is enough")
    r.add_argument("--output", "-o", default="report.html", help="the page to write (default report.html)")
    r.add_argument("--by", default=None, metavar="COLUMN",
                   help="group by this column (default: 'condition' when every file has it)")
    r.add_argument("--no-groups", action="store_true", help="no breakdown, even with a condition column")
    r.add_argument("--top", type=int, default=10, metavar="N",
                   help="utterances in each worst / best / largest-difference list (default 10, at most 200)")
    r.add_argument("--embed-audio", action="store_true",
                   help="embed the listed clips in the page (default: link them by relative path)")
    r.add_argument("--title", default=None, help="the page's title")
    _common(r)
    r.set_defaults(func=cmd_report)


def _options(args: argparse.Namespace, by: str | None) -> dict[str, Any]:
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    return {"names": names, "by": by, "baseline": args.baseline, "model": args.model,
            "n_resamples": args.resamples, "confidence": args.confidence, "seed": args.seed,
            "higher_is_better": args.higher_is_better}


def cmd_compare(args: argparse.Namespace) -> int:
    if len(args.files) < 2:
        raise ValueError("compare needs two or more score files (`torchmos report FILE` shows one system).")
    from .stats import compare

    result = compare(args.files, **_options(args, args.by))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.format())
    return 0


def _has_column(file: str, column: str) -> bool:
    """Whether a CSV's header, or a JSON Lines file's first row, has ``column``."""
    path = Path(file)
    try:
        with path.open(encoding="utf-8-sig") as fh:
            first = fh.readline()
    except OSError:
        return False  # read_scores names the problem
    if path.suffix.lower() == ".csv":
        import csv

        return column in next(csv.reader([first]), [])
    if path.suffix.lower() in (".jsonl", ".json"):
        try:
            return column in json.loads(first)
        except (ValueError, TypeError):
            return False
    return False


def cmd_report(args: argparse.Namespace) -> int:
    by = args.by
    if by is None and not args.no_groups and all(_has_column(f, "condition") for f in args.files):
        by = "condition"
    if args.no_groups:
        by = None
    from .report import write_report
    from .stats import compare

    start = time.perf_counter()
    result = compare(args.files, **_options(args, by))
    out = write_report(result, args.output, top=args.top, embed_audio=args.embed_audio, title=args.title)
    size = out.stat().st_size
    print(f"torchmos report: {out} ({size / 1e6:.2f} MB, {len(result.ids)} paired utterances, "
          f"{time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0
