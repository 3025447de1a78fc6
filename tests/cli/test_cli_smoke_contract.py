"""`arker smoke` against servers that answer wrongly, on purpose.

The real-server runs are in test_cli_e2e.py; here a tiny http.server stands in
for a deployment that breaks the contract, to show the smoke test notices,
names the check, and still deletes the VM it made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from typer.testing import CliRunner

from arker.cli import app
from arker.smoke import Target, load_contract, run_smoke
from arker.smoke._contract import ContractError

VM_ID = "01KQH2ADR3DCAJF06N4R453WPJ"
GOOD_VM = {
    "vm_id": VM_ID,
    "name": "smoke",
    "base_image": "busybox",
    "region": "local",
    "created_at": "2026-11-28T18:00:00+00:00",
    "parent_id": None,
    "durable": False,
    "state": "stopped",
}


class WrongServer(ThreadingHTTPServer):
    """Answers fork with a Vm missing `state` and with an unknown field; records
    every request, so a test can see the VM was deleted."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str]] = []


class _Handler(BaseHTTPRequestHandler):
    server: WrongServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output clean

    def _send(self, status: int, body: object | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.server.requests.append(("POST", self.path))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.endswith("/fork"):
            bad = {k: v for k, v in GOOD_VM.items() if k != "state"} | {"extra": 1}
            self._send(201, bad)
        else:
            self._send(500, {"error": {"code": "internal", "message": "not in this stub"}})

    def do_DELETE(self) -> None:
        self.server.requests.append(("DELETE", self.path))
        self._send(204)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))
        self._send(404, {"error": {"code": "not_found", "message": "no such VM"}})


@pytest.fixture
def wrong_server() -> Iterator[WrongServer]:
    server = WrongServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _url(server: WrongServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def test_malformed_fork_fails_the_fork_check_and_the_vm_is_deleted(
    wrong_server: WrongServer,
) -> None:
    [report] = run_smoke([Target("wrong", _url(wrong_server), "busybox", "ark_test")])
    assert not report.ok
    fork = report.results[0]
    assert (fork.name, fork.ok) == ("fork", False)
    assert "state" in fork.detail  # says what is missing
    assert all(r.ok is None for r in report.results[1:])  # the rest need a VM
    assert ("DELETE", f"/v1/vms/{VM_ID}") in wrong_server.requests
    assert report.leaked_vms == []


def test_cli_names_the_failing_check_and_exits_1(wrong_server: WrongServer) -> None:
    env = {
        "ARKER_API_KEY": "ark_test",
        "ARKER_BASE_URL": _url(wrong_server),
        "ARKER_SOURCE_VM": "busybox",
        "COLUMNS": "200",
    }
    result = CliRunner().invoke(app, ["smoke"], env=env)
    assert result.exit_code == 1
    assert "FAIL wrong" not in result.output  # single-target name is the URL
    assert "fork" in result.output and "FAIL" in result.output
    assert ("DELETE", f"/v1/vms/{VM_ID}") in wrong_server.requests


def test_cli_subprocess_json_names_the_check(wrong_server: WrongServer) -> None:
    targets = [{"name": "wrong", "baseUrl": _url(wrong_server), "source": "busybox"}]
    env = dict(os.environ, ARKER_API_KEY="ark_test", ARKER_SMOKE_TARGETS=json.dumps(targets))
    proc = subprocess.run(
        [sys.executable, "-c", "from arker.cli import main; main()", "smoke", "--json"],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    [doc] = json.loads(proc.stdout)
    failed = [c["name"] for c in doc["checks"] if c["ok"] is False]
    assert failed == ["fork"]
    assert b"Traceback" not in proc.stderr


def test_missing_configuration_is_one_line() -> None:
    result = CliRunner().invoke(
        app,
        ["smoke"],
        env={
            "ARKER_API_KEY": "",
            "ARKER_BASE_URL": "",
            "ARKER_SOURCE_VM": "",
            "ARKER_SMOKE_TARGETS": "",
        },
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid_request: set ARKER_BASE_URL")
    assert result.stderr.count("\n") == 1


def _response(status: int, body: object, media: str = "application/json") -> httpx.Response:
    return (
        httpx.Response(status, json=body)
        if media == "application/json"
        else httpx.Response(status, content=b"x", headers={"content-type": media})
    )


def test_contract_accepts_good_and_names_what_is_wrong() -> None:
    contract = load_contract()
    assert contract.check("forkVm", _response(201, GOOD_VM))["vm_id"] == VM_ID
    with pytest.raises(ContractError, match="created_at"):
        contract.check("forkVm", _response(201, GOOD_VM | {"created_at": "yesterday"}))
    with pytest.raises(ContractError, match="not one forkVm answers"):
        contract.check("forkVm", _response(200, GOOD_VM))
    with pytest.raises(ContractError, match="content-type"):
        contract.check("getVm", _response(200, None, "text/html"))
    err = {"error": {"code": "not_found", "message": "no"}}
    assert contract.check("getVm", _response(404, err)) == err
    with pytest.raises(ContractError, match="must have no body"):
        contract.check("deleteVm", httpx.Response(204, content=b"{}"))
