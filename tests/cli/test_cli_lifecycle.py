"""`arker fork --ttl --idle-stop --label`, `arker ls --label --state
--parent` and `arker ttl`, against a real server on the real engine."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest
from cli_servers import LocalServer, arker
from typer.testing import CliRunner, Result

from arker.cli import app

pytestmark = pytest.mark.root


def invoke(server: LocalServer, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=server.env())


def _expires(doc: dict[str, object]) -> float | None:
    at = doc["expires_at"]
    return None if at is None else datetime.fromisoformat(str(at)).timestamp()


def _ids(server: LocalServer, *args: str) -> tuple[list[str], int]:
    page = json.loads(invoke(server, "ls", *args, "--json").stdout)
    return [v["vm_id"] for v in page["items"]], page["total"]


def test_fork_ls_and_ttl(server: LocalServer) -> None:
    tag = f"cli-{time.monotonic_ns()}"  # this test's VMs only, on the shared server
    made: list[str] = []
    try:
        before = time.time()
        proc = arker(
            "fork", "busybox", "--ttl", "1h", "--idle-stop", "10m",
            "--label", f"run={tag}", "--label", "team=ml", env=server.env(),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        parent = proc.stdout.decode().strip()
        made.append(parent)
        doc = json.loads(invoke(server, "get", parent, "--json").stdout)
        assert doc["labels"] == {"run": tag, "team": "ml"} and doc["idle_stop_s"] == 600
        expires = _expires(doc)
        assert expires is not None and before + 3600 - 5 < expires < time.time() + 3600 + 5

        child = invoke(server, "fork", parent, "--label", f"run={tag}", "--ttl", "0")
        assert child.exit_code == 0, child.output
        made.append(child.stdout.strip())
        doc = json.loads(invoke(server, "get", made[1], "--json").stdout)
        assert doc["expires_at"] is None and doc["labels"] == {"run": tag}

        assert _ids(server, "--label", f"run={tag}") == ([made[1], parent], 2)
        assert _ids(server, "--label", f"run={tag}", "--label", "team=ml") == ([parent], 1)
        assert _ids(server, "--parent", parent) == ([made[1]], 1)
        assert _ids(server, "--label", f"run={tag}", "--state", "stopped")[1] == 2
        table = invoke(server, "ls", "--label", f"run={tag}")
        assert table.exit_code == 0 and "team=ml" in table.stdout and "2 of 2" in table.stdout

        out = invoke(server, "ttl", parent, "2h")
        assert out.exit_code == 0 and out.stdout.startswith(f"{parent} expires ")
        expires = _expires(json.loads(invoke(server, "get", parent, "--json").stdout))
        assert expires is not None and expires > time.time() + 7200 - 60
        out = invoke(server, "ttl", parent, "0")
        assert out.stdout == f"{parent} never expires\n"
        assert json.loads(invoke(server, "get", parent, "--json").stdout)["expires_at"] is None
    finally:
        if made:
            arker("rm", *made, env=server.env())


def test_bad_durations_labels_and_states(server: LocalServer) -> None:
    for args, option in (
        (("fork", "busybox", "--ttl", "soon"), b"--ttl"),
        (("fork", "busybox", "--idle-stop", "-5m"), b"--idle-stop"),
        (("fork", "busybox", "--label", "novalue"), b"--label"),
        (("ls", "--label", "x"), b"--label"),
        (("ttl", "01NOPE", "an hour"), b"DURATION"),
    ):
        proc = arker(*args, env=server.env())
        assert proc.returncode == 1, (args, proc.stderr)
        assert proc.stderr.startswith(b"error: invalid_request: " + option), proc.stderr
    proc = arker("ls", "--state", "paused", env=server.env())
    assert proc.returncode == 2  # typer's usage error: not a choice
    proc = arker("fork", "busybox", "--label", "bad key=v", env=server.env())
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("error: invalid_request: ")
    assert b"labels" in proc.stderr
    proc = arker("ttl", "01NOSUCHVM", "1h", env=server.env())
    assert proc.returncode == 1 and proc.stderr.startswith(b"error: not_found: ")
