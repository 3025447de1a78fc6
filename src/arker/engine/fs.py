"""A VM's directories from the host: list, stat, mkdir, move, remove.

The same rules as files.py: every path is resolved by openat2(RESOLVE_IN_ROOT)
against the VM's root, up to the parent of its last component; the last
component is then acted on by name, relative to that directory's fd, never
followed (a symlink is listed, moved or removed as itself). Walks below it
open each directory with O_NOFOLLOW, so a VM swapping a directory for a
symlink mid-walk gets that entry skipped, never followed onto the host.

A wrong type (list a file, remove a directory without `recursive`, move onto
a name that is taken) is `conflict` with one sentence.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from arker._paths import check_path
from arker.engine.base import DirListing, FsEntry
from arker.engine.files import _mapped, _open_dir, _parent_dir, _resolve
from arker.errors import ArkerError, ErrorCode

__all__ = [
    "MAX_DEPTH",
    "MAX_LIMIT",
    "MAX_SCAN",
    "entry_type",
    "list_dir",
    "make_dir",
    "move_path",
    "open_in_vm",
    "remove_path",
    "rename_noreplace",
    "stat_path",
]

MAX_DEPTH = 5
MAX_LIMIT = 1000
MAX_OFFSET = 100_000
# Names read in one listing, whatever the page: a directory of millions of
# files costs one bounded read, and the answer says it was cut (`truncated`).
MAX_SCAN = 100_000

_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint,
]  # fmt: skip


def entry_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _conflict(message: str) -> ArkerError:
    return ArkerError(ErrorCode.CONFLICT, message)


def _entry(name: str, path: str, st: os.stat_result, dir_fd: int, last: str) -> FsEntry:
    link = os.readlink(last, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
    return FsEntry(
        name=name,
        path=path,
        type=entry_type(st.st_mode),  # type: ignore[arg-type]
        size=st.st_size,
        mode=st.st_mode & 0o7777,
        mtime=st.st_mtime,
        link_target=link,
    )


@contextlib.contextmanager
def _parent(root: Path, norm: str) -> Iterator[tuple[int, str]]:
    """(O_PATH fd of the directory holding norm's last component, that
    component), resolved inside the VM."""
    parts = norm.strip("/").split("/")
    with _open_dir(root) as root_fd, _mapped(norm):
        fd = _resolve(root_fd, "/".join(parts[:-1]), os.O_PATH | os.O_DIRECTORY, norm)
    try:
        with _mapped(norm):
            yield fd, parts[-1]
    finally:
        os.close(fd)


def _lstat(dir_fd: int, name: str, norm: str) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise ArkerError(ErrorCode.NOT_FOUND, f"no such file: {norm}") from None


@contextlib.contextmanager
def open_in_vm(root: Path, norm: str) -> Iterator[int]:
    """An O_RDONLY fd of the directory `norm` (symlinks followed inside the
    VM); not a directory: conflict."""
    with _open_dir(root) as root_fd, _mapped(norm):
        ref = _resolve(root_fd, norm.lstrip("/"), os.O_PATH, norm)
        try:
            mode = os.fstat(ref).st_mode
            if not stat.S_ISDIR(mode):
                raise _conflict(f"{norm} is a {entry_type(mode)}, not a directory")
            # The same inode, opened for reading (an O_PATH fd cannot be listed).
            fd = os.open(f"/proc/self/fd/{ref}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        finally:
            os.close(ref)
    try:
        yield fd
    finally:
        os.close(fd)


def stat_path(root: Path, path: str) -> FsEntry:
    norm = check_path(path, home=True)
    with _parent(root, norm) as (fd, last):
        return _entry(last, norm, _lstat(fd, last, norm), fd, last)


def list_dir(
    root: Path, path: str, *, depth: int = 1, limit: int = 200, offset: int = 0
) -> DirListing:
    norm = check_path(path, home=True)
    if not 1 <= depth <= MAX_DEPTH or not 1 <= limit <= MAX_LIMIT or not 0 <= offset <= MAX_OFFSET:
        raise ArkerError(
            ErrorCode.INVALID_REQUEST,
            f"list needs 1 <= depth <= {MAX_DEPTH}, 1 <= limit <= {MAX_LIMIT} and "
            f"0 <= offset <= {MAX_OFFSET}",
        )
    walk = _Walk(norm, depth, offset, limit)
    with open_in_vm(root, norm) as fd, _mapped(norm):
        walk.dir(fd, "", 1)
    more = walk.seen > offset + limit
    return DirListing(walk.page, offset + limit if more else None, walk.truncated)


class _Walk:
    """Depth-first, sorted by name within each directory; stops once it has
    seen one entry past the page (so a later page only costs its own walk)."""

    def __init__(self, base: str, depth: int, offset: int, limit: int) -> None:
        self.base, self.depth, self.offset, self.limit = base, depth, offset, limit
        self.page: list[FsEntry] = []
        self.seen = 0
        self.scanned = 0
        self.truncated = False

    def dir(self, fd: int, prefix: str, level: int) -> None:
        if self.truncated:
            return
        names: list[str] = []
        with os.scandir(fd) as it:
            for item in it:
                self.scanned += 1
                if self.scanned > MAX_SCAN:
                    self.truncated = True
                    break
                names.append(item.name)
        names.sort()
        for name in names:
            if self.seen > self.offset + self.limit:
                return
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed by the VM meanwhile
            self.seen += 1
            rel = prefix + name
            if self.offset < self.seen <= self.offset + self.limit:
                self.page.append(_entry(rel, f"{self.base}/{rel}", st, fd, name))
            if stat.S_ISDIR(st.st_mode) and level < self.depth:
                try:
                    child = os.open(
                        name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=fd,
                    )  # fmt: skip
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES):
                        continue  # swapped by the VM meanwhile: not followed
                    raise
                try:
                    self.dir(child, rel + "/", level + 1)
                finally:
                    os.close(child)


def make_dir(
    root: Path,
    path: str,
    *,
    parents: bool = False,
    uid: int = 1000,
    gid: int = 1000,
) -> FsEntry:
    norm = check_path(path)
    parts = norm.strip("/").split("/")
    if parents:
        with _open_dir(root) as root_fd, _mapped(norm):
            fd = _parent_dir(root_fd, parts[:-1], uid, gid, norm)
        cm: contextlib.AbstractContextManager[tuple[int, str]] = _owned(fd, parts[-1])
    else:
        cm = _parent(root, norm)
    with cm as (fd, last), _mapped(norm):
        try:
            os.mkdir(last, 0o700, dir_fd=fd)
        except FileExistsError:
            st = os.stat(last, dir_fd=fd, follow_symlinks=False)
            if not (parents and stat.S_ISDIR(st.st_mode)):
                raise _conflict(f"{norm} already exists (a {entry_type(st.st_mode)})") from None
            return _entry(last, norm, st, fd, last)
        made = os.open(last, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            os.fchown(made, uid, gid)
            os.fchmod(made, 0o755)  # after chown, and regardless of the umask
        finally:
            os.close(made)
        return _entry(last, norm, _lstat(fd, last, norm), fd, last)


@contextlib.contextmanager
def _owned(fd: int, last: str) -> Iterator[tuple[int, str]]:
    try:
        yield fd, last
    finally:
        os.close(fd)


def _renameat2(sfd: int, sname: str, dfd: int, dname: str, flags: int) -> int:
    """renameat2(2) (Python has no binding): 0, or the errno."""
    rc = _libc.renameat2(sfd, os.fsencode(sname), dfd, os.fsencode(dname), flags)
    return 0 if rc == 0 else ctypes.get_errno()


def rename_noreplace(sfd: int, sname: str, dfd: int, dname: str) -> bool:
    """Rename unless something has the new name (False then), atomically."""
    err = _renameat2(sfd, sname, dfd, dname, _RENAME_NOREPLACE)
    if err == errno.EEXIST:
        return False
    if err:
        raise OSError(err, os.strerror(err), sname)
    return True


def move_path(root: Path, source: str, destination: str, *, overwrite: bool = False) -> FsEntry:
    src, dst = check_path(source), check_path(destination)
    if dst == src:
        raise _conflict(f"{src} cannot be moved onto itself")
    if dst.startswith(src + "/"):
        raise _conflict(f"{src} cannot be moved inside itself ({dst})")
    with _parent(root, src) as (sfd, sname), _parent(root, dst) as (dfd, dname):
        src_st = _lstat(sfd, sname, src)
        flags = 0 if overwrite else _RENAME_NOREPLACE
        err = _renameat2(sfd, sname, dfd, dname, flags)
        if err:
            if err == errno.EEXIST and not overwrite:
                raise _conflict(f"{dst} already exists; pass overwrite to replace it")
            if err in (errno.EEXIST, errno.ENOTEMPTY):
                raise _conflict(f"{dst} is a directory that is not empty")
            if err == errno.EISDIR:
                raise _conflict(
                    f"{dst} is a directory; a {entry_type(src_st.st_mode)} cannot replace it"
                )
            if err == errno.ENOTDIR:
                raise _conflict(f"{dst} is not a directory; a directory cannot replace it")
            if err == errno.EINVAL:
                raise _conflict(f"{src} cannot be moved inside itself ({dst})")
            raise OSError(err, os.strerror(err), src)  # mapped by _parent's _mapped, or a 500
        return _entry(dname, dst, _lstat(dfd, dname, dst), dfd, dname)


def remove_path(root: Path, path: str, *, recursive: bool = False) -> None:
    norm = check_path(path)
    with _parent(root, norm) as (fd, last):
        st = _lstat(fd, last, norm)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(last, dir_fd=fd)
            return
        if not recursive:
            raise _conflict(f"{norm} is a directory; pass recursive to remove it and all in it")
        # rmtree by fds (Python's symlink-attack-safe walk): a symlink inside
        # is unlinked, never followed.
        shutil.rmtree(last, dir_fd=fd)
