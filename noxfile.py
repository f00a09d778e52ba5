"""One nox session per lane: tests, integrations, lint, typecheck, docs, bench.

    nox -s tests          # the default unit lane (what the README's test command runs)
    nox -s integrations   # real SpeechBrain / ESPnet / transformers / Lightning
    nox -s lint typecheck docs bench
"""

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python="3.11")
def integrations(session: nox.Session) -> None:
    session.install("pip<26.3")  # pip 26.3 rejects ci_sdr's (an ESPnet dependency) direct-URL extra
    session.install("-e", ".[test,integrations]")
    session.run("python", "-m", "pytest", "tests/integrations", "-ra", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "src", "tests", "benchmarks", "integrations", "noxfile.py")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy>=1.8")
    session.run("mypy", "--ignore-missing-imports", "src/torchmos")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    session.install("-e", ".[docs]")
    session.run("python", "docs/make_figures.py")
    session.run("sphinx-build", "-b", "html", "-W", "--keep-going", "docs", "docs/_build/html")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/run_all.py", *session.posargs)
