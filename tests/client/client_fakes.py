"""A scripted HTTP server for SDK tests (over httpx.MockTransport) and wire samples."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx

KEY = "ark_live_test"
REGION = "aws-us-west-2"
NORMAL = "https://aws-us-west-2.arker.ai"
BURST = "https://aws-burst-us-west-2.arker.ai/api"
VM_ID = "01KQH2ADR3DCAJF06N4R453WPJ"
BURST_VM_ID = "01KQH2ADR3DCAJF06N4R453WPJ_uswe"
WHEN = "2026-11-28T18:00:00Z"

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def build_client(cls: type[Any], server: FakeServer, sleeps: list[float], **options: Any) -> Any:
    """An Arker or AsyncArker talking to `server`, whose waits are recorded in
    `sleeps` instead of slept."""
    options.setdefault("region", REGION)
    is_async = cls.__name__.startswith("Async")
    http = (httpx.AsyncClient if is_async else httpx.Client)(transport=server.transport())
    client = cls(api_key=KEY, http_client=http, **options)

    async def async_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client._sleep = async_sleep if is_async else sleeps.append
    return client


class FakeServer:
    """Answers each request with the next scripted reply (the last one repeats),
    and records what it was sent."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.replies: list[Reply] = []

    def reply(self, *replies: Reply) -> FakeServer:
        self.replies.extend(replies)
        return self

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.replies:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        item = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(item, Exception):
            raise item
        if callable(item) and not isinstance(item, httpx.Response):
            return item(request)
        return item

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def urls(self) -> list[str]:
        return [str(r.url) for r in self.requests]


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def error(status: int, code: str, message: str = "no", **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", None)
    return httpx.Response(
        status, json={"error": {"code": code, "message": message, **extra}}, headers=headers
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def vm(vm_id: str = VM_ID, **fields: Any) -> dict[str, Any]:
    return {
        "vm_id": vm_id,
        "name": None,
        "base_image": "debian",
        "region": REGION,
        "created_at": WHEN,
        "parent_id": None,
        "durable": False,
        "state": "running",
        **fields,
    }


def output(kind: str, stdout: bytes = b"", stderr: bytes = b"", **fields: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "run_id": "run1",
        "stdout": b64(stdout),
        "stderr": b64(stderr),
        "stdout_truncated": False,
        "stderr_truncated": False,
        "duration_ms": 12,
        **fields,
    }


def completed(stdout: bytes = b"", stderr: bytes = b"", exit_code: int = 0) -> dict[str, Any]:
    return output("completed", stdout, stderr, exit_code=exit_code, oom_killed=False)


def status(state: str = "running", stdout: bytes = b"", **fields: Any) -> dict[str, Any]:
    return {
        "run_id": "run1",
        "vm_id": VM_ID,
        "state": state,
        "background": True,
        "exit_code": None,
        "stdout": b64(stdout),
        "stderr": b64(b""),
        "stdout_truncated": False,
        "stderr_truncated": False,
        "oom_killed": False,
        "retry_count": 0,
        "failure_reason": None,
        "created_at": WHEN,
        "started_at": WHEN,
        "finished_at": None,
        "duration_ms": None,
        **fields,
    }


def written(path: str = "/home/user/a.txt", size: int = 3) -> dict[str, Any]:
    return {"path": path, "size": size, "sha256": "0" * 64}


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)
