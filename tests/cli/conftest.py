from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_servers import LocalServer, remove_server, start_server


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("a real server needs root (namespaces, cgroups, btrfs)")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One real server for the whole CLI session (starting one takes seconds)."""
    _needs_root()
    started = start_server(tmp_path_factory.mktemp("cli") / "data")
    try:
        yield started
    finally:
        remove_server(started)


@pytest.fixture
def start_another(tmp_path: Path) -> Iterator[Callable[[str], LocalServer]]:
    """Start more servers for one test; all are stopped and removed after it."""
    _needs_root()
    started: list[LocalServer] = []

    def start(api_prefix: str = "") -> LocalServer:
        s = start_server(tmp_path / f"data{len(started)}", api_prefix)
        started.append(s)
        return s

    try:
        yield start
    finally:
        for s in started:
            remove_server(s)
