"""Kernel surfaces namespaces do not isolate, attacked through the real server:
the host's vsock, io_uring, btrfs subvolumes, and writes into the host's /proc."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from arker import Arker

_PROBE = r"""
#include <errno.h>
#include <fcntl.h>
#include <linux/btrfs.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long rc = -1;
    if (!strcmp(argv[1], "vsock"))
        rc = socket(AF_VSOCK, SOCK_STREAM, 0);
    else if (!strcmp(argv[1], "io_uring"))
        rc = syscall(SYS_io_uring_setup, 1, NULL);
    else if (!strcmp(argv[1], "subvol")) {
        struct btrfs_ioctl_vol_args args = {0};
        strcpy(args.name, "escape");
        rc = ioctl(open("/home/user", O_RDONLY | O_DIRECTORY), BTRFS_IOC_SUBVOL_CREATE, &args);
    }
    printf("%s\n", rc < 0 ? strerrorname_np(errno) : "ok");
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("probe")
    (d / "probe.c").write_text(_PROBE)
    subprocess.run(["cc", "-static", "-O2", "-o", d / "probe", d / "probe.c"], check=True)
    return Path(d / "probe").read_bytes()


@pytest.mark.parametrize(
    ("attack", "expected"),
    [("vsock", "EAFNOSUPPORT"), ("io_uring", "EPERM"), ("subvol", "EPERM")],
)
def test_syscall_surface_refused(arker: Arker, probe: bytes, attack: str, expected: str) -> None:
    with arker.vm("busybox").fork() as vm:
        vm.sync.write_file("/home/user/probe", probe)
        r = vm.run(f"chmod +x /home/user/probe; /home/user/probe {attack}", user="root")
        assert r.stdout_text.strip() == expected, (r.stdout, r.stderr)


def test_host_proc_not_writable(arker: Arker) -> None:
    with arker.vm("busybox").fork() as vm:
        cmd = "for p in /proc/sysrq-trigger /proc/sys/kernel/hostname; do (: > $p) && echo $p; done"
        r = vm.run(cmd + " 2>/dev/null; true", user="root")
        assert r.stdout_text == "", r.stdout_text
