"""The README's first two commands are what CI runs, verbatim."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_starts_with_install_and_test_commands():
    install, tests = readme_commands()
    assert "pip install -c requirements/lock.txt -e ." in install and "torchmos demo" in install
    assert "-c requirements/lock.txt" in tests and "pytest" in tests


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the locks are CPython 3.11's (and tomllib is 3.11+)")
@pytest.mark.parametrize("lock, extras", [("lock.txt", ["test"]),
                                          ("lock-integrations.txt", ["test", "integrations"])])
def test_a_lock_pins_every_dependency_inside_its_range(lock, extras):
    """requirements/lock*.txt: exact versions, and each inside pyproject's range."""
    import tomllib
    from packaging.requirements import Requirement

    locked = {}
    for line in (ROOT / "requirements" / lock).read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            locked[name.lower().replace("_", "-")] = version
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = meta["dependencies"] + [d for e in extras for d in meta["optional-dependencies"][e]]
    for spec in specs:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in locked, f"{name} is not in {lock}"
        assert req.specifier.contains(locked[name], prereleases=True), f"{lock}: {name}=={locked[name]} outside {spec}"


def test_ci_runs_the_readme_commands_and_the_integration_lane():
    ci = (ROOT / ".ci" / "run").read_text()
    for cmd in readme_commands():
        assert cmd in ci.splitlines(), f"README command not run verbatim by .ci/run: {cmd}"
    assert "nox -s integrations" in ci
    assert "pytest -m slow" in ci
    assert "nox -s deps_latest deps_oldest" in ci
