"""Break-out attempts that must fail, and limits that must hold."""

from __future__ import annotations

import os
import socket
import subprocess
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
    pids_dir = engine.cgroups.limit_roots["pids"] / bomb_vm
    assert int((pids_dir / "pids.current").read_text()) <= 64
    events = dict(line.split() for line in (pids_dir / "pids.events").read_text().splitlines())
    assert int(events["max"]) > 0  # the bomb did reach the limit: it was contained, not idle
    ok = run(engine, other, "for i in 1 2 3 4 5; do sh -c 'echo $$' > /dev/null; done; echo ok")
    assert ok.phase is RunPhase.COMPLETED and ok.stdout == b"ok\n"
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


_PROBE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#define BTRFS_IOC_SUBVOL_CREATE _IOW(0x94, 14, char[4096])

static long try_socket(int family, int type)
{
    int fd = socket(family, type, 0);
    if (fd >= 0)
        close(fd);
    return fd;
}

static void report(const char *name, long rc)
{
    printf("%s=%s\n", name, rc < 0 ? strerrorname_np(errno) : "ok");
}

static long try_clone(unsigned long flags)
{
    long rc = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (rc == 0)
        _exit(0);
    if (rc > 0)
        waitpid((pid_t)rc, NULL, 0);
    return rc;
}

int main(void)
{
    report("clone_newuser", try_clone(CLONE_NEWUSER));
    report("clone_newns", try_clone(CLONE_NEWNS));
    report("clone_plain", try_clone(0));
    report("clone3", syscall(SYS_clone3, NULL, 0));
    report("ptrace", syscall(SYS_ptrace, 16, 1, 0, 0));
    report("bpf", syscall(SYS_bpf, 0, NULL, 0));
    report("keyctl", syscall(SYS_keyctl, 0, 0, 0, 0, 0));
    report("open_tree", syscall(SYS_open_tree, -100, "/", 0));
    report("x32_getpid", syscall(0x40000000 | SYS_getpid));
    report("vsock", try_socket(AF_VSOCK, SOCK_STREAM));
    report("vsock_pair", socketpair(AF_VSOCK, SOCK_STREAM, 0, (int[2]){0, 0}));
    report("alg", try_socket(38 /* AF_ALG */, SOCK_SEQPACKET));
    report("unix", try_socket(AF_UNIX, SOCK_STREAM));
    report("inet", try_socket(AF_INET, SOCK_DGRAM));
    report("inet6", try_socket(AF_INET6, SOCK_DGRAM));
    report("netlink", try_socket(AF_NETLINK, SOCK_RAW));
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, NULL));
    /* personality: Docker's values pass, mitigation-weakening flags do not. */
    report("personality_query", syscall(SYS_personality, 0xffffffffUL));
    report("personality_linux32", syscall(SYS_personality, 0x8UL));
    syscall(SYS_personality, 0x0UL);
    report("personality_no_aslr", syscall(SYS_personality, 0x0040000UL));
    report("set_mempolicy", syscall(SYS_set_mempolicy, 0, NULL, 0));
    report("move_pages", syscall(SYS_move_pages, 0, 0, NULL, NULL, NULL, 0));
    /* FAN_REPORT_FID: the kernel allows it unprivileged, so EPERM is the filter. */
    report("fanotify_init", syscall(SYS_fanotify_init, 0x200, 0));
    report("process_madvise", syscall(SYS_process_madvise, -1, NULL, 0, 0, 0));
    static char vol[4096];
    int home = open(".", O_RDONLY | O_DIRECTORY);
    strcpy(vol + 8, "nested");
    report("btrfs_subvol_create", ioctl(home, BTRFS_IOC_SUBVOL_CREATE, vol));
    /* FICLONE is let through: on this unsupported pair (a dir) the kernel
     * answers, not the filter (EPERM would mean the filter). */
    long clone_rc = ioctl(home, FICLONE, home);
    printf("ficlone=%s\n", clone_rc < 0 && errno == EPERM ? "EPERM" : "passed");
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A static binary that tries syscalls the seccomp filter must refuse."""
    d = tmp_path_factory.mktemp("probe")
    (d / "probe.c").write_text(_PROBE)
    subprocess.run(["cc", "-static", "-O2", "-o", d / "probe", d / "probe.c"], check=True)
    return (d / "probe").read_bytes()


def test_seccomp_refuses_dangerous_syscalls(engine: NamespaceEngine, vm: str, probe: bytes) -> None:  # noqa: F811
    engine.write_file(vm, "/home/user/probe", probe)
    for user in ("root", "user"):
        info = run(engine, vm, "chmod +x ./probe 2>/dev/null; ./probe", user=user)
        got = dict(line.split("=") for line in info.stdout.decode().split())
        assert got == {
            "clone_newuser": "EPERM",
            "clone_newns": "EPERM",
            "clone_plain": "ok",  # ordinary fork still works
            "clone3": "ENOSYS",  # libc falls back to clone, which is checked
            "ptrace": "EPERM",
            "bpf": "EPERM",
            "keyctl": "EPERM",
            "open_tree": "EPERM",
            "x32_getpid": "EPERM",
            # Families no namespace confines are refused; the usual ones work.
            "vsock": "EAFNOSUPPORT",
            "vsock_pair": "EAFNOSUPPORT",
            "alg": "EAFNOSUPPORT",
            "unix": "ok",
            "inet": "ok",
            "inet6": "ok",
            "netlink": "ok",
            "io_uring_setup": "EPERM",
            "personality_query": "ok",
            "personality_linux32": "ok",
            "personality_no_aslr": "EPERM",
            "set_mempolicy": "EPERM",
            "move_pages": "EPERM",
            "fanotify_init": "EPERM",
            "process_madvise": "EPERM",
            "btrfs_subvol_create": "EPERM",
            "ficlone": "passed",
        }, (user, info.stderr)


_PROC_WRITERS = r"""
#define _GNU_SOURCE
#include <ctype.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Every file under /proc that opens for writing, outside the per-process
 * entries (which the VM's own pid namespace confines). Nothing is written. */
static int visit(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    if (ftw->level == 1) {
        const char *name = path + ftw->base;
        if (isdigit((unsigned char)name[0]) || !strcmp(name, "self") ||
            !strcmp(name, "thread-self"))
            return FTW_SKIP_SUBTREE;
    }
    if (type != FTW_F)
        return FTW_CONTINUE;
    int fd = open(path, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
        printf("%s\n", path);
        close(fd);
    }
    return FTW_CONTINUE;
}

int main(void)
{
    return nftw("/proc", visit, 64, FTW_PHYS | FTW_ACTIONRETVAL) < 0;
}
"""


def test_root_can_open_no_host_wide_proc_file_for_writing(
    engine: NamespaceEngine,  # noqa: F811
    vm: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    (tmp_path / "w.c").write_text(_PROC_WRITERS)
    subprocess.run(["cc", "-static", "-O2", "-o", tmp_path / "w", tmp_path / "w.c"], check=True)
    engine.write_file(vm, "/home/user/procw", (tmp_path / "w").read_bytes())
    info = run(engine, vm, "chmod +x ./procw && ./procw", user="root")
    assert info.exit_code == 0, info.stderr
    opened = info.stdout.decode().split()
    assert opened == [], opened
    # The masked and read-only surfaces are there, and refuse writes.
    info = run(
        engine, vm, "echo c > /proc/sysrq-trigger; echo 1 > /proc/sys/kernel/panic", user="root"
    )
    assert info.exit_code != 0
    assert b"Read-only file system" in info.stderr, info.stderr
