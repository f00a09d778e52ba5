"""Every project path the documentation names exists.

The docs, the READMEs and the integration material point readers at files ("the test is
``tests/integrations/test_integration_espnet.py``", "results in
``benchmarks/results/startup.json``", "[the API](api.md)"). A renamed or never-written
file leaves such a pointer dangling; this test finds them all:

* tokens that start with one of the repository's top-level folders or files
  (``tests/``, ``benchmarks/``, ``integrations/``, ``docs/``, ...), anywhere in the text,
  resolved from the repository root (globs such as ``tests/unit/test_*.py`` must match
  something);
* the targets of Markdown links and images that are not URLs, resolved from the page;
* test files named without their folder (``test_integration_espnet.py``): some file of
  that name must exist under ``tests/``.

Paths with a placeholder (``<corpus>``, ``{set}``, ``$dir``) and build outputs (what
``.gitignore`` ignores, such as the figures ``docs/make_figures.py`` draws and
``docs/_build``) are not checked: a clean checkout does not have them.
"""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".nox", ".venv", "_build", "node_modules", "__pycache__", ".pytest_cache"}
TOP = sorted(p.name for p in ROOT.iterdir() if p.name not in SKIP_DIRS and not p.name.endswith(".egg-info"))
_TOPS = "|".join(re.escape(t) for t in TOP if t != "README.md")
TOKEN = re.compile(rf"(?<![\w./-])(?:{_TOPS})(?:/[\w.*-]+)*/?")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
PLACEHOLDER = re.compile(r"[<>{}$]")
BARE_TEST = re.compile(r"(?<![\w./*-])test_\w+\.py\b")  # a test file named without its folder
TEST_FILES = {p.name for p in (ROOT / "tests").rglob("test_*.py")}


def _ignore_patterns() -> list[tuple[bool, str]]:
    lines = (ROOT / ".gitignore").read_text().splitlines() if (ROOT / ".gitignore").exists() else []
    return [(ln.startswith("!"), ln.lstrip("!").strip("/")) for ln in map(str.strip, lines)
            if ln and not ln.startswith("#")]


def generated(rel: str, patterns: list[tuple[bool, str]] | None = None) -> bool:
    """Whether ``.gitignore`` ignores ``rel`` (a build output), its last matching line deciding."""
    ignored = False
    parts = rel.strip("/").split("/")
    for negated, pattern in _ignore_patterns() if patterns is None else patterns:
        anchored = "/" in pattern
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if (any(fnmatch(p, pattern) for p in prefixes) if anchored else any(fnmatch(p, pattern) for p in parts)):
            ignored = not negated
    return ignored


def _documents() -> list[Path]:
    docs = [ROOT / "README.md"]
    for folder, patterns in (("docs", ["*.md", "*.py"]), ("integrations", ["*.md", "*.sh", "*.yaml", "*.py"]),
                             ("benchmarks", ["*.md"])):
        for pattern in patterns:
            docs += [p for p in (ROOT / folder).rglob(pattern) if not SKIP_DIRS & set(p.parts)]
    return sorted(set(docs))


def dangling(doc: Path) -> list[str]:
    """The paths that ``doc`` names and that do not exist, as ``"line N: path"``."""
    missing = []
    for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        for m in TOKEN.finditer(line):
            path = m.group(0).rstrip(".")
            rest = line[m.end():m.end() + 1]
            if "/" not in path or PLACEHOLDER.search(rest) or "_build" in path:
                continue  # a bare folder name in prose, or a path that goes on with a placeholder
            if generated(path):
                continue
            if not (any(ROOT.glob(path.rstrip("/"))) if "*" in path else (ROOT / path).exists()):
                missing.append(f"line {n}: {path}")
        for m in BARE_TEST.finditer(line):
            if m.group(0) not in TEST_FILES:
                missing.append(f"line {n}: {m.group(0)}")
        if doc.suffix != ".md":
            continue
        for m in LINK.finditer(line):
            target = m.group(1).split("#", 1)[0]
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target) or PLACEHOLDER.search(target):
                continue  # a URL, a mailto:, an anchor on this page
            resolved = (doc.parent / target).resolve()
            # a target under the project's own build folders (.nox, .venv: where CI's temporary
            # pages live) is not a build output of the docs
            inside = resolved.is_relative_to(ROOT) and not SKIP_DIRS & set(resolved.relative_to(ROOT).parts)
            if inside and generated(resolved.relative_to(ROOT).as_posix()):
                continue
            if not resolved.exists():
                missing.append(f"line {n}: ({target})")
    return missing


DOCUMENTS = _documents()


def test_the_scan_sees_the_documentation():
    names = {p.relative_to(ROOT).as_posix() for p in DOCUMENTS}
    assert {"README.md", "docs/install.md", "docs/cli.md"} <= names
    assert any(n.startswith("integrations/") for n in names)


def test_the_scan_finds_a_dangling_path(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("See `tests/unit/test_no_such_file.py`, [this](no-such-page.md),\n"
                    "`tests/unit/test_doc_paths.py`, `egs2/<corpus>/tts1` and `benchmarks/results/*.json`.\n"
                    "The test is test_espnet.py; test_doc_paths.py exists.\n")
    assert dangling(page) == ["line 1: tests/unit/test_no_such_file.py", "line 1: (no-such-page.md)",
                              "line 3: test_espnet.py"]


def test_build_outputs_are_told_apart_by_gitignore():
    patterns = [(False, "docs/_static/*.png"), (True, "docs/_static/report.png"), (False, "_build")]
    assert generated("docs/_static/scoreq_loss.png", patterns)
    assert not generated("docs/_static/report.png", patterns)
    assert generated("docs/_build/html/index.html", patterns)
    assert not generated("docs/cli.md", patterns)


@pytest.mark.parametrize("doc", DOCUMENTS, ids=[p.relative_to(ROOT).as_posix() for p in DOCUMENTS])
def test_every_path_a_document_names_exists(doc: Path):
    missing = dangling(doc)
    assert not missing, f"{doc.relative_to(ROOT)} names paths that do not exist:\n  " + "\n  ".join(missing)
