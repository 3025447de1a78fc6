"""Terminals on the real engine: a shell on a pty in a busybox VM, its exit
code, window size, user, and containment (the VM's cgroup; gone with the VM)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest_exec import engine, engine_dir, make_vm, run, vm  # noqa: F401

from arker.engine.host import NamespaceEngine
from arker.engine.pty import Pty
from arker.errors import ArkerError

pytestmark = pytest.mark.root

DEADLINE_S = 60.0


def read_until(pty: Pty, wanted: bytes, deadline_s: float = DEADLINE_S) -> bytes:
    """Output until `wanted` shows up (or the terminal closes); generous deadline."""
    seen = b""
    end = time.monotonic() + deadline_s
    while wanted not in seen:
        left = end - time.monotonic()
        assert left > 0, f"no {wanted!r} in {seen!r}"
        try:
            chunk = pty.read(timeout_s=min(left, 1.0))
        except TimeoutError:
            continue
        if not chunk:
            break
        seen += chunk
    return seen


def test_echo_and_exit_code(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    with engine.open_pty(vm, cols=100, rows=30) as pty:
        pty.write(b"echo h''i; exit 3\n")
        assert b"hi" in read_until(pty, b"hi\r\n")
        assert pty.wait(DEADLINE_S) == 3
        assert pty.exit_code == 3


def test_size_and_resize(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    with engine.open_pty(vm, cols=91, rows=27) as pty:
        pty.write(b"stty size; echo do''ne\n")
        out = read_until(pty, b"done\r\n")
        assert b"27 91" in out
        pty.resize(132, 43)
        pty.write(b"stty size; echo ag''ain\n")
        assert b"43 132" in read_until(pty, b"again\r\n")
        pty.write(b"exit\n")
        assert pty.wait(DEADLINE_S) == 0


def test_user_and_root(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    for user, uid in (("user", b"1000"), ("root", b"0")):
        with engine.open_pty(vm, user=user) as pty:  # type: ignore[arg-type]
            pty.write(b"echo I''D=$(id -u) T''TY=$(tty) E''ND; exit\n")
            out = read_until(pty, b" END\r\n")
            assert b"ID=" + uid + b" " in out
            assert b"TTY=/dev/pts/" in out
            pty.wait(DEADLINE_S)


def test_command_instead_of_the_shell(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    with engine.open_pty(vm, command="stty size; exit 5", cols=50, rows=10) as pty:
        assert b"10 50" in read_until(pty, b"10 50")
        assert pty.wait(DEADLINE_S) == 5


def test_contained_and_gone_with_the_vm(engine: NamespaceEngine, make_vm) -> None:  # noqa: F811
    vm_id = make_vm()
    pty = engine.open_pty(vm_id)
    try:
        pty.write(b"echo P''ID=$$ E''ND\n")
        out = read_until(pty, b" END\r\n")
        pid = out.split(b"PID=")[-1].split(b" ")[0].decode()
        # The shell sits in its own leaf of the VM's cgroup, beside the runs'.
        leaves = [p for p in (engine.cgroups.unified / vm_id).iterdir() if p.name.startswith("p-")]
        assert len(leaves) == 1
        procs = (leaves[0] / "cgroup.procs").read_text().split()
        assert len(procs) == 1
        host_pid = int(procs[0])
        status = Path(f"/proc/{host_pid}/status").read_text()
        assert f"NSpid:\t{host_pid}\t{pid}" in status  # the VM's pid namespace
        assert "CapEff:\t0000000000000000" in status
        assert "Seccomp:\t2" in status and "NoNewPrivs:\t1" in status
        engine.delete(vm_id)
        assert pty.wait(DEADLINE_S) is None  # no exit code: the VM ended it
        assert not Path(f"/proc/{host_pid}").exists()
        # What the shell wrote before it died may still be there; then EOF.
        end = time.monotonic() + DEADLINE_S
        while pty.read(timeout_s=DEADLINE_S):
            assert time.monotonic() < end
    finally:
        pty.close()


def test_close_kills_the_tree(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    pty = engine.open_pty(vm)
    pty.write(b"sleep 1234 & echo started\n")
    read_until(pty, b"started\r\n")
    pty.close()
    out = run(engine, vm, "ps -o args | grep 'sleep 123[4]' || true").stdout
    assert out == b""
    assert not [p for p in (engine.cgroups.unified / vm).iterdir() if p.name.startswith("p-")]


def test_pid1_keeps_no_end_of_the_pty(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    with engine.open_pty(vm) as pty:
        pty.write(b"echo rea''dy\n")
        read_until(pty, b"ready\r\n")
        init = engine._init(vm)
        assert init is not None
        fd_dir = Path(f"/proc/{init.pid}/fd")
        held = [os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)]
        assert not [link for link in held if "pts" in link or "ptmx" in link], held
        pty.write(b"exit\n")
        pty.wait(DEADLINE_S)


def test_bad_size_and_missing_vm(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    with pytest.raises(ArkerError) as info:
        engine.open_pty(vm, cols=0)
    assert info.value.code == "invalid_request"
    with pytest.raises(ArkerError) as info:
        engine.open_pty("vm-none-such")
    assert info.value.code == "not_found"
