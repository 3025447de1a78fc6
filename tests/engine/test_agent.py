"""The exec agent in each VM's PID 1 (native/agent.c): where a run's process
lands, what it inherits, and how PID 1 copes with bad requests, chatty
commands and a VM at its process limit."""

from __future__ import annotations

import hashlib
import socket
import time
import uuid
from collections.abc import Callable

import pytest
from conftest_exec import engine, engine_dir, make_vm, run, vm  # noqa: F401

from arker.engine.base import Limits, RunPhase, RunSpec
from arker.engine.host import NamespaceEngine
from arker.errors import ArkerError

pytestmark = pytest.mark.root


def test_run_lands_in_its_own_leaf_cgroup(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    run_id = "leaf" + uuid.uuid4().hex[:8]
    engine.start_run(vm, run_id, RunSpec(command="cat /proc/self/cgroup"))
    info = engine.wait_run(vm, run_id, 60)
    engine.forget_run(vm, run_id)
    unified = [line for line in info.stdout.decode().splitlines() if line.startswith("0::")]
    assert unified and unified[0].endswith(f"/r-{run_id}"), info.stdout


def test_command_inherits_only_its_stdio(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    # PID 1 holds output memfds, cgroup fds and sockets of the host; none may
    # reach a command (ls itself opens one fd, for the directory it lists).
    for user in ("user", "root"):
        info = run(engine, vm, "ls /proc/self/fd", user=user)
        assert set(info.stdout.split()) <= {b"0", b"1", b"2", b"3"}, (user, info.stdout)


def test_large_stdin_arrives_whole(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    data = bytes(range(256)) * 4096  # 1 MiB: far more than a pipe holds
    info = run(engine, vm, "md5sum", stdin=data)
    assert info.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


def test_bad_request_is_refused_and_pid1_serves_on(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    engine.start(vm)
    init = engine._init(vm)
    assert init is not None and init.agent is not None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        socket.send_fds(init.agent, [b"r"], [theirs.fileno()])  # 1 fd where 9 are due
        ours.settimeout(10)
        assert ours.recv(100) == b"Ebad message"
    assert run(engine, vm, "echo still serving").stdout == b"still serving\n"


def test_chatty_command_does_not_starve_others(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    engine.start_run(vm, "chatty", RunSpec(command="yes", output_cap_bytes=1 << 20))
    try:
        deadline = time.monotonic() + 30
        while len(engine.run_info(vm, "chatty").stdout) < 1 << 20:  # to its cap; it goes on
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        for i in range(5):
            assert run(engine, vm, f"echo {i}").stdout == f"{i}\n".encode()
        assert time.monotonic() - started < 30  # a starved PID 1 would never answer
    finally:
        info = engine.cancel_run(vm, "chatty")
        engine.forget_run(vm, "chatty")
    assert info.phase == RunPhase.CANCELLED
    assert info.stdout_truncated and len(info.stdout) == 1 << 20


def test_vm_at_its_process_limit_refuses_runs_clearly(
    engine: NamespaceEngine,  # noqa: F811
    make_vm: Callable[..., str],  # noqa: F811
) -> None:
    full = make_vm(limits=Limits(pids_max=8))
    # Sleepers take every pid but the one their shell frees as it exits; a
    # background run then holds that last one.
    run(engine, full, "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 300 & done 2>/dev/null; true")
    engine.start_run(full, "last", RunSpec(command="sleep 300"))
    with pytest.raises(ArkerError) as err:
        run(engine, full, "echo never")
    assert err.value.code == "conflict" and "pids.max" in err.value.message
    assert engine.run_info(full, "last").phase == RunPhase.RUNNING  # untouched by the refusal
    engine.stop(full)
    assert run(engine, full, "echo back").stdout == b"back\n"


def test_run_after_vm_restart_uses_the_new_pid1(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    assert run(engine, vm, "echo one").stdout == b"one\n"
    first = engine._init(vm)
    engine.stop(vm)
    assert run(engine, vm, "echo two").stdout == b"two\n"
    second = engine._init(vm)
    assert first is not None and second is not None and first != second
    assert first.agent is not None and first.agent.fileno() == -1  # closed with its VM


def test_pid1_holds_no_more_than_a_root_command(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    # PID 1 confines itself once the VM is up: Docker's default capabilities,
    # no_new_privs and the seccomp deny list, all of which its commands inherit.
    docker_caps = (0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 29, 31)
    want = f"{sum(1 << c for c in docker_caps):016x}"
    status = dict(
        line.split(":", 1)
        for line in run(engine, vm, "cat /proc/1/status").stdout.decode().splitlines()
    )
    assert {k: status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd")} == dict.fromkeys(
        ("CapEff", "CapPrm", "CapBnd"), want
    )
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    user = dict(
        line.split(":", 1)
        for line in run(engine, vm, "cat /proc/self/status").stdout.decode().splitlines()
    )
    assert user["CapEff"].strip() == user["CapBnd"].strip() == "0" * 16
    assert user["Seccomp_filters"].strip() == "2"  # PID 1's deny list and its own
