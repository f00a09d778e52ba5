"""The README's first two commands are what CI runs, verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_starts_with_install_and_test_commands():
    install, tests = readme_commands()
    assert "pip install -e ." in install and "torchmos demo" in install
    assert "pytest" in tests


def test_ci_runs_the_readme_commands_and_the_integration_lane():
    ci = (ROOT / ".ci" / "run").read_text()
    for cmd in readme_commands():
        assert cmd in ci.splitlines(), f"README command not run verbatim by .ci/run: {cmd}"
    assert "nox -s integrations" in ci
