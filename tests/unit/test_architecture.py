"""The house (../shared/DESIGN.md), checked from the source.

* Floors: data flows one way, audio/hub -> models -> functional -> metrics ->
  adapters/cli/training; a module never imports one on a higher floor, not even lazily
  inside a function (every ``import`` statement and every ``importlib.import_module``
  of a literal name is read, wherever it is).
* No import circle anywhere in ``src/torchmos``: the graph of those imports has no cycle
  (imports under ``if TYPE_CHECKING:``, which never run, are left out).
* Every option of a metric exists on its functional twin, with the same name and default.

The import graph is read with :mod:`ast`, so nothing is imported to build it; the
checker itself is first run on a small tree with a known upward import and circle.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import torchmos
import torchmos.functional as F

SRC = Path(torchmos.__file__).parent

# top-level component of torchmos -> floor ("" is the package itself: the facade). The
# comparison of systems (stats and its helpers) needs only the cards; the report and the
# CLI are on top, beside the adapters and the training recipes.
FLOORS = {"audio": 0, "hub": 0, "synth": 0, "models": 1, "stats": 1, "_stats_core": 1,
          "_stats_text": 1, "_score_table": 1, "_svg": 1, "functional": 2, "losses": 2, "losses_mos": 2,
          "metrics": 3, "adapters": 4, "cli": 4, "cli_compare": 4, "cli_rows": 4, "cli_score": 4, "cli_shard": 4,
          "report": 4, "training": 4, "": 4}


def module_files(root: Path, package: str = "torchmos") -> dict[str, Path]:
    """Every module under ``root``: dotted name -> file (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = path
    return out


def _owner(target: str, modules: dict[str, Path]) -> str | None:
    """The deepest module of ``target`` (``a.b.name`` -> ``a.b``) that is in ``modules``."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """``(module, line)`` for every project module that ``name`` imports, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and _type_checking(n.test)]:
        block.body = []  # ``if TYPE_CHECKING:`` imports never run: annotations only
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            base = ".".join([*base_parts, *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        for target in targets:
            owner = _owner(target, modules)
            if owner is not None and owner != name:
                found.append((owner, node.lineno))
    return found


def import_graph(root: Path, package: str = "torchmos") -> dict[str, list[tuple[str, int]]]:
    modules = module_files(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def floor_of(module: str) -> int:
    component = module.split(".")[1] if "." in module else ""
    if component not in FLOORS:
        raise AssertionError(f"{module}: its component {component!r} has no floor; add it to FLOORS "
                             "(and to the house in DESIGN.md)")
    return FLOORS[component]


def upward_imports(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    return [f"{src} (floor {floor_of(src)}) imports {dst} (floor {floor_of(dst)}) at line {line}"
            for src, edges in graph.items() for dst, line in edges if floor_of(dst) > floor_of(src)]


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# ----------------------------------------------------------------------------- the checker itself


def test_the_checker_finds_an_upward_import_and_a_circle(tmp_path):
    pkg = tmp_path / "torchmos"
    (pkg / "functional").mkdir(parents=True)
    (pkg / "metrics").mkdir()
    files = {
        "__init__.py": "from . import functional\n",
        "audio.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .metrics import base\n",
        "functional/__init__.py": "from ._core import score\n",
        "functional/_core.py": "from .. import audio\n\ndef score():\n    from ..metrics import base  # lazy\n",
        "metrics/__init__.py": "",
        "metrics/base.py": "import importlib\nfrom torchmos.functional import score\n"
                           "importlib.import_module('torchmos.functional._core')\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    graph = import_graph(pkg)
    assert sorted(d for d, _ in graph["torchmos.metrics.base"]) == ["torchmos.functional", "torchmos.functional._core"]
    assert upward_imports(graph) == [
        "torchmos.functional._core (floor 2) imports torchmos.metrics.base (floor 3) at line 4"]
    assert cycles(graph) == [["torchmos.functional", "torchmos.functional._core", "torchmos.metrics.base"]]


# ----------------------------------------------------------------------------- the house


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int]]]:
    return import_graph(SRC)


def test_every_module_has_a_floor(graph):
    for module in graph:
        floor_of(module)
    assert {"torchmos.functional", "torchmos.metrics.base", "torchmos.functional._cache"} <= set(graph)


def test_no_floor_imports_a_higher_one(graph):
    assert upward_imports(graph) == []


def test_no_import_circle(graph):
    assert cycles(graph) == []


def test_no_circle_through_the_computation_floors(graph):
    """functional/ and metrics/ (this layout's reason to exist) are in no circle at all."""
    assert [c for c in cycles(graph) if any(m.startswith(("torchmos.functional", "torchmos.metrics"))
                                              for m in c)] == []


def test_functional_never_imports_metrics(graph):
    for module, edges in graph.items():
        if module.startswith("torchmos.functional"):
            assert not [d for d, _ in edges if d.startswith("torchmos.metrics")], module


# ----------------------------------------------------------------------------- twins

TWINS = {"DistillMOS": F.distillmos, "ScoreqNR": F.scoreq_nr, "ScoreqRef": F.scoreq_ref,
         "VQScore": F.vqscore, "MsrUtmos": F.msr_utmos}
METRIC_ONLY = {"self", "per_utterance"}  # state kept by a metric; **kwargs are torchmetrics'


@pytest.mark.parametrize("metric_name", sorted(TWINS))
def test_every_metric_option_is_on_its_functional_twin(metric_name):
    metric = getattr(torchmos, metric_name)
    twin = inspect.signature(TWINS[metric_name]).parameters
    options = [p for p in inspect.signature(metric.__init__).parameters.values()
               if p.name not in METRIC_ONLY and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    assert options, metric_name
    missing = [p.name for p in options if p.name not in twin]
    assert not missing, f"{metric_name} options missing on {TWINS[metric_name].__name__}: {missing}"
    for p in options:
        assert twin[p.name].default == p.default, (
            f"{metric_name}({p.name}={p.default!r}) but {TWINS[metric_name].__name__}({p.name}="
            f"{twin[p.name].default!r})")


def test_the_twins_are_the_ones_the_metric_modules_name():
    from torchmos.metrics import msr_utmos, scoreq, vqscore

    assert (scoreq.scoreq_nr, scoreq.scoreq_ref, vqscore.vqscore, msr_utmos.msr_utmos) == (
        F.scoreq_nr, F.scoreq_ref, F.vqscore, F.msr_utmos)
    assert all(f.__module__.startswith("torchmos.functional.") for f in TWINS.values())
