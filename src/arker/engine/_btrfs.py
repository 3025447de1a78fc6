"""The kernel side of the pool: the few btrfs ioctls it needs, called directly
(no subprocess per fork), and the loop-mounted image used where the data
directory is not btrfs.

Layouts follow include/uapi/linux/btrfs.h:

    struct btrfs_ioctl_vol_args    { __s64 fd; char name[4088]; }            4096 bytes
    struct btrfs_ioctl_vol_args_v2 { __s64 fd; __u64 transid; __u64 flags;
                                     __u64 unused[4]; char name[4040]; }     4096 bytes
    struct btrfs_ioctl_ino_lookup_args { __u64 treeid; __u64 objectid;
                                         char name[4080]; }                  4096 bytes

Every function raises OSError with the kernel's errno; the pool translates.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "BTRFS_SUPER_MAGIC",
    "LoopImage",
    "FIRST_FREE_OBJECTID",
    "create_subvolume",
    "destroy_subvolume",
    "destroy_tree",
    "enable_simple_quota",
    "fsid",
    "remove_qgroup",
    "set_qgroup_limit",
    "fs_type",
    "host_safe",
    "is_readonly",
    "rename_exchange",
    "rename_noreplace",
    "set_readonly",
    "snapshot",
    "subvolume_id",
    "syncfs",
    "unmount_under",
]

BTRFS_SUPER_MAGIC = 0x9123683E
# The inode number of every subvolume's root directory.
FIRST_FREE_OBJECTID = 256

log = logging.getLogger(__name__)

_MAGIC = 0x94
_IOC_WRITE, _IOC_READ = 1, 2
_ARGS_SIZE = 4096
_SUBVOL_NAME_MAX = 4039  # v2 name field is 4040 bytes with its NUL
_PATH_NAME_MAX = 4087  # v1 name field is 4088 bytes with its NUL
SUBVOL_RDONLY = 1 << 1


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_MAGIC << 8) | nr


_IOC_SUBVOL_CREATE = _ioc(_IOC_WRITE, 14, _ARGS_SIZE)
_IOC_SNAP_DESTROY = _ioc(_IOC_WRITE, 15, _ARGS_SIZE)
_IOC_INO_LOOKUP = _ioc(_IOC_READ | _IOC_WRITE, 18, _ARGS_SIZE)
_IOC_SNAP_CREATE_V2 = _ioc(_IOC_WRITE, 23, _ARGS_SIZE)
_IOC_SUBVOL_GETFLAGS = _ioc(_IOC_READ, 25, 8)
_IOC_SUBVOL_SETFLAGS = _ioc(_IOC_WRITE, 26, 8)
_IOC_QUOTA_CTL = _ioc(_IOC_READ | _IOC_WRITE, 40, 16)
_IOC_QGROUP_CREATE = _ioc(_IOC_WRITE, 42, 16)
_IOC_QGROUP_LIMIT = _ioc(_IOC_READ, 43, 48)
_IOC_FS_INFO = _ioc(_IOC_READ, 31, 1024)

_QUOTA_CTL_ENABLE_SIMPLE = 4  # squota: extents charged to the subvolume that wrote them
_QGROUP_LIMIT_MAX_RFER = 1 << 0

_RENAME_NOREPLACE = 1 << 0
_RENAME_EXCHANGE = 1 << 1

_libc = ctypes.CDLL(None, use_errno=True)


def _name_bytes(name: str, limit: int) -> bytes:
    raw = os.fsencode(name)
    if not raw or b"/" in raw or b"\0" in raw or len(raw) > limit:
        raise OSError(22, f"bad subvolume name {name!r}")
    return raw


def _vol_args(name: str) -> bytearray:
    buf = bytearray(_ARGS_SIZE)
    raw = _name_bytes(name, _PATH_NAME_MAX)
    buf[8 : 8 + len(raw)] = raw
    return buf


def create_subvolume(parent_fd: int, name: str) -> None:
    """An empty, writable subvolume `name` in the directory `parent_fd`."""
    fcntl.ioctl(parent_fd, _IOC_SUBVOL_CREATE, _vol_args(name), True)


def snapshot(source_fd: int, parent_fd: int, name: str, *, readonly: bool = False) -> None:
    """Snapshot the subvolume open at `source_fd` as `name` in `parent_fd`.

    Constant time: the kernel shares the source's tree; only a transaction
    commit (which writes what is still dirty) stands between call and return.
    """
    buf = bytearray(_ARGS_SIZE)
    struct.pack_into("=qQQ", buf, 0, source_fd, 0, SUBVOL_RDONLY if readonly else 0)
    raw = _name_bytes(name, _SUBVOL_NAME_MAX)
    buf[56 : 56 + len(raw)] = raw  # after fd, transid, flags and unused[4]
    fcntl.ioctl(parent_fd, _IOC_SNAP_CREATE_V2, buf, True)


def destroy_subvolume(parent_fd: int, name: str) -> None:
    """Delete the subvolume `name` in `parent_fd` (ENOTEMPTY if it holds
    nested subvolumes). The space is freed later by the kernel's cleaner."""
    fcntl.ioctl(parent_fd, _IOC_SNAP_DESTROY, _vol_args(name), True)


def destroy_tree(parent_fd: int, path: Path, destroyed: list[int] | None = None) -> None:
    """Delete the subvolume `path` (whose directory is open as `parent_fd`),
    nested subvolumes first, whatever shape a VM gave it: subvolumes at any
    depth, directories nested past PATH_MAX, read-only snapshots, immutable or
    append-only directories. Works by fd (openat one component at a time),
    never by a full path. Missing is fine. EBUSY, after about a second of
    retries, means something still has it mounted. The ids of the subvolumes
    deleted are appended to `destroyed` (their qgroups may outlive them)."""
    name = path.name
    sid: int | None = None
    for attempt in range(20):
        try:
            if destroyed is not None and sid is None:
                with contextlib.suppress(OSError):
                    fd = os.open(name, _O_DIR, dir_fd=parent_fd)
                    try:
                        sid = subvolume_id(fd)
                    finally:
                        os.close(fd)
            destroy_subvolume(parent_fd, name)
            if destroyed is not None and sid is not None:
                destroyed.append(sid)
            return
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            if exc.errno in (errno.ENOTEMPTY, errno.EPERM):
                _unblock(parent_fd, name, destroyed)
                if exc.errno == errno.EPERM and attempt >= 2:
                    raise
            elif exc.errno == errno.EBUSY and attempt < 19:
                # Mounts in our namespace (a killed build's /proc) go now; one
                # that another namespace held may still be going away.
                if unmount_under(path) == 0:
                    time.sleep(0.05)
            else:
                raise


_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _unblock(parent_fd: int, name: str, destroyed: list[int] | None) -> None:
    """Make subvolume `name` in `parent_fd` deletable: writable, no immutable
    or append-only flag on it or its parent, and no nested subvolume left in
    it (those are deleted, depth first)."""
    clear_inode_flags(parent_fd)
    fd = os.open(name, _O_DIR, dir_fd=parent_fd)
    try:
        set_readonly(fd, False)  # entries of a read-only subvolume cannot be removed
        clear_inode_flags(fd)
        _destroy_nested(fd, destroyed)
    finally:
        os.close(fd)


def _destroy_nested(subvol_fd: int, destroyed: list[int] | None) -> None:
    """Delete every subvolume nested in the one open at `subvol_fd`. Walks
    directories holding only one fd at a time (down by openat, up by ".."),
    so neither PATH_MAX nor the fd limit bounds the depth; a nested subvolume
    is deleted by destroy_tree on its parent directory's fd."""
    fd = os.dup(subvol_fd)
    stack = [_subdirs(fd)]
    try:
        while stack:
            name = next(stack[-1], None)
            if name is None:
                stack.pop()
                if stack:
                    up = os.open("..", _O_DIR, dir_fd=fd)
                    os.close(fd)
                    fd = up
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_ino == FIRST_FREE_OBJECTID:  # a subvolume's root: delete it whole
                destroy_tree(fd, Path(name), destroyed)
                continue
            child = os.open(name, _O_DIR, dir_fd=fd)
            os.close(fd)
            fd = child
            stack.append(_subdirs(fd))
    finally:
        os.close(fd)


def _subdirs(fd: int) -> Iterator[str]:
    with os.scandir(fd) as it:
        names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
    return iter(names)


_FS_IOC_GETFLAGS = (2 << 30) | (8 << 16) | (ord("f") << 8) | 1
_FS_IOC_SETFLAGS = (1 << 30) | (8 << 16) | (ord("f") << 8) | 2
_FS_IMMUTABLE_FL = 0x10
_FS_APPEND_FL = 0x20


def clear_inode_flags(fd: int) -> None:
    """Clear the immutable and append-only flags (chattr -ia) of the inode
    open at `fd`; they forbid removing entries of a directory."""
    buf = bytearray(8)
    fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf, True)
    flags = struct.unpack("=q", buf)[0]
    if flags & (_FS_IMMUTABLE_FL | _FS_APPEND_FL):
        flags &= ~(_FS_IMMUTABLE_FL | _FS_APPEND_FL)
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, bytearray(struct.pack("=q", flags)), True)


def enable_simple_quota(fd: int) -> None:
    """Turn on simple quotas for the filesystem holding `fd` (idempotent:
    the kernel answers 0 when they are on already).

    struct btrfs_ioctl_quota_ctl_args { __u64 cmd; __u64 status; }
    """
    fcntl.ioctl(
        fd, _IOC_QUOTA_CTL, bytearray(struct.pack("=QQ", _QUOTA_CTL_ENABLE_SIMPLE, 0)), True
    )


def set_qgroup_limit(fd: int, subvol_id: int, max_bytes: int | None) -> None:
    """Limit what the level-0 qgroup of `subvol_id` may reference (None: no limit).

    struct btrfs_ioctl_qgroup_limit_args { __u64 qgroupid; struct btrfs_qgroup_limit
    { __u64 flags, max_rfer, max_excl, rsv_rfer, rsv_excl; } lim; }
    """
    flags = _QGROUP_LIMIT_MAX_RFER
    limit = (1 << 64) - 1 if max_bytes is None else max_bytes  # the kernel's "none"
    buf = bytearray(struct.pack("=QQQQQQ", subvol_id, flags, limit, 0, 0, 0))
    fcntl.ioctl(fd, _IOC_QGROUP_LIMIT, buf, True)


def remove_qgroup(fd: int, subvol_id: int) -> None:
    """Remove the level-0 qgroup of a deleted subvolume. EBUSY while the
    cleaner still holds some of its extents; ENOENT if the kernel already
    dropped it.

    struct btrfs_ioctl_qgroup_create_args { __u64 create; __u64 qgroupid; }
    """
    fcntl.ioctl(fd, _IOC_QGROUP_CREATE, bytearray(struct.pack("=QQ", 0, subvol_id)), True)


def fsid(fd: int) -> str:
    """The filesystem's UUID as sysfs names it (/sys/fs/btrfs/<fsid>).

    struct btrfs_ioctl_fs_info_args { __u64 max_id; __u64 num_devices;
    __u8 fsid[16]; ... } 1024 bytes
    """
    buf = bytearray(1024)
    fcntl.ioctl(fd, _IOC_FS_INFO, buf, True)
    raw = bytes(buf[16:32]).hex()
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def is_readonly(fd: int) -> bool:
    buf = bytearray(8)
    fcntl.ioctl(fd, _IOC_SUBVOL_GETFLAGS, buf, True)
    return bool(struct.unpack("=Q", buf)[0] & SUBVOL_RDONLY)


def set_readonly(fd: int, readonly: bool) -> None:
    buf = bytearray(8)
    fcntl.ioctl(fd, _IOC_SUBVOL_GETFLAGS, buf, True)
    flags = struct.unpack("=Q", buf)[0]
    flags = flags | SUBVOL_RDONLY if readonly else flags & ~SUBVOL_RDONLY
    fcntl.ioctl(fd, _IOC_SUBVOL_SETFLAGS, bytearray(struct.pack("=Q", flags)), True)


def subvolume_id(fd: int) -> int:
    """The subvolume's tree id. Ids only grow within a filesystem (they are
    never reused), so they order subvolumes by creation."""
    buf = bytearray(_ARGS_SIZE)
    struct.pack_into("=QQ", buf, 0, 0, FIRST_FREE_OBJECTID)
    fcntl.ioctl(fd, _IOC_INO_LOOKUP, buf, True)
    return int(struct.unpack_from("=Q", buf, 0)[0])


def syncfs(fd: int) -> None:
    """Write back the whole filesystem holding `fd` (btrfs: commit)."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _renameat2(dir_fd: int, old: str, new: str, flags: int) -> None:
    if _libc.renameat2(dir_fd, os.fsencode(old), dir_fd, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old, None, new)


def rename_noreplace(dir_fd: int, old: str, new: str) -> None:
    """Rename within one directory; EEXIST rather than replacing `new`."""
    _renameat2(dir_fd, old, new, _RENAME_NOREPLACE)


def move_noreplace(old_dir_fd: int, old: str, new_dir_fd: int, new: str) -> None:
    """Move `old` to another directory as `new`; EEXIST rather than replacing it."""
    if _libc.renameat2(old_dir_fd, os.fsencode(old), new_dir_fd, os.fsencode(new),
                       _RENAME_NOREPLACE) != 0:  # fmt: skip
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old, None, new)


def rename_exchange(dir_fd: int, a: str, b: str) -> None:
    """Swap two names in one directory atomically."""
    _renameat2(dir_fd, a, b, _RENAME_EXCHANGE)


class _StatFs(ctypes.Structure):
    # Only f_type is read; the rest of struct statfs (120 bytes on 64-bit) is room.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


def fs_type(path: str) -> int:
    """statfs(2) f_type: which filesystem `path` is on."""
    st = _StatFs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(st)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(st.f_type) & 0xFFFFFFFF


# nosuid,nodev: root in a VM (in its user namespace) makes files that are,
# on disk, setuid-root or device nodes; on the host they must be inert.
_POOL_OPTIONS = "noatime,discard=async,nosuid,nodev"


def host_safe(path: Path) -> bool:
    """Whether setuid bits and device nodes under `path` are inert on the host."""
    flags = os.statvfs(path).f_flag
    return bool(flags & os.ST_NOSUID) and bool(flags & os.ST_NODEV)


class LoopImage:
    """A sparse btrfs image file loop-mounted at a directory.

    `attach` makes the image on first use, and after a restart finds it again:
    already mounted there -> adopt that mount; a loop device still backed by
    the image -> reuse it. `detach` unmounts and frees the loop device, so
    nothing is left behind. Runs external tools (mkfs, losetup, mount) once
    per pool, never per fork.
    """

    def __init__(self, image: Path, mountpoint: Path) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.device: str | None = None

    def attach(self, size_bytes: int) -> None:
        self.mountpoint.mkdir(exist_ok=True)
        mounted = _mount_source(self.mountpoint)
        if mounted is not None:
            source, fstype = mounted
            if fstype != "btrfs":
                raise OSError(22, f"{self.mountpoint} is a {fstype} mount, not the pool")
            self.device = source
            if not host_safe(self.mountpoint):  # mounted by an older engine
                _run("mount", "-o", "remount,nosuid,nodev", str(self.mountpoint))
            return
        if not self.image.exists():
            self._make(size_bytes)
        device = _loop_for(self.image)
        attached_here = device is None
        if device is None:
            device = _run("losetup", "--find", "--show", str(self.image)).strip()
        try:
            _run("mount", "-t", "btrfs", "-o", _POOL_OPTIONS, device, str(self.mountpoint))
        except BaseException:
            if attached_here:
                _run("losetup", "-d", device)
            raise
        self.device = device

    def detach(self) -> None:
        if _mount_source(self.mountpoint) is not None:
            try:
                _run("umount", str(self.mountpoint))
            except OSError as exc:
                # Something still has a file open in the pool: detach the mount
                # from the tree now; the kernel finishes when the file closes.
                log.warning("pool busy at close, lazy unmount: %s", exc)
                _run("umount", "--lazy", str(self.mountpoint))
        device = self.device or _loop_for(self.image)
        self.device = None
        if device is None or not device.startswith("/dev/loop"):
            return
        backing = Path("/sys/block") / Path(device).name / "loop" / "backing_file"
        if backing.exists():
            try:
                _run("losetup", "-d", device)
            except OSError as exc:
                log.warning("losetup -d %s: %s", device, exc)
        for _ in range(100):  # the kernel releases the device asynchronously
            if not backing.exists():
                return
            time.sleep(0.02)
        log.warning("loop device %s still attached to %s", device, self.image)

    def _make(self, size_bytes: int) -> None:
        tmp = self.image.with_name(self.image.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size_bytes)  # sparse: takes no space until written
        finally:
            os.close(fd)
        try:
            # Single metadata copy: the image already lives on a host filesystem,
            # and one copy halves the metadata written by every snapshot commit.
            _run("mkfs.btrfs", "-q", "-m", "single", "-L", "arker-pool", str(tmp))
            os.rename(tmp, self.image)  # only a formatted image carries the final name
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(0, f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def _mount_source(mountpoint: Path) -> tuple[str, str] | None:
    """(source, fstype) of the topmost mount at `mountpoint`, or None."""
    want = os.path.realpath(mountpoint)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) > 4 and len(rfields) > 1 and _unescape(fields[4]) == want:
                found = (_unescape(rfields[1]), rfields[0])
    return found


def unmount_under(path: Path) -> int:
    """Lazily unmount every mount in this namespace at or below `path`
    (deepest first), e.g. what a killed mmdebstrap left in a staging golden.
    Returns how many there were."""
    top = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = _unescape(fields[4]) if len(fields) > 4 else ""
            if point == top or point.startswith(top + "/"):
                found.append(point)
    for point in sorted(found, key=len, reverse=True):
        _libc.umount2(os.fsencode(point), 2)  # MNT_DETACH; a failure shows as EBUSY later
    return len(found)


def _loop_for(image: Path) -> str | None:
    """A loop device already backed by `image`, if any."""
    want = os.path.realpath(image)
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip() == want:
                return f"/dev/{backing.parent.parent.name}"
        except OSError:
            continue
    return None
