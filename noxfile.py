"""One nox session per lane.

    nox -s tests          # the unit lane (what the README's test command runs), on the lock
    nox -s slow           # the long training tests (also run by .ci/run)
    nox -s integrations   # real SpeechBrain / ESPnet / transformers / Lightning, newest (CPython 3.12)
    nox -s integrations_oldest  # the same tests on the lowest toolkit versions the extras allow
    nox -s engines_oldest # the scoring engines' tests on the lowest Ray, datasets and Lhotse allowed
    nox -s deps_latest    # the newest versions pyproject.toml allows, unit lane
    nox -s deps_oldest    # the lowest versions pyproject.toml allows, unit lane
    nox -s lock           # re-resolve requirements/lock.txt (then run the lanes above)
    nox -s lock_integrations  # re-resolve requirements/lock-integrations.txt
    nox -s lint typecheck docs bench

The lock file, requirements/lock.txt, is the set the README installs: every package at
the version seen to load and pass together. pyproject.toml holds the ranges torchmos
supports; deps_latest and deps_oldest test their two ends, so an upgrade is a one-line
change in pyproject.toml (or a re-run of ``nox -s lock``) backed by a lane's result.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True  # a lane that cannot run fails; it never passes as "skipped"

ROOT = Path(__file__).parent
LOCK = "requirements/lock.txt"
# The integration lane has a lock of its own, on CPython 3.12: ESPnet 202609 and newer need
# 3.12+ (see docs/install.md).
LOCK_INTEGRATIONS = "requirements/lock-integrations.txt"
# The toolkits whose lowest allowed releases integrations_oldest pins. The scoring engines
# (ray, datasets, lhotse) are installed there at what pip resolves beside those: pinned at
# their floors as well, pip backtracked into a pytorch-lightning that needs an unbuildable
# pyyaml. Their floors are tested by engines_oldest instead.
INTEGRATION_EXTRAS = ["speechbrain", "espnet", "lightning"]
# The packages whose newest (and oldest) allowed release the deps lanes install.
TRACKED = ["torch", "torchaudio", "torchmetrics", "transformers"]


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install("-c", LOCK, "-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python="3.11")
def slow(session: nox.Session) -> None:
    session.install("-c", LOCK, "-e", ".[test]")
    session.run("python", "-m", "pytest", "-m", "slow", *session.posargs)


@nox.session(python="3.12")
def integrations(session: nox.Session) -> None:
    """The integration tests on the newest toolkits (the lock: ESPnet 202611 needs 3.12)."""
    session.install("pip<26.3")  # pip 26.3 rejects ci_sdr's (an ESPnet <= 202511 dependency) direct-URL extra
    session.install("-c", LOCK_INTEGRATIONS, "-e", ".[test,integrations]")
    # datasets 4+ decodes an Audio column with torchcodec, in the build of the lock's torch
    session.install("-c", LOCK_INTEGRATIONS, "torchcodec")
    _integration_tests(session)


@nox.session(python="3.11")
def integrations_oldest(session: nox.Session) -> None:
    """The integration tests on the lowest toolkit versions the extras allow, and torch's lowest."""
    tmp = Path(session.create_tmp())
    pins = lower_bounds(extras=INTEGRATION_EXTRAS) + lower_bounds(names=["torch"])
    constraints = tmp / "oldest-integrations.txt"
    constraints.write_text("\n".join(pins) + "\n")
    session.log("lower bounds: " + ", ".join(pins))
    session.install("pip<26.3")
    session.install("-c", str(constraints), "-e", ".[test,integrations]", env=_no_local_wheels(tmp))
    _report(session, "integrations_oldest", ["torch", "torchaudio", *_names(pins)])
    _integration_tests(session)


# The scoring engines' lowest releases get a lane of their own (engines_oldest): beside the
# toolkits' floors pip cannot resolve them (see INTEGRATION_EXTRAS).
ENGINE_EXTRAS = ["ray", "datasets", "lhotse"]
ENGINE_TESTS = ["tests/integrations/test_integration_datasets.py", "tests/integrations/test_integration_lhotse.py",
                "tests/integrations/test_integration_docs.py::test_page_snippets_run[datasets]",
                "tests/integrations/test_integration_docs.py::test_page_snippets_run[lhotse]"]


@nox.session(python="3.11")
def engines_oldest(session: nox.Session) -> None:
    """The scoring engines' tests (Ray Data, datasets, Lhotse) on the lowest releases their
    extras allow, with the lock's torch and torchaudio."""
    tmp = Path(session.create_tmp())
    locked = [ln for ln in (ROOT / LOCK).read_text().splitlines() if ln.startswith(("torch==", "torchaudio=="))]
    pins = lower_bounds(extras=ENGINE_EXTRAS)
    constraints = tmp / "oldest-engines.txt"
    constraints.write_text("\n".join(pins + locked) + "\n")
    session.log("lower bounds: " + ", ".join(pins))
    session.install("-c", str(constraints), "-e", ".[test,ray,datasets,lhotse]", env=_no_local_wheels(tmp))
    _report(session, "engines_oldest", ["torch", "torchaudio", *_names(pins)])
    if session.posargs:
        session.run("python", "-m", "pytest", *session.posargs)
        return
    session.run("python", "-m", "pytest", "-ra", *ENGINE_TESTS)
    session.run("python", "-m", "pytest", "-n", "0", "-ra", *RAY_TESTS, env={"RAY_TMPDIR": "/tmp"})


RAY_TESTS = ["tests/integrations/test_integration_ray.py", "tests/integrations/test_integration_docs.py::test_page_snippets_run[ray]"]


def _integration_tests(session: nox.Session) -> None:
    """The integration tests; those that start a local Ray cluster apart, in one process
    with a short temporary folder for Ray."""
    if session.posargs:
        session.run("python", "-m", "pytest", *session.posargs)
        return
    session.run("python", "-m", "pytest", "tests/integrations", "-ra", "--ignore", RAY_TESTS[0],
                "--deselect", RAY_TESTS[1])
    # Ray's sockets live under its temporary folder, and a Unix socket path has at most 107
    # bytes: under nox's TMPDIR (.nox/<session>/tmp/ray/session_<date>_<pid>/sockets/...)
    # the oldest lane's are longer, and Ray waits forever for its raylet.
    session.run("python", "-m", "pytest", "-n", "0", "-ra", *RAY_TESTS, env={"RAY_TMPDIR": "/tmp"})


def _report(session: nox.Session, lane: str, packages: list[str] = TRACKED) -> None:
    """Print the tracked packages' versions next to the lock's, for the upgrade's evidence."""
    locked = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / LOCK).read_text(), flags=re.M))
    code = ("import importlib.metadata as m, json; "
            f"print(json.dumps({{p: m.version(p) for p in {packages!r}}}))")
    out = session.run("python", "-c", code, silent=True) or "{}"
    import json

    got = json.loads(out.strip().splitlines()[-1])
    session.log(f"{lane}: " + ", ".join(f"{p} {v} (lock {locked.get(p, '?')})" for p, v in got.items()))


@nox.session(python="3.11")
def deps_latest(session: nox.Session) -> None:
    """The unit lane on the newest releases that pyproject.toml's ranges allow."""
    session.install("--upgrade", "--upgrade-strategy", "eager", "-e", ".[test]", *TRACKED)
    _report(session, "deps_latest")
    session.run("python", "-m", "pytest", *session.posargs)


def _requirements(extras: list[str] | None = None) -> list[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    if extras is None:
        return list(meta["dependencies"])
    return [d for e in extras for d in meta["optional-dependencies"][e]]


def _names(pins: list[str]) -> list[str]:
    return [p.partition("==")[0] for p in pins]


def lower_bounds(extras: list[str] | None = None, names: list[str] | None = None) -> list[str]:
    """``name==lowest`` for every ``>=`` (or ``==``) bound of the runtime dependencies (or of
    the given extras), leaving out requirements with markers; ``names`` keeps only those."""
    pins = []
    for dep in _requirements(extras):
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*([^;]*)(;.*)?$", dep)
        assert m, dep
        if m.group(3) or (names is not None and m.group(1) not in names):
            continue
        low = re.search(r">=\s*([^,\s;]+)", m.group(2))
        exact = re.search(r"==\s*([^,\s;]+)", m.group(2))
        if low or exact:
            pins.append(f"{m.group(1)}=={(low or exact).group(1)}")  # type: ignore[union-attr]
    return pins


def _no_local_wheels(tmp: Path) -> dict[str, str]:
    """pip without this machine's own configuration (``PIP_CONFIG_FILE=/dev/null`` and an
    empty find-links folder): its local CPU-only wheel of torch 2.13.0 would otherwise stand
    in for PyPI's torch 2.13.0, the build a user gets."""
    (tmp / "no-wheels").mkdir(exist_ok=True)
    return {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(tmp / "no-wheels")}


@nox.session(python="3.10")
def deps_oldest(session: nox.Session) -> None:
    """The unit lane on the lowest releases that pyproject.toml's ranges allow, on the
    oldest Python that ``requires-python`` allows (pip without the machine's own wheels)."""
    tmp = Path(session.create_tmp())
    constraints = tmp / "oldest.txt"
    constraints.write_text("\n".join(lower_bounds()) + "\n")
    session.log("lower bounds: " + ", ".join(lower_bounds()))
    session.install("-c", str(constraints), "-e", ".[test]", env=_no_local_wheels(tmp))
    _report(session, "deps_oldest")
    session.run("python", "-m", "pytest", *session.posargs)


def _freeze(session: nox.Session, path: str, what: str) -> None:
    frozen = session.run("python", "-m", "pip", "freeze", "--exclude-editable", silent=True) or ""
    header = (f"# The tested set of {what} (pip install -c {path} ...).\n"
              f"# Made by `nox -s {session.name}` on Linux x86_64, CPython {session.python}; "
              "see docs/install.md.\n")
    (ROOT / path).write_text(header + "".join(ln + "\n" for ln in frozen.splitlines()
                                              if ln and not ln.startswith("#")))
    session.log(f"wrote {path}: now run its lanes and commit it with their results")


@nox.session(python="3.11")
def lock(session: nox.Session) -> None:
    """Re-resolve the lock: a fresh environment, the newest allowed set, frozen."""
    session.install("--upgrade", "-e", ".[test]")
    _freeze(session, LOCK, "the README's install and tests")


@nox.session(python="3.12")
def lock_integrations(session: nox.Session) -> None:
    """Re-resolve the integration lane's lock (ESPnet, SpeechBrain, Lightning, Ray, datasets,
    Lhotse; torchcodec for datasets' Audio columns)."""
    session.install("pip<26.3")
    session.install("--upgrade", "-e", ".[test,integrations]", "torchcodec")
    _freeze(session, LOCK_INTEGRATIONS, "the integration lane")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "src", "tests", "benchmarks", "integrations", "noxfile.py")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    session.install("-c", LOCK, "-e", ".", "mypy>=1.8")
    session.run("mypy", "--ignore-missing-imports", "src/torchmos")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    session.install("-c", LOCK, "-e", ".[docs]")
    session.run("python", "docs/make_figures.py")
    session.run("sphinx-build", "-b", "html", "-W", "--keep-going", "docs", "docs/_build/html")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    session.install("-c", LOCK, "-e", ".[test]")
    session.run("python", "benchmarks/run_all.py", *session.posargs)
