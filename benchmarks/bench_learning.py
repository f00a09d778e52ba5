"""The learning tests' numbers at given commits: before and after a refactor (issue 13).

    python benchmarks/bench_learning.py --commit 8e48e15 --commit HEAD --json benchmarks/results/learning.json
    python benchmarks/bench_learning.py --commit 8e48e15 --commit HEAD --tests-from HEAD --json FILE
    python benchmarks/bench_learning.py --commit HEAD --only scoreq --only vqscore

The learning tests train a small model for real and check that it learned: SCOREQ
(``test_scoreq_training.py``), VQScore (``test_vqscore.py``), the SFI distillation and the
MOS fine-tuning of MSR-UTMOS (``test_msr_utmos.py``) and ``train distill``
(``test_distill_learning.py``, absent before it was written: "n/a"). For each commit the
committed tree is extracted with ``git archive`` into a temporary folder (no checkout, no
worktree: the repository is not touched) and each test found there runs in its own
``pytest -s -n 0`` process with that tree first on ``PYTHONPATH`` and
``TORCHMOS_OFFLINE=1``, under this interpreter; a preflight checks that the tree's
``torchmos`` is the one imported. Nothing is added to an old tree: a test that prints no
figure at a commit is recorded by its outcome (passed/failed) alone, and says so. With
``--tests-from REV`` the extracted tree's ``tests/`` is REV's instead: the same tests, with
the same seeds, against each commit's code (8e48e15's SCOREQ test printed no figure); in
an older tree each test then runs in a module of its own (:func:`standalone`), as REV's
test files import modules that older trees lack.

The MSR-UTMOS learning tests are not marked slow (they run in the default lane), so the
tests run with ``-m "slow or not slow"``: named by node id, each runs whatever its mark.

Per test: the outcome, the printed figure lines (raw) and the figures parsed from them,
the failure lines when it failed, and the wall seconds (pytest's, and the process').

Not a timing benchmark: the tests are seeded, so their figures are deterministic for a
commit on a machine (same CPU, library versions and thread counts); the machine may be
busy while it runs, which changes the seconds only. Minutes per test on 2 cores.

``--json`` holds the provenance of :mod:`common` and one entry per commit (by full hash).
A run merges into an existing file (keeping the other commits' entries) only when that
file's provenance commit is the current HEAD; otherwise the file starts afresh.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NUM = r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"

# key -> the test (file, function) and its figures: name -> regex with one group over the
# printed line; a name ending in "[]" is a bracketed list of numbers, one figure each
TESTS: dict[str, dict[str, object]] = {
    "scoreq": {
        "file": "tests/unit/test_scoreq_training.py",
        "function": "test_a_tiny_scoreq_learns_mos_from_degradations",
        "figures": {"nr_spearman": rf"\bNR {NUM}", "ref_distance_spearman": rf"reference-mode distance {NUM}"},
    },
    "vqscore": {
        "file": "tests/unit/test_vqscore.py",
        "function": "test_learns_to_rank_snr_from_clean_speech_only",
        "figures": {"spearman_vs_snr": rf"Spearman {NUM}", "clean_mean": rf"clean mean {NUM}",
                    "per_snr_mean[]": r"per-SNR means \[([^\]]*)\]"},
    },
    "msr_sfi_distill": {
        "file": "tests/unit/test_msr_utmos.py",
        "function": "test_distillation_brings_48khz_states_closer_to_the_16khz_teacher",
        "figures": {"hidden_mse_untrained": rf"untrained {NUM}", "hidden_mse_distilled": rf"distilled {NUM}"},
    },
    "msr_mos": {
        "file": "tests/unit/test_msr_utmos.py",
        "function": "test_mos_fine_tuning_ranks_held_out_clips_at_mixed_rates",
        "figures": {"spearman": rf"held-out Spearman {NUM}", "rate_gap_mean": rf"\| mean {NUM}",
                    "rate_gap_max": rf"\bmax {NUM}", "score_spread": rf"score spread {NUM}"},
    },
    "distill": {
        "file": "tests/unit/test_distill_learning.py",
        "function": "test_half_width_student_ranks_held_out_clips_as_its_teacher",
        "figures": {"spearman": rf"Spearman {NUM}", "pearson": rf"Pearson {NUM}", "clips": r"over (\d+) clips"},
    },
}


def git(*args: str) -> str:
    """A read-only git command in the repository; its stdout, stripped."""
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def print_prefixes(source: str, function: str) -> list[str] | None:
    """The literal start of every ``print(...)`` in ``function`` of ``source`` (what a printed
    line of it begins with), or None when the file has no such function."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            break
    else:
        return None
    prefixes = []
    for call in ast.walk(node):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print"):
            continue
        if not call.args:
            continue
        arg, text = call.args[0], ""
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            text = arg.value
        elif isinstance(arg, ast.JoinedStr):
            for part in arg.values:
                if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                    break
                text += part.value
        if text.strip():
            prefixes.append(text)
    return prefixes


def standalone(source: str, function: str) -> str:
    """A test module of ``function`` alone, for an older tree that lacks modules the whole
    test file imports: the file's imports and other top-level statements (helpers,
    fixtures), each kept only if it runs there, then the test function itself, unchanged."""
    lines = source.splitlines()
    out = ["from __future__ import annotations", ""]
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the module's docstring
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        text = lines[first - 1:node.end_lineno]
        if isinstance(node, ast.FunctionDef) and node.name == function:
            out += [*text, ""]
        elif not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
            out += ["try:", *("    " + ln for ln in text), "except Exception:  # not in this tree", "    pass", ""]
    return "\n".join(out) + "\n"


def is_slow(source: str, function: str) -> bool:
    """Whether ``function`` carries ``@pytest.mark.slow`` (directly) in ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return any(isinstance(d, ast.Attribute) and d.attr == "slow" for d in node.decorator_list)
    return False


def parse_figures(lines: list[str], patterns: dict[str, str]) -> dict[str, float]:
    """The figures of ``patterns`` found in the printed ``lines`` (the first match of each)."""
    figures: dict[str, float] = {}
    text = "\n".join(lines)
    for name, pattern in patterns.items():
        m = re.search(pattern, text)
        if m is None:
            continue
        if name.endswith("[]"):
            values = [v for v in re.split(r"[,\s]+", m.group(1)) if v]
            for i, v in enumerate(values):
                figures[f"{name[:-2]}_{i}"] = float(v)
        else:
            figures[name] = float(m.group(1))
    return figures


def junit_outcome(path: Path) -> tuple[str, float | None]:
    """(outcome, seconds) of the one test case in a junit XML file."""
    if not path.is_file():
        return "not run (no junit report)", None
    cases = list(ET.parse(path).getroot().iter("testcase"))
    if not cases:
        return "not run (deselected or not collected)", None
    case = cases[0]
    seconds = float(case.get("time", "nan"))
    for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        if case.find(tag) is not None:
            return outcome, seconds
    return "passed", seconds


def run_test(key: str, spec: dict[str, object], tree: Path, work: Path, env: dict[str, str],
             alone: bool = False) -> dict[str, object]:
    """Run one learning test in the extracted ``tree`` (``alone``: in a module of its own,
    :func:`standalone`); its entry for the results."""
    file, function = str(spec["file"]), str(spec["function"])
    nodeid = f"{file}::{function}"
    entry: dict[str, object] = {"nodeid": nodeid}
    src = tree / file
    source = src.read_text() if src.is_file() else None
    prefixes = print_prefixes(source, function) if source is not None else None
    if prefixes is None:
        entry.update(outcome="n/a", note="the test is not in this commit's tree", figures={}, printed=[])
        return entry
    if alone:
        module = src.with_name(f"_learning_{key}.py")
        module.write_text(standalone(source, function))
        nodeid = f"{module.relative_to(tree).as_posix()}::{function}"
        entry["run_as"] = f"{nodeid} (the test function in a module of its own: this tree lacks modules {file} imports)"
    entry["slow_marked"] = is_slow(source, function)
    junit = work / f"junit-{key}.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "slow or not slow", "-s", "-n", "0", "-p", "no:cacheprovider",
           f"--basetemp={work / ('tmp-' + key)}", f"--junitxml={junit}", nodeid]
    print(f"  {key}: {nodeid}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    process_s = time.perf_counter() - t0
    out = proc.stdout.splitlines()
    outcome, test_s = junit_outcome(junit)
    printed = []
    for line in out:
        starts = [line.find(p) for p in prefixes if p in line]
        if starts:
            printed.append(line[min(starts):])  # pytest's progress may precede it on the line
    entry.update(outcome=outcome, returncode=proc.returncode, figures=parse_figures(printed, spec["figures"]),
                 printed=printed, test_s=None if test_s is None else round(test_s, 1), process_s=round(process_s, 1))
    if not prefixes:
        entry["note"] = "the test prints no figure at this commit: outcome (pass/fail) only"
    elif not printed:
        entry["note"] = "the test's print was not reached (it failed before it, or was not run)"
    if outcome != "passed":
        failure = [ln for ln in out if ln.startswith(("E ", "FAILED", "ERROR"))]
        entry["failure"] = failure[:60] or out[-40:] + proc.stderr.splitlines()[-20:]
    print(f"    {outcome} in {process_s:.0f} s; {entry['figures'] or entry.get('note', '')}", flush=True)
    return entry


def measure(ref: str, keys: list[str], tests_from: str | None = None) -> dict[str, object]:
    """Extract ``ref``'s tree (with the ``tests/`` of ``tests_from`` when given), check its
    torchmos is the one imported, run the tests."""
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    tests_commit = git("rev-parse", "--verify", f"{tests_from}^{{commit}}") if tests_from else commit
    work = Path(tempfile.mkdtemp(prefix=f"bench-learning-{commit[:7]}-"))
    try:
        tree = work / "tree"
        tree.mkdir()
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        if tests_commit != commit:  # the same tests against this commit's code
            shutil.rmtree(tree / "tests")
            archive = subprocess.run(["git", "archive", tests_commit, "tests"], cwd=ROOT, capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        env = dict(os.environ, PYTHONPATH=f"{tree / 'src'}{os.pathsep}{tree}", TORCHMOS_OFFLINE="1")
        pre = subprocess.run([sys.executable, "-c", "import torchmos; print(torchmos.__file__)"], cwd=tree, env=env,
                             capture_output=True, text=True)
        imported = pre.stdout.strip()
        if pre.returncode or not Path(imported).resolve().is_relative_to((tree / "src").resolve()):
            raise SystemExit(f"{ref}: torchmos imported from {imported or pre.stderr.strip()!r}, not {tree / 'src'}")
        print(f"{ref} = {commit[:12]}: torchmos from the extracted tree ({imported})", flush=True)
        alone = tests_commit != commit
        tests = {key: run_test(key, TESTS[key], tree, work, env, alone) for key in keys}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "ref": ref,
        "commit": commit,
        "tests_from": tests_commit,
        "subject": git("log", "-1", "--format=%s", commit),
        "committed": git("log", "-1", "--format=%cI", commit),
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.executable,
        "pytest": 'python -m pytest -m "slow or not slow" -s -n 0 -p no:cacheprovider <nodeid>, one process a test',
        "env": {"PYTHONPATH": "<tree>/src:<tree>", "TORCHMOS_OFFLINE": "1",
                **{k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
                   if k in os.environ}},
        "tests": tests,
    }


def table(entries: list[dict[str, object]], keys: list[str]) -> str:
    """Test x figure rows, one column per commit."""
    heads = [f"{e['ref']} ({str(e['commit'])[:7]})" for e in entries]
    rows = []
    for key in keys:
        names: list[str] = []
        for e in entries:
            names += [n for n in e["tests"].get(key, {}).get("figures", {}) if n not in names]
        rows.append([f"{key}: outcome"] + [str(e["tests"].get(key, {}).get("outcome", "-")) for e in entries])
        for n in names:
            cells = []
            for e in entries:
                t = e["tests"].get(key, {})
                v = t.get("figures", {}).get(n)
                cells.append(f"{v:g}" if v is not None else ("not printed" if t.get("outcome") not in (None, "n/a")
                                                            else "-"))
            rows.append([f"  {n}"] + cells)
    widths = [max(len(r[i]) for r in [["", *heads], *rows]) for i in range(len(heads) + 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [["", *heads], *rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commit", action="append", required=True, help="a commit (any git revision); repeat")
    ap.add_argument("--only", action="append", choices=sorted(TESTS), help="only these tests (repeat); all by default")
    ap.add_argument("--tests-from", default=None, metavar="REV",
                    help="run the tests/ of REV against every commit's code (the same tests and seeds before and "
                    "after; tests that print no figure at an old commit then print it)")
    ap.add_argument("--json", default=None, help="write (or merge into) this results file")
    a = ap.parse_args()
    keys = a.only or list(TESTS)
    where = provenance()
    entries = [measure(ref, keys, a.tests_from) for ref in a.commit]
    print("\n" + table(entries, keys))
    if a.json:
        path = Path(a.json)
        commits: dict[str, object] = {}
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("provenance", {}).get("commit") == where["commit"]:
                commits = old.get("commits", {})
                print(f"merging into {path} (measured at the same HEAD)")
            else:
                print(f"{path} was measured at another HEAD: starting afresh")
        for e in entries:
            commits[f"{e['commit']} tests@{str(e['tests_from'])[:12]}"] = e
        res = {"benchmark": "learning", "provenance": where,
               "note": "seeded learning tests: figures deterministic per commit and machine; seconds are not "
                       "a timing measurement (the machine may have been busy)",
               "commits": commits}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
