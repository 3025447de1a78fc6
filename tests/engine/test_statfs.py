"""statfs in a VM with a disk quota answers with the VM's own size (PID 1
serves statfs and fstatfs through a seccomp listener: native/statfs.c), and
only for the VM's root: other filesystems, errors and bad pointers behave as
the kernel would. A static probe, compiled here, makes the calls."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest_exec import engine, engine_dir, make_vm, run  # noqa: F401

from arker.engine.base import Limits
from arker.engine.host import NamespaceEngine

pytestmark = pytest.mark.root

MiB = 2**20
BTRFS_MAGIC = 0x9123683E
TMPFS_MAGIC = 0x01021994

PROBE = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

static void show(const char *what, int rc, struct statfs *st)
{
    if (rc < 0)
        printf("%s errno=%d\n", what, errno);
    else
        printf("%s type=%lx bsize=%ld blocks=%llu bfree=%llu bavail=%llu\n", what,
               (unsigned long)st->f_type, (long)st->f_bsize, (unsigned long long)st->f_blocks,
               (unsigned long long)st->f_bfree, (unsigned long long)st->f_bavail);
}

int main(int argc, char **argv)
{
    struct statfs st;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        memset(&st, 0, sizeof st);
        if (!strcmp(a, "badbuf")) {
            show(a, statfs("/", (struct statfs *)8), &st);
        } else if (!strcmp(a, "badpath")) {
            show(a, statfs((const char *)8, &st), &st);
        } else if (!strcmp(a, "badfd")) {
            show(a, fstatfs(987, &st), &st);
        } else if (!strcmp(a, "pipe")) {
            int p[2];
            pipe(p);
            show(a, fstatfs(p[0], &st), &st);
        } else if (!strncmp(a, "fd:", 3)) {
            int fd = open(a + 3, O_RDONLY);
            show(a, fd < 0 ? -1 : fstatfs(fd, &st), &st);
        } else {
            show(a, statfs(a, &st), &st);
        }
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("probe")
    (d / "probe.c").write_text(PROBE)
    cc = shutil.which("cc") or "gcc"
    subprocess.run([cc, "-O1", "-static", "-o", d / "probe", d / "probe.c"], check=True)
    return d / "probe"


def _answers(out: bytes) -> dict[str, dict[str, int]]:
    """'what type=.. bsize=..' lines as {what: {field: value}}."""
    got: dict[str, dict[str, int]] = {}
    for line in out.decode().splitlines():
        what, *fields = line.split()
        got[what] = {
            k: int(v, 16) if k == "type" else int(v) for k, v in (f.split("=") for f in fields)
        }
    return got


def _vm_with_probe(
    engine: NamespaceEngine,  # noqa: F811
    make_vm: Callable[..., str],  # noqa: F811
    probe: Path,
    disk_mib: int | None,
) -> str:
    limits = Limits(memory_bytes=256 * MiB, disk_bytes=disk_mib * MiB if disk_mib else None)
    vm_id = make_vm(limits=limits)
    shutil.copy2(probe, engine.pool.vm_path(vm_id) / "bin" / "statfs-probe")
    return vm_id


def test_df_shows_the_vms_own_quota_and_what_it_used(
    engine: NamespaceEngine,  # noqa: F811
    make_vm: Callable[..., str],  # noqa: F811
    probe: Path,
) -> None:
    vm = _vm_with_probe(engine, make_vm, probe, 64)
    before = _answers(run(engine, vm, "statfs-probe / /home/user fd:/etc/passwd").stdout)
    root = before["/"]
    assert root["type"] == BTRFS_MAGIC
    assert root["blocks"] * root["bsize"] == 64 * MiB
    assert root["bavail"] <= root["bfree"] <= root["blocks"]
    # A path, a relative path's directory and an open file of the root agree.
    assert before["/home/user"]["blocks"] == before["fd:/etc/passwd"]["blocks"] == root["blocks"]
    # What the VM writes is what df shows used (the quota's count, after a commit).
    write = "dd if=/dev/zero of=big bs=1M count=16 2>/dev/null; sync; statfs-probe ."
    after = run(engine, vm, write)
    used = (root["bfree"] - _answers(after.stdout)["."]["bfree"]) * root["bsize"]
    assert 16 * MiB <= used < 20 * MiB, used
    # busybox df: the size column is the quota (1K blocks).
    df = run(engine, vm, "df -k / | tail -n 1").stdout.split()
    assert int(df[1]) == 64 * 1024


def test_other_filesystems_and_errors_go_to_the_kernel(
    engine: NamespaceEngine,  # noqa: F811
    make_vm: Callable[..., str],  # noqa: F811
    probe: Path,
) -> None:
    vm = _vm_with_probe(engine, make_vm, probe, 64)
    out = run(engine, vm, "statfs-probe /tmp pipe /proc badbuf badpath badfd /nope").stdout
    got = _answers(out)
    assert got["/tmp"]["type"] == TMPFS_MAGIC
    assert got["/tmp"]["blocks"] * got["/tmp"]["bsize"] == 64 * MiB  # the engine's tmp size
    assert got["pipe"]["type"] == 0x50495045  # PIPEFS_MAGIC
    assert got["/proc"]["type"] == 0x9FA0  # PROC_SUPER_MAGIC
    assert got["badbuf"] == {"errno": 14}  # EFAULT
    assert got["badpath"] == {"errno": 14}
    assert got["badfd"] == {"errno": 9}  # EBADF
    assert got["/nope"] == {"errno": 2}  # ENOENT


def test_lookups_are_checked_as_the_caller(
    engine: NamespaceEngine,  # noqa: F811
    make_vm: Callable[..., str],  # noqa: F811
    probe: Path,
) -> None:
    """PID 1 answers as root; the path must still be looked up as the caller,
    so a user's statfs under a directory it cannot search is refused."""
    vm = _vm_with_probe(engine, make_vm, probe, 64)
    setup = "mkdir -p /root/secret && chmod 700 /root && statfs-probe /root/secret"
    as_root = _answers(run(engine, vm, setup, user="root").stdout)
    assert as_root["/root/secret"]["blocks"] * as_root["/root/secret"]["bsize"] == 64 * MiB
    as_user = _answers(run(engine, vm, "statfs-probe /root/secret /home/user").stdout)
    assert as_user["/root/secret"] == {"errno": 13}  # EACCES
    assert as_user["/home/user"]["blocks"] == as_root["/root/secret"]["blocks"]


def test_without_a_quota_statfs_is_the_kernels(
    engine: NamespaceEngine,  # noqa: F811
    make_vm: Callable[..., str],  # noqa: F811
    probe: Path,
) -> None:
    vm = _vm_with_probe(engine, make_vm, probe, None)
    root = _answers(run(engine, vm, "statfs-probe /").stdout)["/"]
    host = shutil.disk_usage(engine.pool.vm_path(vm))
    assert root["blocks"] * root["bsize"] == host.total


def test_a_flood_of_statfs_calls_leaves_runs_working(
    engine: NamespaceEngine,  # noqa: F811
    make_vm: Callable[..., str],  # noqa: F811
    probe: Path,
) -> None:
    """PID 1 answers statfs in the loop that runs commands: a VM hammering it
    from several processes still gets its runs started and answered."""
    vm = _vm_with_probe(engine, make_vm, probe, 64)
    flood = "for i in 1 2 3 4; do (while :; do statfs-probe / / / / >/dev/null; done) & done"
    run(engine, vm, flood)
    for _ in range(5):
        assert run(engine, vm, "echo alive").stdout == b"alive\n"
    got = _answers(run(engine, vm, "statfs-probe /").stdout)
    assert got["/"]["blocks"] * got["/"]["bsize"] == 64 * MiB
