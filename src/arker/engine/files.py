"""Read and write a VM's files from the host, as the VM would see them.

Every path is resolved by openat2(RESOLVE_IN_ROOT) against the VM's root
directory, so a symlink in the VM pointing at /etc/shadow reaches the VM's
/etc/shadow, and neither `..` nor an absolute or /proc-style link can leave the
VM. The VM need not be running: this works on its subvolume directly.

Errors: the path rule broken, a directory, a FIFO or device, or a mount in the
way -> invalid_path; nothing there (or /home/user missing) -> not_found; more
than `max_bytes` -> payload_too_large; the VM renaming the path's directories
while it is opened (openat2's EAGAIN, after retries) -> conflict. Every errno
the VM can cause is in `_ERRNO_CODES`: none is left to answer 500.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from arker._paths import check_path
from arker.engine import base
from arker.engine._openat2 import (
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_XDEV,
    openat2,
)
from arker.engine.base import FileInfo
from arker.errors import ArkerError, ErrorCode

__all__ = ["DEFAULT_MAX_FILE_BYTES", "FileWriter", "read_file", "write_file"]

DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
_IN_VM = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
_HOME_DEPTH = 2  # components of /home/user: only directories below it are created
# openat2 answers EAGAIN when a rename or mount anywhere raced a walk through
# "..": seconds to wait before each retry, then the caller gets a conflict.
_EAGAIN_BACKOFF_S = (0.0, 0.0005, 0.001, 0.002, 0.004, 0.008)

# What the VM can make the host's open/mkdir/rename of its files fail with, as
# the contract's code and a sentence ({} is the path). Anything else is a bug
# or the host's own failure, and stays a 500.
_ERRNO_CODES: dict[int, tuple[ErrorCode, str]] = {
    errno.ENOENT: (ErrorCode.NOT_FOUND, "no such file: {}"),
    errno.ENOTDIR: (ErrorCode.NOT_FOUND, "no such file: {} (a part of it is not a directory)"),
    errno.ELOOP: (ErrorCode.INVALID_PATH, "too many symlinks, or a symlink in the way: {}"),
    errno.EXDEV: (ErrorCode.INVALID_PATH, "{} crosses a mount point"),
    errno.ENAMETOOLONG: (ErrorCode.INVALID_PATH, "path is too long: {}"),
    errno.EISDIR: (ErrorCode.INVALID_PATH, "{} is a directory"),
    errno.ENOTEMPTY: (ErrorCode.INVALID_PATH, "{} is a directory"),
    errno.EBUSY: (ErrorCode.INVALID_PATH, "{} is a mount point or in use"),
    errno.EPERM: (ErrorCode.INVALID_PATH, "not permitted: {} (immutable or append-only?)"),
    errno.EACCES: (ErrorCode.INVALID_PATH, "permission denied: {}"),
    errno.EROFS: (ErrorCode.INVALID_PATH, "{} is on a read-only file system"),
    errno.EMLINK: (ErrorCode.INVALID_PATH, "too many links in the directory of {}"),
    errno.EFBIG: (ErrorCode.PAYLOAD_TOO_LARGE, "{} is too large for the VM's file system"),
    errno.EAGAIN: (ErrorCode.CONFLICT, "{}: the path changed while it was being opened; retry"),
    errno.ENOSPC: (ErrorCode.INSUFFICIENT_STORAGE, "the host's storage pool is full (writing {})"),
    errno.EDQUOT: (
        ErrorCode.INSUFFICIENT_STORAGE,
        "{}: the VM's disk quota is full (resources.disk_mib)",
    ),
}


def read_file(root: Path, path: str, max_bytes: int, *, anywhere: bool = False) -> bytes:
    """The bytes of the regular file `path` inside the VM rooted at `root`."""
    norm = check_path(path, anywhere=anywhere)
    with _open_dir(root) as root_fd, _mapped(norm):
        # O_PATH first: opening a FIFO or device for reading could block or
        # have side effects; only a regular file is then opened for real.
        ref = _resolve(root_fd, norm.lstrip("/"), os.O_PATH, norm)
        try:
            st = os.fstat(ref)
            if stat.S_ISDIR(st.st_mode):
                raise ArkerError(ErrorCode.INVALID_PATH, f"{norm} is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise ArkerError(ErrorCode.INVALID_PATH, f"{norm} is not a regular file")
            if st.st_size > max_bytes:
                raise _too_large(norm, max_bytes)
            fd = os.open(f"/proc/self/fd/{ref}", os.O_RDONLY | os.O_CLOEXEC)  # the same inode
        finally:
            os.close(ref)
    try:
        with _mapped(norm):
            return _read_all(fd, st.st_size, max_bytes, norm)
    finally:
        os.close(fd)


def write_file(
    root: Path,
    path: str,
    data: bytes,
    *,
    uid: int = 1000,
    gid: int = 1000,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    anywhere: bool = False,
) -> FileInfo:
    """Write `data` to `path` in the VM rooted at `root`, atomically (a temp
    file in the same directory, then rename), owned by uid:gid.

    Missing directories below /home/user are made (uid:gid, 0755). A file
    already there keeps its permission bits (setuid/setgid dropped); a new one
    gets 0644. If the final name is a symlink, the link itself is replaced,
    as a rename would; a directory there is invalid_path.
    """
    if len(data) > max_bytes:
        raise _too_large(check_path(path, anywhere=anywhere), max_bytes)
    writer = FileWriter(root, path, uid=uid, gid=gid, max_bytes=max_bytes, anywhere=anywhere)
    writer.write(data)
    return writer.commit()


class FileWriter(base.FileWriter):
    """A file written into the VM piece by piece, with write_file's rules:
    pieces go to a temp file next to the target as they come (so an upload
    need never be whole in memory), then commit() renames it over the name,
    or abort() removes it. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        root: Path,
        path: str,
        *,
        uid: int = 1000,
        gid: int = 1000,
        max_bytes: int = DEFAULT_MAX_FILE_BYTES,
        anywhere: bool = False,
    ) -> None:
        self._norm = norm = check_path(path, anywhere=anywhere)
        self._uid, self._gid, self._max_bytes = uid, gid, max_bytes
        self._size = 0
        self._hash = hashlib.sha256()
        self._fd: int | None = None
        parts = norm.strip("/").split("/")
        self._name = parts[-1]
        self._tmp = f".arker-write-{secrets.token_hex(8)}"
        with _open_dir(root) as root_fd, _mapped(norm):
            self._dir_fd: int | None = _parent_dir(root_fd, parts[:-1], uid, gid, norm)
        with self._failing():
            self._mode = _mode_for(self._dir_fd, self._name, norm)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(self._tmp, flags, 0o600, dir_fd=self._dir_fd)

    def write(self, data: bytes) -> None:
        with self._failing():
            if self._fd is None:
                raise ArkerError(ErrorCode.INTERNAL, f"write to {self._norm} after its end")
            if self._size + len(data) > self._max_bytes:
                raise _too_large(self._norm, self._max_bytes)
            # hashlib releases the GIL on large buffers: hash while the write runs.
            hashing = _Update(self._hash, data)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            finally:
                hashing.join()
            self._size += len(data)

    def commit(self) -> FileInfo:
        with self._failing():
            if self._fd is None or self._dir_fd is None:
                raise ArkerError(ErrorCode.INTERNAL, f"commit of {self._norm} after its end")
            os.fchown(self._fd, self._uid, self._gid)
            os.fchmod(self._fd, self._mode)
            fd, self._fd = self._fd, None
            os.close(fd)
            os.rename(self._tmp, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            self._close_dir()
        return FileInfo(path=self._norm, size=self._size, sha256=self._hash.hexdigest())

    def abort(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
            if self._dir_fd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._tmp, dir_fd=self._dir_fd)
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dir_fd is not None:
            fd, self._dir_fd = self._dir_fd, None
            os.close(fd)

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """Any failure removes the temp file and maps the OS error to the contract's."""
        try:
            yield
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                mapped = _error_for(exc, self._norm)
                if mapped is not None:
                    raise mapped from exc
            raise


def _read_all(fd: int, size: int, max_bytes: int, norm: str) -> bytes:
    # One read of size+1 usually returns the whole file and proves EOF on the
    # next call: one allocation, no joins. A file growing meanwhile is still
    # bounded by max_bytes.
    parts: list[bytes] = []
    total = 0
    while True:
        want = min(max(size - total + 1, 1 << 16), max_bytes + 1 - total)
        chunk = os.read(fd, want)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(norm, max_bytes)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _parent_dir(root_fd: int, dirs: list[str], uid: int, gid: int, norm: str) -> int:
    """An O_PATH fd of the directory that will hold the file, making the
    missing directories below /home/user one at a time."""
    try:
        return _resolve(root_fd, "/".join(dirs), os.O_PATH | os.O_DIRECTORY, norm)
    except ArkerError as exc:
        if exc.code != ErrorCode.NOT_FOUND:
            raise
    fd = os.dup(root_fd)
    try:
        for depth, name in enumerate(dirs, start=1):
            prefix = "/".join(dirs[:depth])
            try:
                nxt = _resolve(root_fd, prefix, os.O_PATH | os.O_DIRECTORY, norm)
            except ArkerError as exc:
                if exc.code != ErrorCode.NOT_FOUND or depth <= _HOME_DEPTH:
                    raise
                _mkdir_owned(fd, name, uid, gid)
                # Resolve again from the root: whatever is there now is judged
                # by the same in-VM rules, even if the VM raced us.
                nxt = _resolve(root_fd, prefix, os.O_PATH | os.O_DIRECTORY, norm)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _mkdir_owned(parent_fd: int, name: str, uid: int, gid: int) -> None:
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        return  # made meanwhile (by the VM): leave it as it is
    fd = os.open(
        name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd
    )
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o755)  # after chown, and regardless of the umask
    finally:
        os.close(fd)


def _mode_for(dir_fd: int, name: str, norm: str) -> int:
    """The permission bits the file will get: those of a regular file already
    there (setuid/setgid dropped), else 0644; a directory there is invalid."""
    try:
        old = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return 0o644
    if stat.S_ISDIR(old.st_mode):
        raise ArkerError(ErrorCode.INVALID_PATH, f"{norm} is a directory")
    return old.st_mode & 0o777 if stat.S_ISREG(old.st_mode) else 0o644


class _Update:
    """hasher.update(data), in a thread when `data` is big enough to matter;
    join() before the hasher is used again."""

    def __init__(self, hasher: hashlib._Hash, data: bytes) -> None:
        self._thread: threading.Thread | None = None
        if len(data) >= 1 << 20:
            self._thread = threading.Thread(
                target=hasher.update, args=(data,), name="arker-sha256", daemon=True
            )
            self._thread.start()
        else:
            hasher.update(data)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


# openat2's RESOLVE_IN_ROOT answers EAGAIN when a rename or mount in the VM
# raced the walk (the kernel cannot prove the result stayed inside the root).
# A VM swapping a directory for a symlink in a loop can cause it every time:
# _EAGAIN_BACKOFF_S bounds the retries.


def _resolve(root_fd: int, rel: str, flags: int, norm: str) -> int:
    for wait_s in (*_EAGAIN_BACKOFF_S, None):
        try:
            return openat2(root_fd, rel, flags, _IN_VM)
        except OSError as exc:
            if exc.errno == errno.EAGAIN and wait_s is not None:
                time.sleep(wait_s)  # a racing rename: the walk is safe to try again
                continue
            mapped = _error_for(exc, norm)
            if mapped is None:
                raise
            raise mapped from None
    raise AssertionError("unreachable: the last try returns or raises")


def _error_for(exc: OSError, norm: str) -> ArkerError | None:
    known = _ERRNO_CODES.get(exc.errno or 0)
    if known is None:
        return None
    code, sentence = known
    return ArkerError(code, sentence.format(norm))


@contextlib.contextmanager
def _mapped(norm: str) -> Iterator[None]:
    """OS errors the VM can cause, as the contract's; others propagate."""
    try:
        yield
    except OSError as exc:
        mapped = _error_for(exc, norm)
        if mapped is None:
            raise
        raise mapped from exc


@contextlib.contextmanager
def _open_dir(root: Path) -> Iterator[int]:
    try:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ArkerError(ErrorCode.NOT_FOUND, f"no VM root at {root}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _too_large(norm: str, max_bytes: int) -> ArkerError:
    return ArkerError(ErrorCode.PAYLOAD_TOO_LARGE, f"{norm} is larger than {max_bytes} bytes")
