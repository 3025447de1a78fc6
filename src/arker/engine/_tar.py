"""Import a rootfs tarball as a golden, refusing anything that could touch the host.

Extraction is by directory fds, never by host paths: every member's parent is
opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so no member can
land outside the staging subvolume or be written through a symlink the archive
made earlier. Symlinks are created as they are (absolute targets are fine:
they resolve inside the VM later) and never followed here.

The whole import fails (ArkerError invalid_request naming the member) on:
an absolute name, a `..` component, a parent that is a symlink or not a
directory, a hard link to a name outside the archive or not yet extracted, a
device node (character or block) or FIFO outside `dev/`, or any other special
type. Device nodes and FIFOs under `dev/` (as mmdebstrap and docker export
write them) are not created either, but skipped: a VM gets a fresh /dev of its
own at start, so they would be dead weight; the count is reported as progress.
Modes (setuid included) and numeric ownership are kept; extended attributes
are not.

`Rules` makes the same extractor strict enough for archives a user PUTs into
a VM's directory (archive.py): every member owned by one uid, no setuid or
setgid, symlinks only to names inside the target, no special member anywhere,
and bounds on members, depth and bytes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from arker.engine._openat2 import (
    RESOLVE_BENEATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_NO_XDEV,
    openat2,
)
from arker.engine.base import GoldenInfo, Progress
from arker.engine.pool import Pool, check_name
from arker.errors import ArkerError, ErrorCode

__all__ = ["ROOTFS", "Rules", "Tar", "import_tarball", "tar_stream"]

_STRICT = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


_Position = Callable[[], int]


class _Refused(Exception):
    pass


@dataclass(frozen=True)
class Rules:
    """What an extraction accepts. The default is a root filesystem's."""

    owner: tuple[int, int] | None = None  # uid, gid of everything; None: the archive's
    contained: bool = False  # links stay inside, no special members at all
    max_members: int | None = None
    max_depth: int | None = None  # components of a member's name
    max_bytes: int | None = None  # of file data in all


ROOTFS = Rules()


def import_tarball(
    pool: Pool,
    name: str,
    tarball: Path,
    progress: Progress | None = None,
    description: str | None = None,
    *,
    require_shell: bool = False,
) -> GoldenInfo:
    """Import a rootfs tarball (.tar, .tar.gz/.tgz, .tar.zst; also .xz, .bz2,
    detected by content) as the golden `name`. Progress counts bytes read of
    the (compressed) file. With `require_shell`, a tree without /bin/sh (as
    the VM resolves it) is not a root filesystem: invalid_request, nothing kept."""
    check_name(name, "golden name")
    tarball = Path(tarball)
    try:
        total = tarball.stat().st_size
    except FileNotFoundError:
        raise ArkerError(ErrorCode.NOT_FOUND, f"no tarball at {tarball}") from None
    if pool.has_golden(name):
        raise ArkerError(ErrorCode.CONFLICT, f"golden {name!r} already exists")
    staging = pool.new_golden(name)
    try:
        try:
            with tar_stream(tarball) as (tar, position):
                _Extractor(staging, tar, position, total, progress).run()
        except (tarfile.TarError, EOFError) as exc:
            raise ArkerError(
                ErrorCode.INVALID_REQUEST, f"not a readable tar archive: {exc}"
            ) from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ArkerError(ErrorCode.UNAVAILABLE, "the storage pool is full") from exc
            raise
        if require_shell:
            _check_shell(staging)
        return pool.seal_golden(staging, name, description or f"imported from {tarball.name}")
    except BaseException:
        pool.abandon_golden(staging)
        raise


def _check_shell(root: Path) -> None:
    """/bin/sh resolved with `root` as "/" (an absolute link stays inside),
    to something that can be executed."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = openat2(root_fd, "bin/sh", os.O_PATH | os.O_CLOEXEC, RESOLVE_IN_ROOT)
    except OSError:
        fd = None
    finally:
        os.close(root_fd)
    if fd is not None:
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return
    raise ArkerError(
        ErrorCode.INVALID_REQUEST,
        "the tarball is not a root filesystem: it has no executable /bin/sh",
    )


@contextlib.contextmanager
def tar_stream(tarball: Path) -> Iterator[tuple[tarfile.TarFile, _Position]]:
    """The tar in the file (plain, or compressed as its first bytes say), and
    how far into the file it has been read."""
    with open(tarball, "rb", buffering=0) as f:
        magic = f.read(4)
        f.seek(0)

        # Position of the shared file description: for zstd it is the child's
        # read offset, which is exactly "bytes of the compressed file read".
        def position() -> int:
            return os.lseek(f.fileno(), 0, os.SEEK_CUR)

        if magic != _ZSTD_MAGIC:
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                yield tar, position
            return
        proc = subprocess.Popen(
            ["zstd", "-dcq"], stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                yield tar, position
            while proc.stdout.read(_CHUNK):  # the padding after the end marker
                pass
            rc = proc.wait()
            err = proc.stderr.read().decode(errors="replace").strip()
        except BaseException:
            proc.kill()  # our own child, by pid
            proc.wait()
            raise
        finally:
            proc.stdout.close()
            proc.stderr.close()
        if rc != 0:
            raise ArkerError(ErrorCode.INVALID_REQUEST, f"zstd could not decompress: {err}")


class Tar:
    """Extract a tar stream into a directory given by its fd, under `rules`;
    `run` returns (members extracted, bytes of file data)."""

    def __init__(
        self,
        tar: tarfile.TarFile,
        rules: Rules = ROOTFS,
        position: Callable[[], int] = lambda: 0,
        total: int = 0,
        progress: Progress | None = None,
    ) -> None:
        self.tar = tar
        self.rules = rules
        self.position = position
        self.total = total
        self.progress = progress
        self.dir_times: list[tuple[list[str], float]] = []
        self.skipped_dev_nodes = 0
        self.members = 0
        self.bytes = 0

    def run(self, root_fd: int) -> tuple[int, int]:
        last = 0.0
        for member in self.tar:
            try:
                self._check(member)
            except _Refused as why:
                raise ArkerError(
                    ErrorCode.INVALID_REQUEST, f"refusing tar member {member.name!r}: {why}"
                ) from None
            self._one(root_fd, member)
            now = time.monotonic()
            if self.progress is not None and now - last > 0.2:
                last = now
                self.progress(self.position(), self.total, f"extracting {member.name}")
        for parts, mtime in reversed(self.dir_times):  # children first, parents last
            with self._parent(root_fd, parts[:-1], create=False) as parent:
                os.utime(parts[-1], (mtime, mtime), dir_fd=parent, follow_symlinks=False)
        if self.progress is not None:
            skipped = self.skipped_dev_nodes
            note = f" (skipped {skipped} dev/ nodes)" if skipped else ""
            self.progress(self.total, self.total, f"extracted{note}")
        return self.members, self.bytes

    def _check(self, m: tarfile.TarInfo) -> None:
        """The rules' bounds and containment, before the member is touched."""
        r = self.rules
        self.members += 1
        if r.max_members is not None and self.members > r.max_members:
            raise _Refused(f"the archive has more than {r.max_members} members")
        if m.isreg():
            self.bytes += m.size
            if r.max_bytes is not None and self.bytes > r.max_bytes:
                raise _Refused(f"the archive holds more than {r.max_bytes} bytes of files")
        parts = _parts(m.name)
        if r.max_depth is not None and len(parts) > r.max_depth:
            raise _Refused(f"nested deeper than {r.max_depth} directories")
        if not r.contained:
            return
        if m.ischr() or m.isblk():
            raise _Refused("device nodes are not allowed")
        if m.isfifo():
            raise _Refused("FIFOs are not allowed")
        if m.issym():
            if m.linkname.startswith("/"):
                raise _Refused(f"a symlink to the absolute path {m.linkname!r}")
            joined = posixpath.normpath(posixpath.join("/".join(parts[:-1]), m.linkname))
            if joined == ".." or joined.startswith("../") or not m.linkname:
                raise _Refused(f"a symlink to {m.linkname!r}, outside the archive")

    def _one(self, root_fd: int, member: tarfile.TarInfo) -> None:
        try:
            self._member(root_fd, member)
        except _Refused as why:
            raise ArkerError(
                ErrorCode.INVALID_REQUEST, f"refusing tar member {member.name!r}: {why}"
            ) from None
        except OSError as exc:  # e.g. a hard link to a directory, a name too long
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise ArkerError(
                ErrorCode.INVALID_REQUEST,
                f"cannot extract tar member {member.name!r}: {exc.strerror}",
            ) from exc

    def _member(self, root_fd: int, m: tarfile.TarInfo) -> None:
        parts = _parts(m.name)
        special = m.ischr() or m.isblk() or m.isfifo()
        if special and parts[:1] == ["dev"] and not self.rules.contained:
            self.skipped_dev_nodes += 1
            return
        if m.ischr() or m.isblk():
            raise _Refused("device nodes are not allowed")
        if m.isfifo():
            raise _Refused("FIFOs are not allowed")
        if not parts:  # "./": the root directory itself
            if m.isdir():
                fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
                try:
                    self._own(fd, m)
                finally:
                    os.close(fd)
                return
            raise _Refused("names the root but is not a directory")
        name = parts[-1]
        with self._parent(root_fd, parts[:-1], create=True) as parent:
            self._clear(parent, name, m)
            if m.isdir():
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=parent)
                fd = _open_nofollow(parent, name, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    self._own(fd, m)
                finally:
                    os.close(fd)
                self.dir_times.append((parts, m.mtime))
            elif m.isreg():
                self._file(parent, name, m)
            elif m.issym():
                os.symlink(m.linkname, name, dir_fd=parent)
                uid, gid = self.rules.owner or (m.uid, m.gid)
                os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
                os.utime(name, (m.mtime, m.mtime), dir_fd=parent, follow_symlinks=False)
            elif m.islnk():
                target = _parts(m.linkname, "hard link target")
                if not target:
                    raise _Refused("hard link to the root")
                with self._parent(root_fd, target[:-1], create=False) as tparent:
                    try:
                        os.link(
                            target[-1], name, src_dir_fd=tparent, dst_dir_fd=parent,
                            follow_symlinks=False,
                        )  # fmt: skip
                    except FileNotFoundError:
                        raise _Refused(f"hard link to {m.linkname!r}, not in the archive") from None
            else:
                raise _Refused(f"unsupported member type {m.type!r}")

    def _own(self, fd: int, m: tarfile.TarInfo) -> None:
        _own(fd, m, self.rules.owner)

    def _file(self, parent: int, name: str, m: tarfile.TarInfo) -> None:
        src = self.tar.extractfile(m)
        if src is None:
            raise _Refused("no data")
        fd = _open_nofollow(parent, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            while chunk := src.read(_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            self._own(fd, m)
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)

    def _clear(self, parent: int, name: str, m: tarfile.TarInfo) -> None:
        """A later member replaces an earlier one of the same name, as tar does,
        except that a directory is only ever replaced by a directory."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if not m.isdir():
                raise _Refused("would replace a directory")
        else:
            os.unlink(name, dir_fd=parent)

    @contextlib.contextmanager
    def _parent(self, root_fd: int, dirs: list[str], *, create: bool) -> Iterator[int]:
        """An O_PATH fd of root/dirs, never through a symlink; missing
        directories are made (root-owned, 0755) when `create`."""
        fd = os.dup(root_fd)
        try:
            for d in dirs:
                try:
                    nxt = openat2(fd, d, os.O_PATH | os.O_DIRECTORY, _STRICT)
                except FileNotFoundError:
                    if not create:
                        raise _Refused(f"{d!r} is not in the archive") from None
                    try:
                        os.mkdir(d, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                    else:
                        if self.rules.owner is not None:
                            os.chown(d, *self.rules.owner, dir_fd=fd, follow_symlinks=False)
                    nxt = openat2(fd, d, os.O_PATH | os.O_DIRECTORY, _STRICT)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise _Refused(f"its path goes through the symlink {d!r}") from None
                    if exc.errno == errno.ENOTDIR:
                        raise _Refused(f"its path goes through {d!r}, not a directory") from None
                    raise
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)


class _Extractor(Tar):
    """A golden's rootfs, from its staging subvolume's path."""

    def __init__(
        self,
        root: Path,
        tar: tarfile.TarFile,
        position: Callable[[], int],
        total: int,
        progress: Progress | None,
    ) -> None:
        super().__init__(tar, ROOTFS, position, total, progress)
        self.root = root

    def run(self, root_fd: int | None = None) -> tuple[int, int]:
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return super().run(fd)
        finally:
            os.close(fd)


def _parts(name: str, what: str = "path") -> list[str]:
    if name.startswith("/"):
        raise _Refused(f"absolute {what}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Refused(f"'..' in its {what}")
    return parts


def _open_nofollow(parent: int, name: str, flags: int, mode: int = 0o777) -> int:
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _Refused("a symlink is in the way") from None
        raise


def _own(fd: int, m: tarfile.TarInfo, owner: tuple[int, int] | None) -> None:
    if owner is None:
        os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode & 0o7777)  # after chown, which clears setuid bits
    else:
        os.fchown(fd, *owner)
        os.fchmod(fd, m.mode & 0o1777)  # no setuid or setgid in a user's files
