"""In-VM file access: symlinks resolve inside the VM, never onto the host."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from arker.engine.files import FileWriter, read_file, write_file
from arker.engine.pool import Pool
from arker.errors import ArkerError

pytestmark = pytest.mark.root

MiB = 1024 * 1024


@pytest.fixture
def vm(pool: Pool, busybox_golden: str) -> Path:
    """The root directory of a stopped VM forked from busybox."""
    return pool.fork(busybox_golden, "vm")


def _code(call: object) -> str:
    assert callable(call)
    with pytest.raises(ArkerError) as e:
        call()
    return str(e.value.code)


def _in_vm(vm: Path, path: str | Path) -> Path:
    """Where the VM's absolute `path` lives on the host."""
    return vm / str(path).lstrip("/")


def test_symlink_to_etc_shadow_reads_the_vms_file(vm: Path) -> None:
    _in_vm(vm, "/etc/shadow").write_text("vm shadow\n")
    os.symlink("/etc/shadow", _in_vm(vm, "/home/user/shadow"))
    assert read_file(vm, "/home/user/shadow", MiB) == b"vm shadow\n"


def test_symlinks_to_a_host_marker_read_the_vms_copy(vm: Path, tmp_path: Path) -> None:
    marker = tmp_path / "host-secret"
    marker.write_text("HOST")
    os.symlink(str(marker), _in_vm(vm, "/home/user/abs"))
    os.symlink("../../" * 20 + str(marker).lstrip("/"), _in_vm(vm, "/home/user/rel"))
    for link in ("/home/user/abs", "/home/user/rel"):
        assert _code(lambda link=link: read_file(vm, link, MiB)) == "not_found"
    _in_vm(vm, marker).parent.mkdir(parents=True)
    _in_vm(vm, marker).write_text("VM")
    for link in ("/home/user/abs", "/home/user/rel"):
        assert read_file(vm, link, MiB) == b"VM"


def test_dotdot_is_rejected(vm: Path) -> None:
    for path in ("/home/user/../../etc/passwd", "/home/user/a/../../../etc/shadow", "etc/passwd"):
        assert _code(lambda path=path: read_file(vm, path, MiB)) == "invalid_path"
        assert _code(lambda path=path: write_file(vm, path, b"x")) == "invalid_path"


def test_proc_style_magic_links_cannot_escape(vm: Path, tmp_path: Path) -> None:
    marker = tmp_path / "host-secret"
    marker.write_text("HOST")
    os.symlink(f"/proc/1/root{marker}", _in_vm(vm, "/home/user/p1"))
    os.symlink(f"/proc/self/root{marker}", _in_vm(vm, "/home/user/pself"))
    os.symlink("/proc/self/cwd", _in_vm(vm, "/home/user/cwd"))
    links = ("/home/user/p1", "/home/user/pself", "/home/user/cwd/x")
    for link in links:  # no proc in the VM's tree on the host: nothing there
        assert _code(lambda link=link: read_file(vm, link, MiB)) == "not_found"
    # Even with a real procfs mounted in the VM's tree, the walk cannot use it.
    subprocess.run(["mount", "-t", "proc", "proc", str(vm / "proc")], check=True)
    try:
        for link in links:
            assert _code(lambda link=link: read_file(vm, link, MiB)) == "invalid_path"
        assert _code(lambda: write_file(vm, "/home/user/cwd/x", b"x")) == "invalid_path"
    finally:
        subprocess.run(["umount", str(vm / "proc")], check=True)
    assert marker.read_text() == "HOST"


def test_read_errors_and_size_bound(vm: Path) -> None:
    _in_vm(vm, "/home/user/f").write_bytes(b"x" * 1000)
    assert read_file(vm, "/home/user/f", 1000) == b"x" * 1000
    assert _code(lambda: read_file(vm, "/home/user/f", 999)) == "payload_too_large"
    assert _code(lambda: read_file(vm, "/home/user/missing", MiB)) == "not_found"
    assert _code(lambda: read_file(vm, "/home/user/f/below", MiB)) == "not_found"
    _in_vm(vm, "/home/user/dir").mkdir()
    assert _code(lambda: read_file(vm, "/home/user/dir", MiB)) == "invalid_path"
    os.mkfifo(_in_vm(vm, "/home/user/fifo"))
    assert _code(lambda: read_file(vm, "/home/user/fifo", MiB)) == "invalid_path"  # no hang
    assert _code(lambda: read_file(vm, "/etc/passwd", MiB)) == "invalid_path"
    assert _code(lambda: read_file(vm.parent / "nope", "/home/user/f", MiB)) == "not_found"


def test_write_is_atomic_and_owned_by_user(vm: Path) -> None:
    info = write_file(vm, "/home/user/hello.txt", b"hello")
    assert (info.path, info.size) == ("/home/user/hello.txt", 5)
    assert info.sha256 == hashlib.sha256(b"hello").hexdigest()
    host = _in_vm(vm, "/home/user/hello.txt")
    st = host.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o644)
    os.chmod(host, 0o755)
    before = host.stat().st_ino
    write_file(vm, "/home/user/hello.txt", b"again")
    assert host.read_bytes() == b"again" and host.stat().st_ino != before  # renamed into place
    assert stat.S_IMODE(host.stat().st_mode) == 0o755  # an existing file keeps its mode
    assert sorted(os.listdir(_in_vm(vm, "/home/user"))) == ["hello.txt"]  # no temp left
    root_owned = write_file(vm, "/home/user/r", b"", uid=0, gid=0)
    assert root_owned.size == 0 and _in_vm(vm, "/home/user/r").stat().st_uid == 0


def test_write_makes_parent_dirs_owned_by_user(vm: Path) -> None:
    write_file(vm, "/home/user/a/b/c.txt", b"deep")
    for d in ("/home/user/a", "/home/user/a/b"):
        st = _in_vm(vm, d).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o755)
    assert read_file(vm, "/home/user/a/b/c.txt", MiB) == b"deep"


def test_write_errors(vm: Path, tmp_path: Path) -> None:
    _in_vm(vm, "/home/user/dir").mkdir()
    assert _code(lambda: write_file(vm, "/home/user/dir", b"x")) == "invalid_path"
    assert _code(lambda: write_file(vm, "/home/user/big", b"x" * 11, max_bytes=10)) == (
        "payload_too_large"
    )
    host_dir = tmp_path / "hostdir"
    host_dir.mkdir()
    os.symlink(str(host_dir), _in_vm(vm, "/home/user/out"))
    assert _code(lambda: write_file(vm, "/home/user/out/x", b"x")) == "not_found"
    assert os.listdir(host_dir) == []
    marker = tmp_path / "marker"
    marker.write_text("HOST")
    os.symlink(str(marker), _in_vm(vm, "/home/user/link"))
    write_file(vm, "/home/user/link", b"replaced the link")  # the link, not its target
    assert marker.read_text() == "HOST"
    assert not _in_vm(vm, "/home/user/link").is_symlink()


def test_writer_in_pieces_is_write_file_in_one(vm: Path) -> None:
    pieces = [os.urandom(3 * MiB), b"", b"tail"]
    writer = FileWriter(vm, "/home/user/p/streamed.bin")
    for piece in pieces:
        writer.write(piece)
    assert not _in_vm(vm, "/home/user/p/streamed.bin").exists()  # nothing seen before commit
    info = writer.commit()
    data = b"".join(pieces)
    assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert read_file(vm, "/home/user/p/streamed.bin", 8 * MiB) == data
    assert _in_vm(vm, "/home/user/p/streamed.bin").stat().st_uid == 1000
    assert os.listdir(_in_vm(vm, "/home/user/p")) == ["streamed.bin"]


def test_writer_abort_and_limit_leave_no_trace(vm: Path) -> None:
    write_file(vm, "/home/user/keep", b"old")
    writer = FileWriter(vm, "/home/user/keep")
    writer.write(b"new")
    writer.abort()
    writer.abort()  # twice is fine
    assert read_file(vm, "/home/user/keep", MiB) == b"old"
    writer = FileWriter(vm, "/home/user/keep", max_bytes=4)
    writer.write(b"abc")
    assert _code(lambda: writer.write(b"de")) == "payload_too_large"
    assert _code(writer.commit) == "internal"  # the failed write ended it
    assert read_file(vm, "/home/user/keep", MiB) == b"old"
    assert sorted(os.listdir(_in_vm(vm, "/home/user"))) == ["keep"]


def test_write_needs_home_user(pool: Pool, vm: Path) -> None:
    subprocess.run(["rm", "-rf", str(_in_vm(vm, "/home/user"))], check=True)
    assert _code(lambda: write_file(vm, "/home/user/x", b"x")) == "not_found"
    assert not _in_vm(vm, "/home/user").exists()


def test_files_work_on_a_fork_without_touching_the_parent(pool: Pool, vm: Path) -> None:
    write_file(vm, "/home/user/f", b"parent")
    child = pool.fork("vm", "child")
    write_file(child, "/home/user/f", b"child")
    assert read_file(vm, "/home/user/f", MiB) == b"parent"
    assert read_file(child, "/home/user/f", MiB) == b"child"


def test_100_mib_both_ways_round_trips(vm: Path) -> None:
    data = os.urandom(MiB) * 100
    start = time.perf_counter()
    info = write_file(vm, "/home/user/big.bin", data, max_bytes=200 * MiB)
    wrote = time.perf_counter() - start
    start = time.perf_counter()
    back = read_file(vm, "/home/user/big.bin", 200 * MiB)
    read = time.perf_counter() - start
    assert back == data and info.size == len(data)
    # Speed is scripts/bench's to judge (as a ratio, in its own run); a test
    # on a shared machine asserts no wall-clock time.
    print(f"write {100 / wrote:.0f} MiB/s, read {100 / read:.0f} MiB/s")
