"""Break-out attempts that must fail, and limits that must hold."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest_exec import engine, engine_dir, make_vm, run, vm  # noqa: F401

from arker.engine.base import Limits, RunPhase
from arker.engine.host import NamespaceEngine

pytestmark = pytest.mark.root


@pytest.fixture
def host_marker(tmp_path: Path) -> Path:
    marker = tmp_path / f"host-secret-{uuid.uuid4().hex}"
    marker.write_text("host secret\n")
    return marker


def test_host_files_unreachable(engine: NamespaceEngine, vm: str, host_marker: Path) -> None:  # noqa: F811
    cmd = (
        f"ln -s {host_marker} /home/user/link; cat /home/user/link;"
        f" cat /../../..{host_marker}; cat /proc/1/root{host_marker};"
        f" cat /proc/self/root/../..{host_marker}; ls -a /proc/1/root/ | grep -c pool"
    )
    for user in ("user", "root"):
        info = run(engine, vm, cmd, user=user)
        assert b"host secret" not in info.stdout, user
        assert info.stdout.strip() == b"0", (user, info.stdout)


def test_engine_file_api_stays_inside(engine: NamespaceEngine, vm: str, host_marker: Path) -> None:  # noqa: F811
    run(engine, vm, f"ln -s {host_marker} /home/user/escape; ln -s ../../.. /home/user/up")
    for path in ("/home/user/escape", f"/home/user/up{host_marker}"):
        try:
            data = engine.read_file(vm, path, 1 << 20)
        except Exception:  # not_found / invalid_path: the host file was not read
            continue
        assert b"host secret" not in data


def test_host_processes_invisible(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    info = run(engine, vm, "ls /proc | grep -E '^[0-9]+$'")
    pids = [int(p) for p in info.stdout.split()]
    assert 1 in pids and len(pids) <= 5, pids  # init, sh, ls, grep
    assert str(os.getpid()).encode() not in run(engine, vm, "ps -o pid,args").stdout.split()


def test_host_loopback_unreachable(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        info = run(engine, vm, f"echo hi | nc -w 2 127.0.0.1 {port}; echo rc=$?", timeout_s=20)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert b"rc=0" not in info.stdout


def test_no_outside_network(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    info = run(engine, vm, "ip route; wget -q -T 2 -O - http://1.1.1.1/ ; echo rc=$?")
    assert b"rc=0" not in info.stdout


def test_mount_and_unshare_fail_even_as_root(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    info = run(
        engine, vm,
        "mount -t tmpfs x /mnt && echo MOUNTED; unshare -m true && echo UNSHARED;"
        " unshare -n true && echo NET; mount -o remount,rw /proc/sys && echo RW; true",
        user="root",
    )  # fmt: skip
    assert info.stdout == b"", info.stdout


def test_root_capabilities_lack_sys_admin(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    status = _status(run(engine, vm, "cat /proc/self/status", user="root").stdout)
    cap_eff = int(status["CapEff"], 16)
    assert not cap_eff & (1 << 21)  # CAP_SYS_ADMIN
    assert not cap_eff & (1 << 16)  # CAP_SYS_MODULE
    assert cap_eff & (1 << 0)  # CAP_CHOWN: root still administers its VM
    assert int(status["CapBnd"], 16) == cap_eff
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"


def test_user_has_no_capabilities(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    status = _status(run(engine, vm, "cat /proc/self/status").stdout)
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[field], 16) == 0, field
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"


def test_oom_kills_only_the_hog(engine: NamespaceEngine, make_vm: Callable[..., str]) -> None:  # noqa: F811
    small = make_vm(limits=Limits(memory_bytes=64 << 20))
    other = make_vm()
    assert run(engine, other, "echo up").stdout == b"up\n"
    info = run(engine, small, "dd if=/dev/zero of=/dev/null bs=200M count=1")
    assert info.exit_code == 137 and info.oom_killed, info
    assert run(engine, other, "echo still up").stdout == b"still up\n"
    assert run(engine, small, "echo recovered").stdout == b"recovered\n"


def test_fork_bomb_is_contained(engine: NamespaceEngine, make_vm: Callable[..., str]) -> None:  # noqa: F811
    bomb_vm = make_vm(limits=Limits(pids_max=64))
    other = make_vm()
    info = run(engine, bomb_vm, "bomb() { bomb | bomb & }; bomb; sleep 3", timeout_s=3)
    assert info.phase in (RunPhase.TIMED_OUT, RunPhase.COMPLETED)
    pids = engine.cgroups.limit_roots["pids"] / bomb_vm / "pids.current"
    if pids.exists():
        assert int(pids.read_text()) <= 64
    ok = run(engine, other, "for i in 1 2 3 4 5; do sh -c 'echo $$' > /dev/null; done; echo ok")
    assert ok.stdout == b"ok\n" and ok.duration_ms < 5000
    engine.stop(bomb_vm)  # cgroup.kill ends even a bomb that is still forking
    assert run(engine, bomb_vm, "echo calm").stdout == b"calm\n"


def test_filling_tmp_fails_cleanly(engine: NamespaceEngine, vm: str) -> None:  # noqa: F811
    info = run(engine, vm, "dd if=/dev/zero of=/tmp/fill bs=1M count=200; df -k /tmp")
    assert info.exit_code == 0  # df ran: the VM is fine
    assert b"No space left on device" in info.stderr
    size_kib = int(info.stdout.splitlines()[1].split()[1])
    assert size_kib <= engine.tmp_size_bytes // 1024
    assert run(engine, vm, "rm /tmp/fill && echo ok").stdout == b"ok\n"


def _status(text: bytes) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.decode().splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def test_server_environment_does_not_leak(
    engine: NamespaceEngine,  # noqa: F811
    make_vm: Callable[..., str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARKER_TEST_SERVER_SECRET", "s3cret")
    vm_id = make_vm()
    info = run(engine, vm_id, "cat /proc/1/environ; env; ls -l /proc/1/fd", user="root")
    assert b"s3cret" not in info.stdout
    assert b"Permission denied" in info.stderr  # PID 1 is not dumpable: no /proc/1/fd
