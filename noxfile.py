"""Developer tasks: `nox` runs lint, typing and tests; `nox -s <name>` runs one."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "typing", "tests"]

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _install_groups(session: nox.Session, *groups: str) -> None:
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    _install_groups(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict over src, tests and examples."""
    _install_groups(session, "typing")
    session.install("-e", ".[all]")  # the broker clients' types, for the connectors
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite on asyncio and trio, with branch coverage enforced."""
    _install_groups(session, "test", "examples")
    session.install("-e", ".[all]")  # every connector's broker client, for tests/brokers
    session.run("coverage", "erase")
    # Two workers (pytest-xdist): `nox -s tests -- -n 0` runs in one process, e.g. to debug.
    session.run("coverage", "run", "-m", "pytest", "-n", "2", *session.posargs)
    session.run("coverage", "combine", "--quiet")
    session.run("coverage", "report")


@nox.session
def soak(session: nox.Session) -> None:
    """Many invocations under random faults: no lost results, no memory growth (minutes long;
    not in the default run). ``nox -s soak -- --invocations 100000 --seed 7``."""
    _install_groups(session, "test")
    session.install("-e", ".")
    session.run("python", "benchmarks/soak.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput, fan-out, latency-bound, memory, added-latency and idle-RSS benchmarks against a
    loopback stub gateway, with the raw ceiling and bare httpx alongside (a few minutes; not
    in the default run). ``nox -s bench -- --quick`` or ``-- --scenario a,c --backend uvloop``."""
    _install_groups(session, "bench")
    session.install("-e", ".")
    session.run("python", "benchmarks/bench.py", *session.posargs)
