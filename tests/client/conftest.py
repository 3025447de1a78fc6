from __future__ import annotations

import pytest
from client_fakes import FakeServer


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def sleeps() -> list[float]:
    """The waits a client asked for (its sleep is replaced: tests never wait)."""
    return []


@pytest.fixture(autouse=True)
def _no_arker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ARKER_API_KEY", "AUTH_KEY", "ARKER_REGION", "ARKER_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
