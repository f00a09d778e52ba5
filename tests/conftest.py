"""Fixtures shared by every test lane (unit, integrations, realdata).

Generic helpers (a speech-like signal, a local HTTP file server) live in
``tests/helpers.py``: ``from tests.helpers import speechlike``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import FileServer


@pytest.fixture
def tmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torchmos cache: ``TORCHMOS_HOME`` points at a fresh folder, and
    ``TORCHMOS_OFFLINE`` is unset. Both are restored after the test."""
    home = tmp_path / "torchmos-home"
    home.mkdir()
    monkeypatch.setenv("TORCHMOS_HOME", str(home))
    monkeypatch.delenv("TORCHMOS_OFFLINE", raising=False)
    return home


@pytest.fixture
def offline(tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Like ``tmp_home``, with ``TORCHMOS_OFFLINE=1``; returns the cache folder."""
    monkeypatch.setenv("TORCHMOS_OFFLINE", "1")
    return tmp_home


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    """A real HTTP server on 127.0.0.1 (free port, own thread), shut down afterwards.

    ``url = file_server.add("/w.pt", data)``; ``file_server.gets["/w.pt"]`` counts GETs.
    """
    with FileServer() as server:
        yield server


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test with one torch intra-op thread (the CI machines are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HTTP proxy from the environment: test servers live on 127.0.0.1."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
