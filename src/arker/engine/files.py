"""Read and write a VM's files from the host, as the VM would see them.

Every path is resolved by openat2(RESOLVE_IN_ROOT) against the VM's root
directory, so a symlink in the VM pointing at /etc/shadow reaches the VM's
/etc/shadow, and neither `..` nor an absolute or /proc-style link can leave the
VM. The VM need not be running: this works on its subvolume directly.

Errors: the path rule broken, a directory, a FIFO or device, or a mount in the
way -> invalid_path; nothing there (or /home/user missing) -> not_found; more
than `max_bytes` -> payload_too_large.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from arker._paths import check_path
from arker.engine._openat2 import (
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_XDEV,
    openat2,
)
from arker.engine.base import FileInfo
from arker.errors import ArkerError, ErrorCode

__all__ = ["DEFAULT_MAX_FILE_BYTES", "read_file", "write_file"]

DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
_IN_VM = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
_HOME_DEPTH = 2  # components of /home/user: only directories below it are created


def read_file(root: Path, path: str, max_bytes: int) -> bytes:
    """The bytes of the regular file `path` inside the VM rooted at `root`."""
    norm = check_path(path)
    with _open_dir(root) as root_fd:
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
) -> FileInfo:
    """Write `data` to `path` in the VM rooted at `root`, atomically (a temp
    file in the same directory, then rename), owned by uid:gid.

    Missing directories below /home/user are made (uid:gid, 0755). A file
    already there keeps its permission bits (setuid/setgid dropped); a new one
    gets 0644. If the final name is a symlink, the link itself is replaced,
    as a rename would; a directory there is invalid_path.
    """
    norm = check_path(path)
    if len(data) > max_bytes:
        raise _too_large(norm, max_bytes)
    parts = norm.strip("/").split("/")
    with _open_dir(root) as root_fd:
        dir_fd = _parent_dir(root_fd, parts[:-1], uid, gid, norm)
        try:
            digest = _replace_at(dir_fd, parts[-1], data, uid, gid, norm)
        finally:
            os.close(dir_fd)
    return FileInfo(path=norm, size=len(data), sha256=digest)


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


def _replace_at(dir_fd: int, name: str, data: bytes, uid: int, gid: int, norm: str) -> str:
    mode = 0o644
    try:
        old = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(old.st_mode):
            raise ArkerError(ErrorCode.INVALID_PATH, f"{norm} is a directory")
        if stat.S_ISREG(old.st_mode):
            mode = old.st_mode & 0o777
    tmp = f".arker-write-{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        # hashlib releases the GIL on large buffers: hash while the write runs.
        hasher = _Sha256(data)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        digest = hasher.hexdigest()
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        if isinstance(exc, IsADirectoryError):
            raise ArkerError(ErrorCode.INVALID_PATH, f"{norm} is a directory") from exc
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ArkerError(ErrorCode.UNAVAILABLE, "the VM's storage is full") from exc
        raise
    return digest


class _Sha256:
    """sha256 of `data`, computed in a thread when it is big enough to matter."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._digest: str | None = None
        self._thread: threading.Thread | None = None
        if len(data) >= 1 << 20:
            self._thread = threading.Thread(target=self._run, name="arker-sha256", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        self._digest = hashlib.sha256(self._data).hexdigest()

    def hexdigest(self) -> str:
        if self._thread is not None:
            self._thread.join()
        if self._digest is None:
            self._run()
        assert self._digest is not None
        return self._digest


def _resolve(root_fd: int, rel: str, flags: int, norm: str) -> int:
    try:
        return openat2(root_fd, rel, flags, _IN_VM)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ArkerError(ErrorCode.NOT_FOUND, f"no such file: {norm}") from None
        if exc.errno == errno.ELOOP:
            raise ArkerError(ErrorCode.INVALID_PATH, f"too many symlinks: {norm}") from None
        if exc.errno == errno.EXDEV:
            raise ArkerError(ErrorCode.INVALID_PATH, f"{norm} crosses a mount point") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise ArkerError(ErrorCode.INVALID_PATH, f"path is too long: {norm}") from None
        raise


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
