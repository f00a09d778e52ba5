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


def _expand(meta: dict, extras: list[str]) -> list[str]:
    """The requirements of ``extras``, with ``torchmos[a,b]`` self-references expanded."""
    from packaging.requirements import Requirement

    out = []
    for extra in extras:
        for spec in meta["optional-dependencies"][extra]:
            req = Requirement(spec)
            out += _expand(meta, sorted(req.extras)) if req.name == meta["name"] else [spec]
    return out


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is 3.11+")
@pytest.mark.parametrize("lock, extras", [("lock.txt", ["test"]),
                                          ("lock-integrations.txt", ["test", "integrations"])])
def test_a_lock_pins_every_dependency_inside_its_range(lock, extras):
    """requirements/lock*.txt: exact versions, and each inside pyproject's range, for the
    Python the lock was made on (its header names it; markers are evaluated for it)."""
    import tomllib
    from packaging.requirements import Requirement

    text = (ROOT / "requirements" / lock).read_text()
    python = re.search(r"CPython (3\.\d+)", text)
    assert python, f"{lock}'s header does not name the Python it was made on"
    env = {"python_version": python.group(1), "python_full_version": python.group(1) + ".0"}
    locked = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            locked[name.lower().replace("_", "-")] = version
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = meta["dependencies"] + _expand(meta, extras)
    assert len(specs) > len(meta["dependencies"]) + 2, "the extras add nothing: the expansion is broken"
    for spec in specs:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = req.name.lower().replace("_", "-")
        assert name in locked, f"{name} is not in {lock}"
        assert req.specifier.contains(locked[name], prereleases=True), f"{lock}: {name}=={locked[name]} outside {spec}"


def test_ci_runs_the_readme_commands_and_the_integration_lane():
    ci = (ROOT / ".ci" / "run").read_text()
    for cmd in readme_commands():
        assert cmd in ci.splitlines(), f"README command not run verbatim by .ci/run: {cmd}"
    assert "nox -s integrations integrations_oldest" in ci
    assert "pytest -m slow" in ci
    assert "nox -s deps_latest deps_oldest" in ci
