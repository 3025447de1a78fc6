"""The client commands against a real server on the real engine.

Exit codes and stderr are checked on `arker` as a subprocess (what users and
scripts see); the rest goes through typer's CliRunner, in process.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_servers import ARKER, LocalServer, arker
from typer.testing import CliRunner, Result

from arker.cli import app

pytestmark = pytest.mark.root


def invoke(server: LocalServer, *args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=server.env(), input=input)


@pytest.fixture
def vm(server: LocalServer) -> Iterator[str]:
    """A VM forked by `arker fork`; removed by `arker rm` after the test."""
    proc = arker("fork", "busybox", "--name", "cli-test", env=server.env())
    assert proc.returncode == 0, proc.stderr
    vm_id = proc.stdout.decode().strip()
    assert proc.stdout == f"{vm_id}\n".encode()  # the id and nothing else
    yield vm_id
    arker("rm", vm_id, env=server.env())


def test_run_passes_streams_and_exit_code_through(server: LocalServer, vm: str) -> None:
    proc = arker("run", vm, "--", "printf 'o\\001\\n'; echo e >&2; exit 3", env=server.env())
    assert proc.returncode == 3
    assert proc.stdout == b"o\x01\n"
    assert proc.stderr == b"e\n"


def test_words_after_dashes_are_argv_and_one_word_is_a_shell_line(
    server: LocalServer, vm: str
) -> None:
    # As docker exec and kubectl exec: each word one argument, exactly.
    proc = arker("run", vm, "--", "sh", "-c", "exit 3", env=server.env())
    assert proc.returncode == 3
    proc = arker("run", vm, "--", "printf", "[%s]", "arg 2", "a'b", "|", env=server.env())
    assert (proc.returncode, proc.stdout) == (0, b"[arg 2][a'b][|]")
    proc = arker("run", vm, "--", "echo a b | wc -w", env=server.env())
    assert (proc.returncode, proc.stdout.strip()) == (0, b"2")


def test_run_prints_output_as_it_arrives_and_logs_reattach(server: LocalServer, vm: str) -> None:
    import time

    env = server.env()
    cmd = [*ARKER, "run", vm, "--", "echo first; sleep 3; echo second"]
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        t0 = time.monotonic()
        assert proc.stdout.readline() == b"first\n"
        assert proc.poll() is None  # printed while the run still goes
        assert time.monotonic() - t0 < 60
        out, _ = proc.communicate(timeout=60)
        assert out == b"second\n" and proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    started = arker("run", "--background", vm, "--", "echo one; sleep 1; echo two; exit 5", env=env)
    run_id = started.stdout.decode().strip()
    proc = arker("logs", vm, run_id, "--follow", env=env)
    assert (proc.returncode, proc.stdout) == (5, b"one\ntwo\n")
    proc = arker("logs", vm, run_id, env=env)
    assert (proc.returncode, proc.stdout) == (0, b"one\ntwo\n")


def test_unknown_vm_is_one_line_on_stderr(server: LocalServer) -> None:
    for args in (
        ["get", "01NOSUCHVM"],
        ["run", "01NOSUCHVM", "--", "true"],
        ["cat", "01NOSUCHVM:/home/user/x"],
    ):
        proc = arker(*args, env=server.env())
        assert proc.returncode == 1, args
        assert proc.stdout == b""
        lines = proc.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: not_found: "), proc.stderr


def test_no_endpoint_is_one_line(server: LocalServer) -> None:
    env = server.env()
    del env["ARKER_BASE_URL"]
    proc = arker("ls", env=env)
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("error: invalid_request: no Arker endpoint")
    assert proc.stderr.count(b"\n") == 1


def test_usage_error_exits_2(server: LocalServer) -> None:
    proc = arker("run", env=server.env())
    assert proc.returncode == 2
    assert b"Traceback" not in proc.stderr


def test_timeout_exits_124_with_a_note(server: LocalServer, vm: str) -> None:
    proc = arker("run", vm, "--timeout", "0.5", "--", "echo before; sleep 5", env=server.env())
    assert proc.returncode == 124
    assert proc.stdout == b"before\n"
    assert b"timed out after 0.5 s" in proc.stderr


def test_stdin_env_cwd_user(server: LocalServer, vm: str, tmp_path: Path) -> None:
    proc = arker("run", vm, "--", "tr a-z A-Z", env=server.env(), input=b"piped\n")
    assert proc.stdout == b"PIPED\n"
    (tmp_path / "in.txt").write_bytes(b"from a file\n")
    result = invoke(server, "run", vm, "--stdin", str(tmp_path / "in.txt"), "--", "cat")
    assert result.stdout == "from a file\n"
    result = invoke(
        server,
        "run",
        vm,
        "-e",
        "A=1",
        "--env",
        "B=x=y",
        "--cwd",
        "/tmp",
        "--user",
        "root",
        "-n",
        "--",
        'echo "$A $B"; pwd; id -u',
    )
    assert (result.exit_code, result.stdout) == (0, "1 x=y\n/tmp\n0\n")
    result = invoke(server, "run", vm, "-e", "NOEQUALS", "--", "true")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid_request: --env takes KEY=VALUE")


def test_background_status_cancel(server: LocalServer, vm: str) -> None:
    started = invoke(server, "run", vm, "--background", "--", "echo first; sleep 30")
    assert started.exit_code == 0, started.output
    run_id = started.stdout.strip()
    status = invoke(server, "status", vm, run_id, "--json")
    assert json.loads(status.stdout)["state"] in ("queued", "running")
    cancelled = invoke(server, "cancel", vm, run_id)
    assert cancelled.exit_code == 0
    assert "state: cancelled" in cancelled.stderr
    doc = json.loads(invoke(server, "status", vm, run_id, "--json").stdout)
    assert (doc["state"], doc["run_id"], doc["stdout"]) == ("cancelled", run_id, "first\n")


def test_ls_and_get_json_parse(server: LocalServer, vm: str) -> None:
    page = json.loads(invoke(server, "ls", "--json").stdout)
    assert vm in [item["vm_id"] for item in page["items"]]
    assert page["total"] >= 1
    doc = json.loads(invoke(server, "get", vm, "--json").stdout)
    assert (doc["vm_id"], doc["name"], doc["base_image"]) == (vm, "cli-test", "busybox")
    table = invoke(server, "ls")
    assert table.exit_code == 0 and vm in table.stdout


def test_cp_round_trip_50_mib(server: LocalServer, vm: str, tmp_path: Path) -> None:
    data = tmp_path / "random.bin"
    with data.open("wb") as f, open("/dev/urandom", "rb") as r:
        f.write(r.read(50 * 1024 * 1024))
    want = hashlib.sha256(data.read_bytes()).hexdigest()
    up = arker("cp", str(data), f"{vm}:/home/user/random.bin", env=server.env())
    assert up.returncode == 0, up.stderr
    down = arker("cp", f"{vm}:/home/user/random.bin", str(tmp_path / "back.bin"), env=server.env())
    assert down.returncode == 0, down.stderr
    assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).hexdigest() == want
    # Into a directory, and out of the VM to stdout.
    (tmp_path / "dir").mkdir()
    assert (
        arker(
            "cp", f"{vm}:/home/user/random.bin", str(tmp_path / "dir"), env=server.env()
        ).returncode
        == 0
    )
    assert (tmp_path / "dir" / "random.bin").stat().st_size == 50 * 1024 * 1024
    small = invoke(server, "cp", str(tmp_path / "dir" / "random.bin"), f"{vm}:/home/user/d/")
    assert small.exit_code == 0, small.output
    cat = arker("cat", f"{vm}:/home/user/d/random.bin", env=server.env())
    assert hashlib.sha256(cat.stdout).hexdigest() == want


def test_cp_needs_one_vm_side(server: LocalServer) -> None:
    proc = arker("cp", "a", "./b:/x", env=server.env())
    assert proc.returncode == 1
    assert proc.stderr == b"error: invalid_request: one side must be VM:/home/user/PATH\n"


def test_cp_between_vms_and_bad_path(server: LocalServer, vm: str) -> None:
    other = arker("fork", vm, env=server.env()).stdout.decode().strip()
    try:
        assert invoke(server, "run", vm, "--", "echo copied > /home/user/a").exit_code == 0
        assert invoke(server, "cp", f"{vm}:/home/user/a", f"{other}:/home/user/b").exit_code == 0
        assert invoke(server, "cat", f"{other}:/home/user/b").stdout == "copied\n"
        bad = arker("cat", f"{vm}:/etc/passwd", env=server.env())
        assert bad.returncode == 1
        assert bad.stderr.startswith(b"error: invalid_path: ")
    finally:
        arker("rm", other, env=server.env())


def test_rm_keeps_going_and_fails_at_the_end(server: LocalServer) -> None:
    a = arker("fork", "busybox", env=server.env()).stdout.decode().strip()
    proc = arker("rm", "01NOSUCHVM", a, env=server.env())
    assert proc.returncode == 1
    assert proc.stdout.decode().split() == [a]
    assert proc.stderr.decode().startswith("error: not_found: 01NOSUCHVM: ")
    assert arker("get", a, env=server.env()).returncode == 1


def test_cat_into_a_closed_pipe_stops_quietly(server: LocalServer, vm: str) -> None:
    made = invoke(server, "run", vm, "--", "head -c 4194304 /dev/zero > /home/user/zeros")
    assert made.exit_code == 0
    proc = subprocess.Popen(
        [*ARKER, "cat", f"{vm}:/home/user/zeros"],
        env=server.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(1) == b"\0"
    proc.stdout.close()  # like `| head -c 1`
    stderr = proc.stderr.read()
    assert proc.wait(30) == 141
    assert stderr == b""


def test_restart_kills_what_runs_and_keeps_files(server: LocalServer, vm: str) -> None:
    assert arker("run", vm, "--", "echo kept > /home/user/f", env=server.env()).returncode == 0
    bg = invoke(server, "run", vm, "--background", "--", "sleep 1000")
    assert bg.exit_code == 0, bg.output
    run_id = bg.stdout.strip()
    proc = arker("restart", vm, env=server.env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{vm} running\n".encode()
    status = json.loads(invoke(server, "status", vm, run_id, "--json").stdout)
    assert status["state"] == "failed" and status["failure_reason"] == "the vm was restarted"
    assert arker("run", vm, "--", "cat /home/user/f", env=server.env()).stdout == b"kept\n"
    doc = json.loads(invoke(server, "restart", vm, "--json").stdout)
    assert doc["vm_id"] == vm and doc["state"] == "running"


def test_fork_takes_a_size(server: LocalServer) -> None:
    proc = arker(
        "fork", "busybox", "--cpu", "2", "--memory", "256", "--pids", "99", env=server.env()
    )
    assert proc.returncode == 0, proc.stderr
    vm_id = proc.stdout.decode().strip()
    try:
        doc = json.loads(invoke(server, "get", vm_id, "--json").stdout)
        assert {k: doc["resources"][k] for k in ("cpu", "memory_mib", "pids")} == {
            "cpu": 2,
            "memory_mib": 256,
            "pids": 99,
        }
        ran = invoke(server, "run", vm_id, "--", "nproc; grep MemTotal /proc/meminfo")
        assert ran.stdout.split()[:3] == ["2", "MemTotal:", str(256 * 1024)]
        bad = arker("fork", "busybox", "--memory", "64", env=server.env())
        assert bad.returncode == 1 and bad.stderr.startswith(b"error: invalid_request: ")
    finally:
        arker("rm", vm_id, env=server.env())
