"""A VM's directories and archives on the real pool: list, stat, mkdir, move,
remove, pack and unpack, and the attacks on them (links out, `..` in tar
names, device nodes, bombs, huge directories)."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tarballs

from tarballs import member as _member
from tarballs import tar as _tar

from arker.engine import archive, fs
from arker.engine.pool import Pool
from arker.errors import ArkerError

pytestmark = pytest.mark.root

MiB = 1024 * 1024


@pytest.fixture
def vm(pool: Pool, busybox_golden: str) -> Path:
    """The root directory of a stopped VM forked from busybox."""
    return pool.fork(busybox_golden, "vm")


def _code(call: Callable[[], object]) -> str:
    with pytest.raises(ArkerError) as e:
        call()
    return str(e.value.code)


def _home(vm: Path, rel: str = "") -> Path:
    return vm / "home/user" / rel


def _tree(vm: Path) -> None:
    h = _home(vm)
    (h / "proj/src").mkdir(parents=True)
    (h / "proj/src/main.py").write_text("print('hi')\n")
    (h / "proj/README").write_text("readme")
    os.symlink("src/main.py", h / "proj/link")
    os.mkfifo(h / "proj/fifo")


def _unpack(vm: Path, tmp_path: Path, data: bytes, path: str = "/home/user/out") -> object:
    tarball = tmp_path / "in.tar"
    tarball.write_bytes(data)
    return archive.unpack(vm, path, tarball, 64 * MiB)


def _leftovers(vm: Path) -> list[str]:
    found = []
    for dirpath, dirnames, _ in os.walk(_home(vm)):
        found += [os.path.join(dirpath, d) for d in dirnames if d.startswith(".arker-unpack-")]
    return found


# -- list and stat


def test_list_gives_types_sizes_modes_sorted(vm: Path) -> None:
    _tree(vm)
    listing = fs.list_dir(vm, "/home/user/proj")
    by_name = {e.name: e for e in listing.entries}
    assert [e.name for e in listing.entries] == ["README", "fifo", "link", "src"]
    assert by_name["README"].type == "file" and by_name["README"].size == 6
    assert by_name["README"].path == "/home/user/proj/README"
    assert by_name["link"].type == "symlink" and by_name["link"].link_target == "src/main.py"
    assert by_name["src"].type == "dir" and by_name["fifo"].type == "other"
    assert by_name["README"].mode == 0o644
    assert listing.next_offset is None and not listing.truncated


def test_list_depth_and_paging(vm: Path) -> None:
    _tree(vm)
    deep = fs.list_dir(vm, "/home/user/proj", depth=2)
    assert [e.name for e in deep.entries] == ["README", "fifo", "link", "src", "src/main.py"]
    first = fs.list_dir(vm, "/home/user/proj", depth=2, limit=2)
    second = fs.list_dir(vm, "/home/user/proj", depth=2, limit=2, offset=first.next_offset or 0)
    third = fs.list_dir(vm, "/home/user/proj", depth=2, limit=2, offset=second.next_offset or 0)
    names = [e.name for page in (first, second, third) for e in page.entries]
    assert names == [e.name for e in deep.entries]
    assert first.next_offset == 2 and third.next_offset is None
    assert fs.list_dir(vm, "/home/user").entries[0].name == "proj"  # home itself lists


def test_list_bounds(vm: Path) -> None:
    for kwargs in ({"depth": 0}, {"depth": 6}, {"limit": 0}, {"limit": 1001}, {"offset": -1}):
        assert _code(lambda kw=kwargs: fs.list_dir(vm, "/home/user", **kw)) == "invalid_request"


def test_list_of_a_file_is_a_conflict_and_absent_is_not_found(vm: Path) -> None:
    _tree(vm)
    with pytest.raises(ArkerError) as e:
        fs.list_dir(vm, "/home/user/proj/README")
    assert e.value.code == "conflict" and "not a directory" in e.value.message
    assert _code(lambda: fs.list_dir(vm, "/home/user/nope")) == "not_found"
    assert _code(lambda: fs.list_dir(vm, "/home/user/../../etc")) == "invalid_path"
    assert _code(lambda: fs.list_dir(vm, "/etc")) == "invalid_path"


def test_list_through_a_symlink_stays_in_the_vm(vm: Path, tmp_path: Path) -> None:
    host = tmp_path / "host-dir"
    host.mkdir()
    (host / "host-secret").write_text("HOST")
    os.symlink(str(host), _home(vm, "out"))
    os.symlink("../../" * 10 + str(host).lstrip("/"), _home(vm, "rel"))
    assert _code(lambda: fs.list_dir(vm, "/home/user/out")) == "not_found"
    assert _code(lambda: fs.list_dir(vm, "/home/user/rel")) == "not_found"
    os.symlink("/etc", _home(vm, "etc"))  # the VM's own /etc: allowed, and the VM's
    names = {e.name for e in fs.list_dir(vm, "/home/user/etc").entries}
    assert names == set(os.listdir(vm / "etc"))
    # a depth walk never follows a symlink below the listed directory
    (_home(vm, "d")).mkdir()
    os.symlink(str(host), _home(vm, "d/host"))
    deep = fs.list_dir(vm, "/home/user/d", depth=5)
    assert [(e.name, e.type) for e in deep.entries] == [("host", "symlink")]


def test_a_huge_directory_is_bounded(vm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs, "MAX_SCAN", 500)
    big = _home(vm, "big")
    big.mkdir()
    for i in range(800):
        (big / f"f{i:04d}").touch()
    listing = fs.list_dir(vm, "/home/user/big", limit=1000)
    assert listing.truncated and len(listing.entries) == 500
    assert listing.next_offset is None
    page = fs.list_dir(vm, "/home/user/big", limit=100)
    assert len(page.entries) == 100 and page.next_offset == 100


def test_stat_reports_a_symlink_as_itself(vm: Path) -> None:
    _tree(vm)
    link = fs.stat_path(vm, "/home/user/proj/link")
    assert (link.type, link.link_target, link.name) == ("symlink", "src/main.py", "link")
    assert fs.stat_path(vm, "/home/user").type == "dir"
    assert _code(lambda: fs.stat_path(vm, "/home/user/none")) == "not_found"


# -- mkdir, move, remove


def test_mkdir_owned_by_the_user(vm: Path) -> None:
    made = fs.make_dir(vm, "/home/user/a")
    assert made.type == "dir" and made.mode == 0o755
    st = _home(vm, "a").stat()
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert _code(lambda: fs.make_dir(vm, "/home/user/a")) == "conflict"
    assert fs.make_dir(vm, "/home/user/a", parents=True).type == "dir"
    assert _code(lambda: fs.make_dir(vm, "/home/user/x/y")) == "not_found"
    fs.make_dir(vm, "/home/user/x/y/z", parents=True)
    assert _home(vm, "x/y").stat().st_uid == 1000 and _home(vm, "x/y/z").is_dir()
    _home(vm, "f").write_text("")
    assert _code(lambda: fs.make_dir(vm, "/home/user/f", parents=True)) == "conflict"


def test_mkdir_through_a_symlink_to_the_host_makes_nothing_there(vm: Path, tmp_path: Path) -> None:
    host = tmp_path / "host-dir"
    host.mkdir()
    os.symlink(str(host), _home(vm, "out"))
    assert _code(lambda: fs.make_dir(vm, "/home/user/out/x")) == "not_found"
    assert _code(lambda: fs.make_dir(vm, "/home/user/out/x", parents=True)) in (
        "not_found",
        "invalid_path",
    )
    assert os.listdir(host) == []


def test_move_refuses_to_overwrite_unless_asked(vm: Path) -> None:
    _home(vm, "a").write_text("A")
    _home(vm, "b").write_text("B")
    with pytest.raises(ArkerError) as e:
        fs.move_path(vm, "/home/user/a", "/home/user/b")
    assert e.value.code == "conflict" and "overwrite" in e.value.message
    moved = fs.move_path(vm, "/home/user/a", "/home/user/b", overwrite=True)
    assert moved.path == "/home/user/b" and _home(vm, "b").read_text() == "A"
    assert not _home(vm, "a").exists()
    assert _code(lambda: fs.move_path(vm, "/home/user/a", "/home/user/c")) == "not_found"


def test_move_a_directory_and_its_edge_cases(vm: Path) -> None:
    _tree(vm)
    fs.move_path(vm, "/home/user/proj", "/home/user/p2")
    assert (_home(vm, "p2/src/main.py")).exists()
    assert _code(lambda: fs.move_path(vm, "/home/user/p2", "/home/user/p2/src/x")) == "conflict"
    _home(vm, "file").write_text("x")
    assert (
        _code(lambda: fs.move_path(vm, "/home/user/file", "/home/user/p2", overwrite=True))
        == "conflict"
    )
    # a symlink moves as itself, not its target
    fs.move_path(vm, "/home/user/p2/link", "/home/user/l2")
    assert os.readlink(_home(vm, "l2")) == "src/main.py"
    assert _home(vm, "p2/src/main.py").exists()


def test_remove_a_directory_only_with_recursive(vm: Path, tmp_path: Path) -> None:
    _tree(vm)
    host = tmp_path / "host-dir"
    host.mkdir()
    (host / "keep").write_text("HOST")
    os.symlink(str(host), _home(vm, "proj/src/host"))
    with pytest.raises(ArkerError) as e:
        fs.remove_path(vm, "/home/user/proj")
    assert e.value.code == "conflict" and "recursive" in e.value.message
    fs.remove_path(vm, "/home/user/proj/README")
    assert not _home(vm, "proj/README").exists()
    fs.remove_path(vm, "/home/user/proj", recursive=True)
    assert not _home(vm, "proj").exists()
    assert (host / "keep").read_text() == "HOST"  # the link was unlinked, not followed
    assert _code(lambda: fs.remove_path(vm, "/home/user/proj")) == "not_found"
    assert _code(lambda: fs.remove_path(vm, "/home/user")) == "invalid_path"


# -- archives


def _pack(vm: Path, path: str) -> bytes:
    reader = archive.DirPacker(vm, path)
    try:
        pieces = []
        while piece := reader.read():
            pieces.append(piece)
        return b"".join(pieces)
    finally:
        reader.close()


def test_pack_then_unpack_round_trip(vm: Path, tmp_path: Path) -> None:
    _tree(vm)
    (_home(vm, "proj/big")).write_bytes(os.urandom(3 * MiB + 7))
    data = _pack(vm, "/home/user/proj")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert set(names) == {"README", "big", "link", "src", "src/main.py"}  # no fifo
    assert names["link"].issym() and names["link"].linkname == "src/main.py"
    done = _unpack(vm, tmp_path, data, "/home/user/copy")
    assert done.entries == 5  # type: ignore[attr-defined]
    assert _home(vm, "copy/big").read_bytes() == _home(vm, "proj/big").read_bytes()
    assert os.readlink(_home(vm, "copy/link")) == "src/main.py"
    for p in (_home(vm, "copy"), _home(vm, "copy/src/main.py"), _home(vm, "copy/link")):
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (1000, 1000), p
    assert _leftovers(vm) == []


def test_pack_refuses_a_file_and_a_link_out(vm: Path, tmp_path: Path) -> None:
    _tree(vm)
    assert _code(lambda: archive.DirPacker(vm, "/home/user/proj/README")) == "conflict"
    os.symlink(str(tmp_path), _home(vm, "out"))
    assert _code(lambda: archive.DirPacker(vm, "/home/user/out")) == "not_found"


def test_unpack_merges_into_an_existing_directory(vm: Path, tmp_path: Path) -> None:
    _home(vm, "out/keep").parent.mkdir()
    _home(vm, "out/keep").write_text("old")
    _home(vm, "out/same").write_text("old")
    data = _tar(
        (_member("same"), b"new"),
        (_member("sub", tarfile.DIRTYPE, mode=0o755), None),
        (_member("sub/x", mode=0o4755), b"x"),
    )
    _unpack(vm, tmp_path, data)
    assert _home(vm, "out/keep").read_text() == "old"
    assert _home(vm, "out/same").read_text() == "new"
    assert stat.S_IMODE(_home(vm, "out/sub/x").stat().st_mode) == 0o755  # setuid dropped
    assert _leftovers(vm) == []
    _home(vm, "afile").write_text("")
    assert _code(lambda: _unpack(vm, tmp_path, data, "/home/user/afile")) == "conflict"
    assert _code(lambda: _unpack(vm, tmp_path, data, "/home/user/no/such")) == "not_found"


def test_unpack_compressed(vm: Path, tmp_path: Path) -> None:
    data = _tar((_member("a"), b"A" * 1000))
    _unpack(vm, tmp_path, gzip.compress(data), "/home/user/gz")
    zst = subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True)
    _unpack(vm, tmp_path, zst.stdout, "/home/user/zst")
    assert _home(vm, "gz/a").read_bytes() == _home(vm, "zst/a").read_bytes() == b"A" * 1000


BAD_TARS = {
    "dotdot": lambda: _tar((_member("ok"), b"1"), (_member("../escape"), b"x")),
    "absolute": lambda: _tar((_member("ok"), b"1"), (_member("/home/user/abs"), b"x")),
    "symlink absolute": lambda: _tar((_member("l", tarfile.SYMTYPE, linkname="/etc"), None)),
    "symlink out": lambda: _tar((_member("d/l", tarfile.SYMTYPE, linkname="../../x"), None)),
    "hardlink out": lambda: _tar((_member("h", tarfile.LNKTYPE, linkname="../x"), None)),
    "hardlink absolute": lambda: _tar(
        (_member("h", tarfile.LNKTYPE, linkname="/etc/passwd"), None)
    ),
    "hardlink missing": lambda: _tar((_member("h", tarfile.LNKTYPE, linkname="etc/passwd"), None)),
    "char device": lambda: _tar((_member("null", tarfile.CHRTYPE, devmajor=1, devminor=3), None)),
    "block device under dev": lambda: _tar(
        (_member("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None)
    ),
    "fifo": lambda: _tar((_member("f", tarfile.FIFOTYPE), None)),
    "through an earlier symlink": lambda: _tar(
        (_member("l", tarfile.SYMTYPE, linkname="."), None), (_member("l/x"), b"x")
    ),
    "not a tar": lambda: b"this is not a tar archive at all" * 40,
}


@pytest.mark.parametrize("kind", sorted(BAD_TARS))
def test_a_bad_tar_writes_nothing(vm: Path, tmp_path: Path, kind: str) -> None:
    before = sorted(os.listdir(_home(vm)))
    assert _code(lambda: _unpack(vm, tmp_path, BAD_TARS[kind]())) == "invalid_request"
    assert sorted(os.listdir(_home(vm))) == before
    assert not (vm / "etc/escape").exists() and not (vm / "home/escape").exists()
    assert _leftovers(vm) == []


def test_a_bad_tar_into_an_existing_directory_writes_nothing(vm: Path, tmp_path: Path) -> None:
    _home(vm, "out").mkdir()
    data = _tar((_member("first"), b"1"), (_member("../../etc/passwd"), b"pwned"))
    assert _code(lambda: _unpack(vm, tmp_path, data)) == "invalid_request"
    assert os.listdir(_home(vm, "out")) == []


def test_a_tar_bomb_is_bounded(vm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_MEMBERS", 100)
    many = _tar(*((_member(f"f{i}"), b"") for i in range(101)))
    with pytest.raises(ArkerError) as e:
        _unpack(vm, tmp_path, many)
    assert e.value.code == "invalid_request" and "more than 100 members" in e.value.message
    tarball = tmp_path / "big.tar"
    tarball.write_bytes(_tar((_member("a"), b"x" * 2000), (_member("b"), b"x" * 2000)))
    with pytest.raises(ArkerError) as e:
        archive.unpack(vm, "/home/user/out", tarball, 3000)
    assert "more than 3000 bytes" in e.value.message
    deep = _tar((_member("/".join(["d"] * 130) + "/f"), b""))
    assert _code(lambda: _unpack(vm, tmp_path, deep)) == "invalid_request"
    assert not _home(vm, "out").exists() and _leftovers(vm) == []
