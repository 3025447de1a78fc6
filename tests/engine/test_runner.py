"""Runs through the engine: results, timeout, cancel, output caps, and what
one run leaves for the next."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest_exec import engine, engine_dir, make_vm, run, vm  # noqa: F401

from arker.engine.base import RunPhase, RunSpec
from arker.engine.host import NamespaceEngine
from arker.errors import ArkerError

pytestmark = pytest.mark.root


def test_exit_code_stdout_stderr_duration(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    info = run(engine, vm, "echo out; echo err >&2; sleep 0.2; exit 7")
    assert info.phase is RunPhase.COMPLETED
    assert (info.exit_code, info.stdout, info.stderr) == (7, b"out\n", b"err\n")
    assert info.duration_ms >= 200
    assert not info.stdout_truncated and not info.oom_killed


def test_defaults_user_cwd_hostname(engine: NamespaceEngine, make_vm: Callable[..., str]) -> None:  # noqa: F811
    vm_id = make_vm(hostname="my-box")
    info = run(engine, vm_id, "id -u; id -g; pwd; hostname; echo $HOME $USER")
    assert info.stdout.decode().split() == [
        "1000",
        "1000",
        "/home/user",
        "my-box",
        "/home/user",
        "user",
    ]


def test_root_env_cwd_stdin(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    info = run(
        engine, vm, "id -u; pwd; echo $GREETING; cat", user="root", cwd="/tmp",
        env={"GREETING": "hi there"}, stdin=b"from stdin\n",
    )  # fmt: skip
    assert info.stdout == b"0\n/tmp\nhi there\nfrom stdin\n"


def test_missing_cwd_is_a_failed_command(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    info = run(engine, vm, "true", cwd="/nowhere")
    assert info.exit_code != 0
    assert b"/nowhere" in info.stderr


def test_timeout_kills_the_whole_tree(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    cmd = "echo before; (sleep 300 & setsid sleep 301 & sleep 302) & sleep 303; echo never"
    info = run(engine, vm, cmd, timeout_s=1)
    assert info.phase is RunPhase.TIMED_OUT
    assert info.duration_ms < 300_000  # not held by the tree's sleeps
    assert info.stdout == b"before\n"
    left = run(engine, vm, "ps -o args | grep 'sleep 30' | grep -v grep; true")
    assert left.stdout == b""


def test_background_run_status_then_cancel(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    run_id = uuid.uuid4().hex[:12]
    engine.start_run(vm, run_id, RunSpec(command="echo started; sleep 1 & sleep 300"))
    deadline = time.monotonic() + 10
    while (info := engine.run_info(vm, run_id)).stdout != b"started\n":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert info.phase is RunPhase.RUNNING and info.exit_code is None
    cancelled = engine.cancel_run(vm, run_id)
    assert cancelled.phase is RunPhase.CANCELLED
    assert cancelled.stdout == b"started\n"
    assert engine.cancel_run(vm, run_id).phase is RunPhase.CANCELLED  # as is, once done
    engine.forget_run(vm, run_id)
    left = run(engine, vm, "ps -o args | grep 'sleep' | grep -v grep; true")
    assert left.stdout == b""
    with pytest.raises(ArkerError) as err:
        engine.run_info(vm, run_id)
    assert err.value.code == "not_found"


def test_wait_with_timeout_returns_running(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    engine.start_run(vm, "slow", RunSpec(command="sleep 300"))
    try:
        assert engine.wait_run(vm, "slow", 0.05).phase is RunPhase.RUNNING
    finally:
        engine.cancel_run(vm, "slow")
        engine.forget_run(vm, "slow")


def test_output_cap_truncates(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    info = run(engine, vm, "yes | head -c 20000000; echo tail >&2", output_cap_bytes=1 << 20)
    assert info.exit_code == 0
    assert len(info.stdout) == 1 << 20 and info.stdout_truncated
    assert info.stderr == b"tail\n" and not info.stderr_truncated


def test_background_process_outlives_its_run(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    first = run(engine, vm, "sleep 400 > /dev/null 2>&1 &")
    assert first.exit_code == 0 and first.duration_ms < 400_000  # not held by its child
    # The run ends as soon as its shell does: the background child may not
    # have exec'd `sleep` yet, so look again for a moment.
    deadline = time.monotonic() + 5
    while (second := run(engine, vm, "ps -o args | grep '^sleep 400'")).stdout == b"":
        assert time.monotonic() < deadline, "the background process did not survive"
        time.sleep(0.05)
    assert second.stdout.strip() == b"sleep 400"
    assert run(engine, vm, "ps -o args | grep '^sleep 400'").stdout.strip() == b"sleep 400"


def test_runs_share_files_and_loopback(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    setup = "mkdir -p www && echo hello-web > www/index.html && httpd -p 127.0.0.1:8080 -h www"
    assert run(engine, vm, setup).exit_code == 0
    got = run(engine, vm, "cat www/index.html; wget -q -O - http://127.0.0.1:8080/index.html")
    assert got.stdout == b"hello-web\nhello-web\n", got.stderr


def test_run_in_missing_vm_is_not_found(engine: NamespaceEngine) -> None:  # noqa: F811
    with pytest.raises(ArkerError) as err:
        engine.start_run("no-such-vm", "r1", RunSpec(command="true"))
    assert err.value.code == "not_found"


def test_bad_env_is_invalid_request(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    with pytest.raises(ArkerError) as err:
        engine.start_run(vm, "r1", RunSpec(command="true", env={"A=B": "x"}))
    assert err.value.code == "invalid_request"


def test_finished_run_leaves_are_swept(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    run(engine, vm, "sleep 300 > /dev/null 2>&1 &")  # its leaf must stay: it holds a process
    for _ in range(5):
        run(engine, vm, "true")
    leaves = [p.name for p in (engine.cgroups.unified / vm).iterdir() if p.name.startswith("r-")]
    assert 1 <= len(leaves) <= 2, leaves  # the sleeper's, and at most the last run's


def test_runs_from_many_threads(engine: NamespaceEngine, make_vm: Callable[..., str]) -> None:  # noqa: F811
    vms = [make_vm(), make_vm()]

    def work(n: int) -> list[bytes]:
        return [run(engine, vms[n % 2], f"echo {n}-{i}").stdout for i in range(5)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for n, outs in enumerate(results):
        assert outs == [f"{n}-{i}\n".encode() for i in range(5)]
