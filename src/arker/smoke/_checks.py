"""The smoke checks, over raw HTTP: what a deployment must answer, byte for byte.

No SDK here on purpose: the SDK would hide a wrong wire shape behind its
decoding and retries. Each check is one call (or one polling loop), timed,
and judged by the contract and by what the answer must mean (the echo came
back, the file read back is the file written).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from arker.smoke._contract import Contract, ContractError

__all__ = ["CHECKS", "CheckResult", "Target", "TargetReport", "smoke_target"]

# In the order they run; later ones need what earlier ones made.
CHECKS = (
    "fork",
    "run",
    "run_background",
    "run_status",
    "write_file",
    "read_file",
    "delete",
    "gone",
)
SMOKE_PATH = "/home/user/smoke.txt"
POLL_INTERVAL_S = 0.2


@dataclass(frozen=True)
class Target:
    name: str
    base_url: str  # with any mount prefix, e.g. https://host/api
    source: str  # a golden name or a VM id to fork
    api_key: str


@dataclass
class CheckResult:
    name: str
    ok: bool | None  # None: skipped, because a check it needs failed
    latency_ms: float | None = None
    detail: str = ""


@dataclass
class TargetReport:
    target: Target
    results: list[CheckResult] = field(default_factory=list)
    leaked_vms: list[str] = field(default_factory=list)  # made, and not deleted

    @property
    def ok(self) -> bool:
        return not self.leaked_vms and all(r.ok for r in self.results)


class CheckFailed(Exception):
    pass


def _expect(contract: Contract, op: str, response: httpx.Response, status: int) -> Any:
    """The body of a response that must have `status`. A different status
    fails, quoting the error the server sent (after checking its shape)."""
    try:
        body = contract.check(op, response)
    except ContractError as exc:
        raise CheckFailed(f"{response.status_code}: {exc}") from None
    if response.status_code != status:
        said = ""
        if isinstance(body, dict) and "error" in body:
            said = f": {body['error']['code']}: {body['error']['message']}"
        raise CheckFailed(f"status {response.status_code}, expected {status}{said}")
    return body


def _b64(body: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(body[key], validate=True)


class _Session:
    def __init__(self, target: Target, http: httpx.Client, contract: Contract) -> None:
        self.target = target
        self.http = http
        self.contract = contract
        self.base = target.base_url.rstrip("/")
        self.vm_id: str | None = None
        self.deleted = False
        self.bg_run: str | None = None
        self.payload = b"arker smoke " + secrets.token_hex(16).encode() + b"\n"

    def _url(self, path: str) -> str:
        return f"{self.base}/v1{path}"

    def fork(self) -> str:
        r = self.http.post(
            self._url(f"/vms/{self.target.source}/fork"),
            json={"name": f"smoke-{secrets.token_hex(3)}"},
        )
        if r.is_success:
            # Learn the id before judging the shape: a VM that was made must
            # be deleted even when the answer describing it is wrong.
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.vm_id = str(r.json()["vm_id"])
        vm = _expect(self.contract, "forkVm", r, 201)
        self.vm_id = vm["vm_id"]
        return f"{vm['vm_id']} ({vm['state']})"

    def run(self) -> str:
        r = self.http.post(self._url(f"/vms/{self.vm_id}/runs"), json={"command": "echo smoke"})
        result = _expect(self.contract, "runCommand", r, 200)
        if result["type"] != "completed" or result["exit_code"] != 0:
            raise CheckFailed(f"{result['type']}, exit code {result.get('exit_code')}")
        if _b64(result, "stdout") != b"smoke\n":
            raise CheckFailed(f"stdout {_b64(result, 'stdout')!r}, expected b'smoke\\n'")
        return f"run took {result['duration_ms']} ms on the server"

    def run_background(self) -> str:
        r = self.http.post(
            self._url(f"/vms/{self.vm_id}/runs"),
            json={"command": "sleep 1; echo background", "background": True},
        )
        started = _expect(self.contract, "runCommand", r, 202)
        if started["type"] != "started":
            raise CheckFailed(f"type {started['type']!r}, expected 'started'")
        self.bg_run = started["run_id"]
        return str(started["run_id"])

    def run_status(self, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        polls = 0
        while True:
            polls += 1
            r = self.http.get(self._url(f"/vms/{self.vm_id}/runs/{self.bg_run}"))
            status = _expect(self.contract, "getRun", r, 200)
            if status["state"] not in ("queued", "running"):
                break
            if time.monotonic() > deadline:
                raise CheckFailed(f"still {status['state']} after {timeout_s:g} s")
            time.sleep(POLL_INTERVAL_S)
        if status["state"] != "completed" or status["exit_code"] != 0:
            raise CheckFailed(f"{status['state']}, exit code {status['exit_code']}")
        if _b64(status, "stdout") != b"background\n":
            raise CheckFailed(f"stdout {_b64(status, 'stdout')!r}, expected b'background\\n'")
        return f"completed after {polls} polls"

    def write_file(self) -> str:
        r = self.http.put(
            self._url(f"/vms/{self.vm_id}/files"),
            params={"path": SMOKE_PATH},
            content=self.payload,
            headers={"Content-Type": "application/octet-stream", "Upload-Id": str(uuid.uuid4())},
        )
        written = _expect(self.contract, "writeFile", r, 200)
        want = (len(self.payload), hashlib.sha256(self.payload).hexdigest())
        if (written["size"], written["sha256"]) != want:
            raise CheckFailed(f"size/sha256 {written['size']}/{written['sha256'][:12]}...")
        return f"{written['size']} bytes"

    def read_file(self) -> str:
        r = self.http.get(self._url(f"/vms/{self.vm_id}/files"), params={"path": SMOKE_PATH})
        _expect(self.contract, "readFile", r, 200)
        if r.content != self.payload:
            raise CheckFailed(f"read {len(r.content)} bytes that differ from those written")
        return f"{len(r.content)} bytes, same as written"

    def delete(self) -> str:
        r = self.http.delete(self._url(f"/vms/{self.vm_id}"))
        _expect(self.contract, "deleteVm", r, 204)
        self.deleted = True
        return "204"

    def gone(self) -> str:
        r = self.http.get(self._url(f"/vms/{self.vm_id}"))
        body = _expect(self.contract, "getVm", r, 404)
        if body["error"]["code"] != "not_found":
            raise CheckFailed(f"code {body['error']['code']!r}, expected 'not_found'")
        return "404 not_found"


def _timed(name: str, step: Callable[[], str]) -> CheckResult:
    start = time.perf_counter()
    try:
        detail = step()
    except CheckFailed as exc:
        ok, detail = False, str(exc)
    except httpx.HTTPError as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    except (KeyError, TypeError, ValueError) as exc:
        # A body the contract allows but the check cannot read (e.g. bad base64).
        ok, detail = False, f"unreadable answer: {type(exc).__name__}: {exc}"
    else:
        ok = True
    return CheckResult(name, ok, (time.perf_counter() - start) * 1000, detail)


# What each check needs to have passed first.
_NEEDS = {
    "run": "fork",
    "run_background": "fork",
    "run_status": "run_background",
    "write_file": "fork",
    "read_file": "write_file",
    "delete": "fork",
    "gone": "delete",
}


def smoke_target(
    target: Target,
    contract: Contract,
    *,
    timeout_s: float = 120.0,
    transport: httpx.BaseTransport | None = None,
) -> TargetReport:
    """Run every check against one deployment. The VM it forks is deleted
    before this returns, whatever failed on the way."""
    report = TargetReport(target)
    headers = {"Authorization": f"Bearer {target.api_key}", "User-Agent": "arker-smoke"}
    with httpx.Client(headers=headers, timeout=timeout_s, transport=transport) as http:
        session = _Session(target, http, contract)
        passed: set[str] = set()
        try:
            for name in CHECKS:
                need = _NEEDS.get(name)
                if need is not None and need not in passed:
                    report.results.append(CheckResult(name, None, detail=f"needs {need}"))
                    continue
                result = _timed(name, getattr(session, name))
                report.results.append(result)
                if result.ok:
                    passed.add(name)
        finally:
            if session.vm_id is not None and not session.deleted:
                try:
                    http.delete(f"{session.base}/v1/vms/{session.vm_id}").raise_for_status()
                except httpx.HTTPError:
                    report.leaked_vms.append(session.vm_id)
    return report
