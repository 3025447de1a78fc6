"""The route tests' harness: an app over a FakeEngine with an HTTP client per
org whose every response is checked against the contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from contract_check import check
from fake_engine import FakeEngine

from arker.server.config import Settings

__all__ = ["Server", "client_for"]


async def _check_hook(response: httpx.Response) -> None:
    await response.aread()
    check(response)


@dataclass
class Server:
    """One running app: its engine, service and an authenticated client per org."""

    app: Any
    engine: FakeEngine
    settings: Settings
    client: httpx.AsyncClient  # org "acme"
    other: httpx.AsyncClient  # org "globex"
    anon: httpx.AsyncClient  # no key
    keys: dict[str, str]

    @property
    def service(self) -> Any:
        return self.app.state.service


def client_for(app: Any, key: str | None, prefix: str = "") -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://arker.test" + prefix,
        headers=headers,
        event_hooks={"response": [_check_hook]},
        timeout=30,
    )
