"""A VM's directory as a tar stream, and a tar unpacked into one.

Packing walks the directory by fds (opened with O_NOFOLLOW below the root,
which is resolved inside the VM as files.py does): files, directories and
symlinks (as links, never followed) go in; FIFOs, sockets and devices are
left out; a hard link goes in as a second copy. A file that shrinks while it
is read is padded with zeros to the size its header gave.

Unpacking goes into a staging directory beside the target (inside it, when
it exists), under `_tar.Rules` strict enough for a user's archive: names
stay inside, links point inside, no special members, every member owned by
uid 1000 and bounded in number, depth and bytes. Only when every member has
been extracted is the result moved into place: a rename when the target is
new, else a merge of the staged tree into it (a name already there is
replaced; directories merge). Any refusal removes the staging directory, so
nothing is written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Generator, Iterator
from pathlib import Path

from arker._paths import check_path
from arker.engine._tar import Rules, Tar, tar_stream
from arker.engine.base import ArchiveReader, Unpacked
from arker.engine.files import _mapped, _open_dir, _resolve
from arker.engine.fs import open_in_vm, rename_noreplace
from arker.errors import ArkerError, ErrorCode

__all__ = ["MAX_MEMBERS", "DirPacker", "unpack"]

MAX_MEMBERS = 100_000
MAX_DEPTH = 128  # components of a member's name, and levels packed
_CHUNK = 1 << 20
_BLOCK = 512


class DirPacker(ArchiveReader):
    """read() the next piece of the tar (about a MiB), b"" at the end."""

    def __init__(self, root: Path, path: str) -> None:
        self._norm = norm = check_path(path, home=True)
        with open_in_vm(root, norm) as fd:
            self._fd: int | None = os.dup(fd)
        self._pieces = self._stream()

    def read(self) -> bytes:
        with _mapped(self._norm):
            return next(self._pieces, b"")

    def close(self) -> None:
        self._pieces.close()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _stream(self) -> Generator[bytes, None, None]:
        assert self._fd is not None
        buf = bytearray()
        for piece in self._dir(self._fd, "", 1):
            buf += piece
            if len(buf) >= _CHUNK:
                yield bytes(buf)
                buf.clear()
        buf += b"\0" * (2 * _BLOCK)  # the end-of-archive marker
        yield bytes(buf)

    def _dir(self, fd: int, prefix: str, level: int) -> Iterator[bytes]:
        with os.scandir(fd) as it:
            names = sorted(item.name for item in it)
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed by the VM meanwhile
            rel = prefix + name
            if stat.S_ISDIR(st.st_mode):
                if level > MAX_DEPTH:
                    continue
                try:
                    child = _open_child(fd, name, os.O_RDONLY | os.O_DIRECTORY)
                except _Gone:
                    continue
                try:
                    yield _header(rel + "/", st, tarfile.DIRTYPE)
                    yield from self._dir(child, rel + "/", level + 1)
                finally:
                    os.close(child)
            elif stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(name, dir_fd=fd)
                except (FileNotFoundError, OSError):
                    continue
                yield _header(rel, st, tarfile.SYMTYPE, linkname=target)
            elif stat.S_ISREG(st.st_mode):
                yield from _file(fd, name, rel)


class _Gone(Exception):
    pass


def _open_child(fd: int, name: str, flags: int) -> int:
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.ENXIO):
            raise _Gone from None  # swapped or removed by the VM meanwhile: not followed
        raise


def _header(
    name: str, st: os.stat_result, kind: bytes, *, size: int = 0, linkname: str = ""
) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = st.st_mode & 0o7777
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    info.size = size
    info.linkname = linkname
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _file(dir_fd: int, name: str, rel: str) -> Iterator[bytes]:
    try:
        # O_NONBLOCK: a FIFO swapped in for the file must not block the open.
        fd = _open_child(dir_fd, name, os.O_RDONLY | os.O_NONBLOCK)
    except _Gone:
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        size = st.st_size
        yield _header(rel, st, tarfile.REGTYPE, size=size)
        left = size
        while left:
            chunk = os.read(fd, min(left, _CHUNK))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
        if left:
            yield b"\0" * left  # shrank meanwhile: the header's size is a promise
        if size % _BLOCK:
            yield b"\0" * (_BLOCK - size % _BLOCK)
    finally:
        os.close(fd)


def unpack(
    root: Path, path: str, tarball: Path, max_bytes: int, *, uid: int = 1000, gid: int = 1000
) -> Unpacked:
    """Unpack the tar file `tarball` into the VM's directory `path`, all or
    nothing (see the module's docstring)."""
    norm = check_path(path, home=True)
    parts = norm.strip("/").split("/")
    rules = Rules(
        owner=(uid, gid),
        contained=True,
        max_members=MAX_MEMBERS,
        max_depth=MAX_DEPTH,
        max_bytes=max_bytes,
    )
    with _open_dir(root) as root_fd, _mapped(norm):
        try:
            target: int | None = _resolve(root_fd, "/".join(parts), os.O_PATH, norm)
        except ArkerError as exc:
            if exc.code != ErrorCode.NOT_FOUND:
                raise
            target = None
        if target is not None:
            mode = os.fstat(target).st_mode
            if not stat.S_ISDIR(mode):
                os.close(target)
                raise ArkerError(ErrorCode.CONFLICT, f"{norm} exists and is not a directory")
            holder = target
        else:
            holder = _resolve(root_fd, "/".join(parts[:-1]), os.O_PATH | os.O_DIRECTORY, norm)
    staging = f".arker-unpack-{secrets.token_hex(8)}"
    try:
        with _mapped(norm):
            os.mkdir(staging, 0o700, dir_fd=holder)
            staged = False
            try:
                sfd = _open_child(holder, staging, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    members, nbytes = _extract(sfd, tarball, rules)
                    if target is None:  # the staging directory becomes the target
                        os.fchown(sfd, uid, gid)
                        os.fchmod(sfd, 0o755)
                finally:
                    os.close(sfd)
                if target is None:
                    _rename_new(holder, staging, parts[-1], norm)
                    staged = True
                else:
                    _merge(holder, staging, holder)
            finally:
                if not staged:
                    with contextlib.suppress(FileNotFoundError):
                        shutil.rmtree(staging, dir_fd=holder)
    finally:
        os.close(holder)
    return Unpacked(path=norm, entries=members, bytes=nbytes)


def _extract(sfd: int, tarball: Path, rules: Rules) -> tuple[int, int]:
    try:
        with tar_stream(tarball) as (tar, _):
            return Tar(tar, rules).run(sfd)
    except (tarfile.TarError, EOFError) as exc:
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"not a readable tar archive: {exc}") from exc


def _rename_new(holder: int, staging: str, name: str, norm: str) -> None:
    if not rename_noreplace(holder, staging, holder, name):
        raise ArkerError(ErrorCode.CONFLICT, f"{norm} was made meanwhile; try again")


def _merge(src_parent: int, src_name: str, dst: int) -> None:
    """Move every entry of src_parent/src_name into the directory `dst`
    (both fds), replacing what is there; directories merge. Then remove the
    emptied source."""
    src = _open_child(src_parent, src_name, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in os.listdir(src):
            s = os.stat(name, dir_fd=src, follow_symlinks=False)
            try:
                d = os.stat(name, dir_fd=dst, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
                continue
            if stat.S_ISDIR(s.st_mode) and stat.S_ISDIR(d.st_mode):
                sub = _open_child(dst, name, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    _merge(src, name, sub)
                finally:
                    os.close(sub)
                continue
            if stat.S_ISDIR(d.st_mode):
                shutil.rmtree(name, dir_fd=dst)
            elif stat.S_ISDIR(s.st_mode):
                os.unlink(name, dir_fd=dst)
            os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
    finally:
        os.close(src)
    os.rmdir(src_name, dir_fd=src_parent)
