"""The ``torchmos`` command: score folders of audio, list models, run the demo, train.

    torchmos score INPUT... [--model NAME|FILE] [--output FILE.csv|.jsonl] [--batch-size N]
                            [--device D] [--workers N] [--resume] [--reference DIR|SCP] [--reference-set DIR]
    torchmos models
    torchmos demo
    torchmos compare A.csv B.csv [...] [--by condition] [--json]
    torchmos report A.csv [B.csv ...] -o report.html [--embed-audio]
    torchmos train RECIPE ...

``score`` keeps going past files it cannot read or score: each is reported on stderr and
in the summary, and the exit status is 1 if any failed (2 for a usage error).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, audio, hub
from .cli_score import FIELDS as FIELDS
from .cli_score import USAGE, UsageError, _previous_rows, cmd_score
from .cli_score import _InFileProgress as _InFileProgress

# recipe name -> module exposing add_arguments(parser) and run(args) -> int. A recipe's
# module (and what it imports) loads only when `torchmos train <recipe>` is asked for.
RECIPES: dict[str, str] = {
    "vqscore": "torchmos.training.vqscore",
    "sfi-distill": "torchmos.training.sfi_distill",
    "msr-utmos": "torchmos.training.msr_utmos",
    "scoreq": "torchmos.training.scoreq",
    "distill": "torchmos.training.distill",
}
RECIPE_HELP: dict[str, str] = {
    "vqscore": "train VQScore (a VQ-VAE) on clean speech only",
    "sfi-distill": "distil a sampling-frequency-independent SSL student (MSR-UTMOS stage 1)",
    "msr-utmos": "fine-tune MSR-UTMOS on MOS labels (stage 2)",
    "scoreq": "train SCOREQ on your MOS data (contrastive regression, two stages)",
    "distill": "distil a small MOS predictor from a big one (DistillMOS' method), or prune SCOREQ",
}


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
    """The recipe's stand-in when its module does not import: the error, and the fix when
    it is the training extra that is missing."""
    missing = (getattr(err, "name", None) or "").split(".")[0]
    hint = ""
    if missing in ("lightning", "pytorch_lightning", "lightning_fabric"):
        hint = ("; the training recipes need Lightning: pip install 'torchmos[train]' "
                "(from a checkout: pip install -e '.[train]')")

    def run(args: argparse.Namespace) -> int:
        print(f"torchmos: the {recipe} recipe cannot be loaded: {err}{hint}", file=sys.stderr)
        return 2

    return run


# ----------------------------------------------------------------------------- main


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser. Only the recipe that ``argv`` asks for (``train <recipe>``) is
    imported, to add its options: ``torchmos --help`` and ``torchmos score`` import none."""
    p = argparse.ArgumentParser(prog="torchmos", description="Learned speech-quality (MOS) predictors.")
    p.add_argument("--version", action="version", version=f"torchmos {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score audio files, folders, wav.scp files or lists")
    s.add_argument("inputs", nargs="+", help="audio files, folders (recursive), Kaldi wav.scp, or .txt lists")
    s.add_argument("--model", default="distillmos", help="model name (see `torchmos models`) or weight file")
    s.add_argument("--checkpoint", default=None, help="local weight file for --model NAME")
    s.add_argument("--sha256", default=None, metavar="HEX",
                   help="pin the sha256 of your weight file (--checkpoint or --model FILE); a mismatch is an error")
    s.add_argument("--output", "-o", default=None,
                   help="FILE.csv or FILE.jsonl (default: CSV on stdout); missing folders are created")
    s.add_argument("--batch-size", type=int, default=8, help="files scored together (default 8)")
    s.add_argument("--device", default="cpu",
                   help="torch device: cpu (default), cuda, cuda:N, mps, or auto (a GPU when there is one); "
                        "under torchrun, cuda means each rank's own GPU (cuda:LOCAL_RANK)")
    s.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="bf16: faster, approximate (DistillMOS; see docs/performance.md)")
    s.add_argument("--resume", action="store_true", help="skip ids already in --output and append")
    s.add_argument("--reference", default=None, help="clean references paired by id (folder, scp or list)")
    s.add_argument("--reference-set", default=None, help="clean speech set for non-matching reference mode")
    s.add_argument("--workers", default="auto", metavar="N",
                   help="processes that read and resample files while the model scores (0: in this process; "
                        "default auto: on a GPU one per two cores; on the CPU, or for a run of one or two batches, "
                        "none)")
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

    from .cli_compare import add_subcommands  # compare, report: their modules load only when run

    add_subcommands(sub)
    t = sub.add_parser("train", help="train a predictor on your own data")
    tsub = t.add_subparsers(dest="recipe", required=True)
    wanted = _requested_recipe(argv)
    for recipe, module in RECIPES.items():
        mod, err = None, None
        if recipe == wanted:
            try:
                mod = importlib.import_module(module)
            except ImportError as e:
                err = e
        # a recipe that cannot be imported takes any arguments, so that its message is shown
        anything = {"prefix_chars": "\0", "add_help": False} if err is not None else {}
        rp = tsub.add_parser(recipe, help=RECIPE_HELP[recipe], description=RECIPE_HELP[recipe], **anything)
        rp.set_defaults(func=cmd_train, recipe_module=module)
        if err is not None:
            rp.add_argument("options", nargs="*")
            rp.set_defaults(recipe_run=_unavailable(recipe, err))
        elif mod is not None:
            mod.add_arguments(rp)
            rp.set_defaults(recipe_run=mod.run)
    return p


def _requested_recipe(argv: Sequence[str] | None) -> str | None:
    """The recipe named by ``train <recipe> ...`` in ``argv`` (``sys.argv[1:]`` if None)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "train" not in args:
        return None
    rest = args[args.index("train") + 1 :]
    return next((a for a in rest if a in RECIPES), None)


def _plain_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                   line: str | None = None) -> None:
    """A warning as one line on stderr (``torchmos: warning: ...``), without a source path."""
    print(f"torchmos: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    with warnings.catch_warnings():  # restores the caller's warning display afterwards
        warnings.showwarning = _plain_warning
        try:
            return int(args.func(args))
        except (UsageError, hub.HubError, audio.AudioError, KeyError, ValueError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"torchmos: error: {msg}", file=sys.stderr)
            return USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
