"""`arker smoke` and `arker demo` end to end, on real servers."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_servers import LocalServer, arker, remove_data_dir

pytestmark = pytest.mark.root


def _vm_count(server: LocalServer) -> int:
    proc = arker("ls", "--json", env=server.env())
    assert proc.returncode == 0, proc.stderr
    total: int = json.loads(proc.stdout)["total"]
    return total


def test_smoke_compares_two_servers_in_one_table(
    server: LocalServer, start_another: Callable[[str], LocalServer]
) -> None:
    prefixed = start_another("/api")
    assert prefixed.base_url.endswith("/api")
    before = _vm_count(server), _vm_count(prefixed)
    targets = [
        {"name": "plain", "baseUrl": server.base_url, "source": "busybox"},
        # Each local server has its own key store, so this one brings its key.
        {
            "name": "prefixed",
            "baseUrl": prefixed.base_url,
            "source": "busybox",
            "apiKey": prefixed.api_key,
        },
    ]
    env = server.env() | {"ARKER_SMOKE_TARGETS": json.dumps(targets)}
    proc = arker("smoke", env=env)
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    assert "plain" in out and "prefixed" in out and "FAIL" not in out
    assert out.count(" ms") >= 16  # a latency for each check of each target
    assert (_vm_count(server), _vm_count(prefixed)) == before  # it deleted its VMs

    doc = json.loads(arker("smoke", "--json", env=env).stdout)
    assert [t["ok"] for t in doc] == [True, True]
    assert {c["name"] for c in doc[0]["checks"]} >= {"fork", "run", "run_status", "read_file"}


def test_smoke_flags_mirror_the_environment(server: LocalServer) -> None:
    env = server.env()
    del env["ARKER_BASE_URL"]
    proc = arker("smoke", "--base-url", server.base_url, "--source", "busybox", env=env)
    assert proc.returncode == 0, proc.stdout.decode()


def test_smoke_fails_on_a_bad_source_naming_fork(server: LocalServer) -> None:
    proc = arker("smoke", "--source", "no-such-golden", env=server.env())
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout.decode() and "fork: status 404" in proc.stdout.decode()


def test_demo_against_a_deployment(server: LocalServer) -> None:
    before = _vm_count(server)
    proc = arker("demo", env=server.env() | {"ARKER_SOURCE_VM": "busybox"})
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "write in the child only" in out and "parent still 'hello from the parent'" in out
    assert _vm_count(server) == before


def _unconfigured_env() -> dict[str, str]:
    """The environment of a machine where nothing is configured."""
    names = ("ARKER_API_KEY", "AUTH_KEY", "ARKER_REGION", "ARKER_BASE_URL", "ARKER_SOURCE_VM")
    return {k: v for k, v in os.environ.items() if k not in names} | {"COLUMNS": "200"}


def _demo_here(data_dir: Path, *args: str) -> tuple[float, str]:
    start = time.monotonic()
    proc = arker("demo", "--data-dir", str(data_dir), *args, env=_unconfigured_env(), timeout=1800)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"cleaned up: VMs deleted, key revoked, server stopped" in proc.stderr
    keys = arker("keys", "ls", "--data-dir", str(data_dir)).stdout.decode().splitlines()
    [demo_key] = [line for line in keys if "arker-demo" in line]
    assert not demo_key.rstrip().endswith("-")  # the REVOKED column has a time
    return took, proc.stdout.decode()


def test_demo_from_a_clean_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    try:
        _, out = _demo_here(data_dir, "--golden", "busybox")
        assert "fork busybox" in out and "background run, streamed" in out
        assert "tick 3 at" in out
    finally:
        remove_data_dir(data_dir)


@pytest.mark.slow
def test_demo_default_golden_debian(tmp_path: Path) -> None:
    """The real default, as a user on a fresh machine runs it (builds debian
    from the Debian archive: needs the network, takes minutes)."""
    data_dir = tmp_path / "demo"
    try:
        took, out = _demo_here(data_dir)
        assert "Debian GNU/Linux 12" in out
        print(f"arker demo (debian, first run) took {took:.0f} s")
    finally:
        remove_data_dir(data_dir)


def test_demo_on_a_data_dir_a_server_holds_says_what_to_do(server: LocalServer) -> None:
    proc = arker("demo", "--data-dir", str(server.data_dir), env=_unconfigured_env())
    assert proc.returncode == 1
    [line] = proc.stderr.decode().splitlines()
    assert line.startswith("error: unavailable: ") and "ARKER_SOURCE_VM" in line
