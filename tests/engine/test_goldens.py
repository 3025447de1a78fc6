"""Goldens: busybox and debian builds, and tarball import (good and evil)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from arker.engine.goldens import KNOWN_GOLDENS, build_busybox, build_debian, import_tarball
from arker.engine.pool import Pool
from arker.errors import ArkerError, ErrorCode

pytestmark = pytest.mark.root

Steps = list[tuple[int, int | None, str]]


def _recorder() -> tuple[Steps, Callable[[int, int | None, str], None]]:
    seen: Steps = []
    return seen, lambda done, total, msg: seen.append((done, total, msg))


def _chroot(root: Path, *argv: str) -> str:
    return subprocess.run(
        ["chroot", str(root), *argv], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_registry() -> None:
    assert {"busybox": build_busybox, "debian": build_debian} == KNOWN_GOLDENS


def test_build_busybox(pool: Pool) -> None:
    seen, progress = _recorder()
    start = time.monotonic()
    info = build_busybox(pool, progress)
    print(f"busybox golden built in {time.monotonic() - start:.2f} s")
    assert info.name == "busybox" and pool.has_golden("busybox") and seen
    root = pool.golden_path("busybox")
    assert os.readlink(root / "bin/sh") == "/bin/busybox"
    assert os.readlink(root / "usr/bin/awk") == "/bin/busybox"
    assert "user:x:1000:1000:user:/home/user:/bin/sh" in (root / "etc/passwd").read_text()
    assert "user:x:1000:" in (root / "etc/group").read_text()
    assert (root / "etc/hostname").read_text().strip()
    home = (root / "home/user").stat()
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1000, 0o755)
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    for d in ("proc", "sys", "dev", "run", "var", "root", "sbin", "usr/bin"):
        assert (root / d).is_dir()
    assert _chroot(root, "/bin/sh", "-c", "echo hi from $(id -u)") == "hi from 0\n"
    with pytest.raises(ArkerError) as e:  # building it twice is a conflict, not a replace
        build_busybox(pool)
    assert e.value.code == ErrorCode.CONFLICT
    assert [n for n in os.listdir(pool.root / "goldens") if n.startswith(".")] == []


@pytest.mark.slow
def test_build_debian(pool: Pool) -> None:
    seen, progress = _recorder()
    start = time.monotonic()
    info = build_debian(pool, progress)
    print(f"debian golden built in {time.monotonic() - start:.1f} s")
    assert info.name == "debian"
    root = pool.golden_path("debian")
    passwd = (root / "etc/passwd").read_text()
    assert "user:x:1000:1000::/home/user:/bin/bash" in passwd
    assert (root / "home/user").stat().st_uid == 1000
    assert _chroot(root, "/usr/bin/python3", "-c", "print(6 * 7)") == "42\n"
    assert _chroot(root, "/bin/bash", "-c", "id -u user") == "1000\n"
    assert (root / "etc/ssl/certs/ca-certificates.crt").is_file()
    phases = [done for done, _, _ in seen]
    assert phases == sorted(phases) and phases[-1] == seen[-1][1]  # reaches "success"
    assert any("setting up python3" in msg for _, _, msg in seen)


# -- import


def _entry(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    data = kw.pop("data", b"")
    assert isinstance(data, bytes)
    for k, v in kw.items():
        setattr(info, k, v)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    raw = path.with_name(path.name.removesuffix(".zst")) if path.suffix == ".zst" else path
    with tarfile.open(raw, "w:gz") if path.name.endswith(".gz") else tarfile.open(raw, "w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    if raw != path:
        subprocess.run(["zstd", "-q", "--rm", str(raw), "-o", str(path)], check=True)
    return path


def _rootfs_entries() -> list[tuple[tarfile.TarInfo, bytes]]:
    return [
        _entry("./", tarfile.DIRTYPE, mode=0o755),
        _entry("./bin", tarfile.DIRTYPE, mode=0o755),
        _entry("./bin/tool", data=b"#!/bin/sh\necho tool\n", mode=0o4755),
        _entry("./bin/hard", tarfile.LNKTYPE, linkname="./bin/tool"),
        _entry("./etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n", mode=0o644),  # no dir entry
        _entry("./etc/abs", tarfile.SYMTYPE, linkname="/etc/passwd"),
        _entry("home/user", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000),
        _entry("home/user/notes", data=b"mine", mode=0o600, uid=1000, gid=1000, mtime=1_000_000),
        _entry("etc/passwd", data=b"replaced\n", mode=0o644),  # a later member wins
    ]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.zst"])
def test_import_good_tarball(pool: Pool, tmp_path: Path, suffix: str) -> None:
    tarball = _tar(tmp_path / f"rootfs{suffix}", _rootfs_entries())
    seen, progress = _recorder()
    info = import_tarball(pool, "imported", tarball, progress, description="mine")
    assert info.description == "mine" and pool.has_golden("imported")
    assert seen[-1] == (tarball.stat().st_size, tarball.stat().st_size, "extracted")
    root = pool.golden_path("imported")
    tool = (root / "bin/tool").stat()
    assert stat.S_IMODE(tool.st_mode) == 0o4755 and tool.st_nlink == 2
    assert (root / "bin/hard").stat().st_ino == tool.st_ino
    assert (root / "etc/passwd").read_text() == "replaced\n"
    assert os.readlink(root / "etc/abs") == "/etc/passwd"
    home = (root / "home/user").stat()
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1000, 0o750)
    notes = (root / "home/user/notes").stat()
    assert (notes.st_uid, stat.S_IMODE(notes.st_mode), notes.st_mtime) == (1000, 0o600, 1_000_000)
    pool.fork("imported", "vm")
    assert (pool.vm_path("vm") / "home/user/notes").read_text() == "mine"
    with pytest.raises(ArkerError) as e:
        import_tarball(pool, "imported", tarball)
    assert e.value.code == ErrorCode.CONFLICT


def _evil_cases(host: Path) -> dict[str, list[tuple[tarfile.TarInfo, bytes]]]:
    target = host / "marker"
    up = "../" * 30
    return {
        "absolute": [_entry(str(target), data=b"pwned")],
        "dotdot": [_entry(f"ok/{up}{str(target).lstrip('/')}", data=b"pwned")],
        "symlink-then-write": [
            _entry("a", tarfile.SYMTYPE, linkname=str(host)),
            _entry("a/marker", data=b"pwned"),
        ],
        "relative-symlink-then-write": [
            _entry("a", tarfile.SYMTYPE, linkname=f"{up}{str(host).lstrip('/')}"),
            _entry("a/marker", data=b"pwned"),
        ],
        "symlink-then-dir": [
            _entry("a", tarfile.SYMTYPE, linkname=str(host)),
            _entry("a/newdir", tarfile.DIRTYPE),
        ],
        "hardlink-absolute": [_entry("h", tarfile.LNKTYPE, linkname=str(target))],
        "hardlink-dotdot": [
            _entry("h", tarfile.LNKTYPE, linkname=f"{up}{str(target).lstrip('/')}")
        ],
        "hardlink-through-symlink": [
            _entry("a", tarfile.SYMTYPE, linkname=str(host)),
            _entry("h", tarfile.LNKTYPE, linkname="a/marker"),
        ],
        "char-device": [_entry("etc/null", tarfile.CHRTYPE, devmajor=1, devminor=3)],
        "block-device": [_entry("home/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)],
        "fifo": [_entry("pipe", tarfile.FIFOTYPE)],
    }


@pytest.mark.parametrize("case", sorted(_evil_cases(Path("/x"))))
def test_evil_tarball_is_refused(pool: Pool, tmp_path: Path, case: str) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "marker").write_text("untouched")
    entries = [_entry("fine", data=b"ok"), *_evil_cases(host)[case]]
    tarball = _tar(tmp_path / "evil.tar", entries)
    with pytest.raises(ArkerError) as e:
        import_tarball(pool, "evil", tarball)
    assert e.value.code == ErrorCode.INVALID_REQUEST
    assert repr(entries[-1][0].name) in e.value.message
    assert (host / "marker").read_text() == "untouched"
    assert (host / "marker").stat().st_nlink == 1
    assert os.listdir(host) == ["marker"]
    assert not pool.has_golden("evil")
    assert os.listdir(pool.root / "goldens") == []  # the staging subvolume is gone


def test_import_skips_device_nodes_under_dev(pool: Pool, tmp_path: Path) -> None:
    entries = [
        _entry("dev", tarfile.DIRTYPE),
        _entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        _entry("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
        _entry("dev/initctl", tarfile.FIFOTYPE),
        _entry("etc/hostname", data=b"vm\n"),
    ]
    notes: list[str] = []
    info = import_tarball(
        pool,
        "devnodes",
        _tar(tmp_path / "dev.tar", entries),
        progress=lambda done, total, msg: notes.append(msg),
    )
    root = pool.golden_path(info.name)
    try:
        assert (root / "etc/hostname").read_bytes() == b"vm\n"
        assert os.listdir(root / "dev") == []  # none of the nodes was made
        assert "skipped 3 dev/ nodes" in notes[-1]
    finally:
        pool.delete_golden("devnodes")


def test_import_rejects_what_is_not_a_tarball(pool: Pool, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    fake_zst = tmp_path / "bad.tar.zst"
    fake_zst.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(4096))
    for path in (junk, fake_zst):
        with pytest.raises(ArkerError) as e:
            import_tarball(pool, "junk", path)
        assert e.value.code == ErrorCode.INVALID_REQUEST
    link_to_dir = _tar(
        tmp_path / "linkdir.tar",
        [_entry("d", tarfile.DIRTYPE), _entry("h", tarfile.LNKTYPE, linkname="d")],
    )
    with pytest.raises(ArkerError) as e:
        import_tarball(pool, "junk", link_to_dir)
    assert e.value.code == ErrorCode.INVALID_REQUEST and "'h'" in e.value.message
    with pytest.raises(ArkerError) as e:
        import_tarball(pool, "junk", tmp_path / "missing.tar")
    assert e.value.code == ErrorCode.NOT_FOUND
    assert os.listdir(pool.root / "goldens") == []
