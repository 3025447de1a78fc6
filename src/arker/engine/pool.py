"""The storage pool: goldens, VMs and checkpoints as btrfs subvolumes.

    root/goldens/<name>                    read-only subvolume
    root/goldens/.staging-<name>-<rand>    a golden being built
    root/vms/<vm_id>                       writable subvolume (the VM's /)
    root/checkpoints/<vm_id>/<cp_id>       read-only snapshot of a VM
    root/meta/goldens/<name>.json          golden metadata (kept out of the rootfs)

Goldens and checkpoints may also arrive from another host (`btrfs receive`,
sendstream.py); one is whole only once read-only, and until then it is not listed.

A fork, a checkpoint and a restore are each one snapshot ioctl: constant time
whatever the VM holds. Where the data directory is not btrfs, the pool lives in
a sparse image `pool.img` loop-mounted at `pool/`. A background thread syncs
the pool every second, because a snapshot first commits unsynced writes and
that commit is the only part of a fork that grows with the VM.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from arker.engine import _btrfs, sendstream
from arker.engine.base import GoldenInfo
from arker.errors import ArkerError, ErrorCode

__all__ = ["Pool", "check_name"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_STAGING = ".staging-"
_RESTORE = ".restore-"
_DELETED = ".deleted-"  # a VM whose delete failed, waiting for a retry


def check_name(value: str, what: str) -> str:
    """Return `value` if it is safe as one path component, else raise
    ArkerError(invalid_request): letters, digits, `_.-`, not starting with `.`."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"invalid {what}: {value!r}")
    return value


class Pool:
    """One host's btrfs pool. Methods are safe to call from several threads."""

    def __init__(
        self,
        data_dir: Path,
        *,
        image_size_bytes: int = 64 * 2**30,
        flush_interval_s: float | None = 1.0,
        reserve_bytes: int = 0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.image_size_bytes = image_size_bytes
        self.flush_interval_s = flush_interval_s
        self.root = self.data_dir / "pool"
        self._loop: _btrfs.LoopImage | None = None
        self._lock_fd: int | None = None
        self._root_fd: int | None = None
        self._flusher: threading.Thread | None = None
        self._stop_flush = threading.Event()
        self.reserve_bytes = reserve_bytes
        self.quotas = False
        self._fsid: str | None = None
        self._free_cache: tuple[float, int] = (0.0, 0)
        # Qgroups of deleted subvolumes the kernel has not dropped itself:
        # removed once the cleaner freed their extents (the flusher retries).
        self._stale_qgroups: set[int] = set()
        self._stale_lock = threading.Lock()
        # (parent, name) of subvolumes a delete could not finish: logged, and
        # retried by the flusher, never silently leaked.
        self._pending: set[tuple[Path, str]] = set()
        self._receive_lock = threading.Lock()

    # -- lifecycle
    def open(self) -> None:
        """Find or make the pool, sweep what a crash left half-done, start the flusher."""
        if self._root_fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(
            self.data_dir / ".pool.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise ArkerError(
                ErrorCode.UNAVAILABLE, f"pool {self.data_dir} is in use by another process"
            ) from None
        self._lock_fd = lock_fd
        try:
            if _btrfs.fs_type(str(self.data_dir)) == _btrfs.BTRFS_SUPER_MAGIC:
                self.root = self.data_dir
            else:
                self.root = self.data_dir / "pool"
                self._loop = _btrfs.LoopImage(self.data_dir / "pool.img", self.root)
                self._loop.attach(self.image_size_bytes)
            for sub in ("goldens", "vms", "checkpoints", "meta/goldens"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._enable_quotas()
            self._sweep()
        except BaseException:
            self.close()
            raise
        if self.flush_interval_s:
            self.start_flusher(self.flush_interval_s)

    def close(self) -> None:
        """Stop the flusher, unmount and detach the image if this pool mounted
        it. Idempotent."""
        self.stop_flusher()
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None
        if self._loop is not None:
            self._loop.detach()
            self._loop = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Pool:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _enable_quotas(self) -> None:
        """Simple quotas (squota): an extent is charged to the subvolume that
        wrote it, so a fork costs its VM nothing for the blocks it shares, and
        a fork takes as long as without quotas (full qgroups: ~10x, they walk
        the shared tree). Idempotent on a pool that has them already."""
        fd = self._fd()
        try:
            _btrfs.enable_simple_quota(fd)
            self._fsid = _btrfs.fsid(fd)
            self.quotas = True
        except OSError as exc:
            log.warning("btrfs simple quotas unavailable, VM disk limits off: %s", exc)

    # -- storage
    def free_bytes(self) -> int:
        """Bytes that can still be written to the pool: the btrfs free space,
        and where the pool is a sparse image, no more than the host filesystem
        under it has. Cached for a second (two statvfs calls, ~µs)."""
        now = time.monotonic()
        at, free = self._free_cache
        if now - at < 1.0:
            return free
        st = os.statvfs(self._fd())
        free = st.f_bavail * st.f_frsize
        if self._loop is not None:
            host = os.statvfs(self.data_dir)
            free = min(free, host.f_bavail * host.f_frsize)
        self._free_cache = (now, free)
        return free

    def check_storage(self) -> None:
        """Raise insufficient_storage once free space is below the reserve."""
        if not self.reserve_bytes:
            return
        free = self.free_bytes()
        if free < self.reserve_bytes:
            raise ArkerError(
                ErrorCode.INSUFFICIENT_STORAGE,
                f"the storage pool has {free // 2**20} MiB free, below its reserve of "
                f"{self.reserve_bytes // 2**20} MiB",
            )

    def vm_disk_usage_file(self, vm_id: str) -> Path | None:
        """The sysfs file holding the bytes charged to the VM's quota (squota
        charges each extent to its writer: referenced == exclusive), or None
        without quotas."""
        if not self.quotas or self._fsid is None:
            return None
        with _dir_fd(self.vm_path(vm_id)) as fd:
            sid = _btrfs.subvolume_id(fd)
        return Path(f"/sys/fs/btrfs/{self._fsid}/qgroups/0_{sid}/referenced")

    def set_vm_disk_limit(self, vm_id: str, limit_bytes: int | None) -> None:
        """Cap what the VM may write (None: no cap). Past it, writes inside
        the VM fail with EDQUOT."""
        if not self.quotas:
            return
        with _dir_fd(self.vm_path(vm_id)) as fd:
            _btrfs.set_qgroup_limit(self._fd(), _btrfs.subvolume_id(fd), limit_bytes)

    def sync(self) -> None:
        """Commit everything written to the pool (syncfs)."""
        _btrfs.syncfs(self._fd())

    def start_flusher(self, interval_s: float = 1.0) -> None:
        """Sync the pool every `interval_s` in a daemon thread, so that forks
        find little dirty data to commit."""
        if self._flusher is not None:
            return
        self._stop_flush.clear()
        self._flusher = threading.Thread(
            target=self._flush_loop, args=(interval_s,), name="arker-pool-flusher", daemon=True
        )
        self._flusher.start()

    def stop_flusher(self) -> None:
        """Stop the flusher thread (waits for a sync in progress)."""
        if self._flusher is None:
            return
        self._stop_flush.set()
        self._flusher.join()
        self._flusher = None

    def _flush_loop(self, interval_s: float) -> None:
        while not self._stop_flush.wait(interval_s):
            try:
                self.sync()
                self.drop_stale_qgroups()
                self.retry_deletes()
            except (OSError, ArkerError) as exc:  # keep flushing; a failure here is not fatal
                log.warning("pool flush failed: %s", exc)

    def delete_pending(self) -> int:
        """How many deletes failed and wait to be retried."""
        with self._stale_lock:
            return len(self._pending)

    def retry_deletes(self) -> int:
        """Try the failed deletes again; return how many still fail."""
        with self._stale_lock:
            pending = sorted(self._pending)
        for parent, name in pending:
            try:
                self._destroy(parent, name)
            except (OSError, ArkerError) as exc:
                log.warning("delete of %s/%s still fails: %s", parent.name, name, exc)
                continue
            with self._stale_lock:
                self._pending.discard((parent, name))
        return self.delete_pending()

    def drop_stale_qgroups(self) -> int:
        """Remove the qgroups of deleted subvolumes whose extents the cleaner
        has freed; return how many still wait."""
        with self._stale_lock:
            for sid in sorted(self._stale_qgroups):
                try:
                    _btrfs.remove_qgroup(self._fd(), sid)
                except OSError as exc:
                    if exc.errno == errno.EBUSY:  # still charged: the cleaner is not done
                        continue
                    if exc.errno != errno.ENOENT:
                        log.warning("cannot remove qgroup 0/%d: %s", sid, exc)
                self._stale_qgroups.discard(sid)
            return len(self._stale_qgroups)

    # -- paths
    def golden_path(self, name: str) -> Path:
        """Where the golden `name` is (or would be); validates the name."""
        return self.root / "goldens" / check_name(name, "golden name")

    def vm_path(self, vm_id: str) -> Path:
        """The VM's root directory (its subvolume); validates the id."""
        return self.root / "vms" / check_name(vm_id, "vm id")

    def _checkpoint_dir(self, vm_id: str) -> Path:
        return self.root / "checkpoints" / check_name(vm_id, "vm id")

    def _meta_path(self, name: str) -> Path:
        return self.root / "meta" / "goldens" / f"{check_name(name, 'golden name')}.json"

    # -- goldens
    def goldens(self) -> list[GoldenInfo]:
        """Every sealed golden, by name."""
        names = sorted(n for n in os.listdir(self.root / "goldens") if not n.startswith("."))
        return [self._golden_info(n) for n in names if self.has_golden(n)]

    def has_golden(self, name: str) -> bool:
        """Whether a sealed golden `name` exists."""
        return self._sealed(self.golden_path(name))

    def _sealed(self, path: Path) -> bool:
        """A read-only subvolume at `path` (a golden or checkpoint that is whole)."""
        try:
            with _dir_fd(path) as fd:
                return _btrfs.is_readonly(fd)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def _golden_info(self, name: str) -> GoldenInfo:
        try:
            meta = json.loads(self._meta_path(name).read_text())
            return GoldenInfo(name, meta.get("description"), float(meta["created_at"]))
        except (OSError, ValueError, KeyError):
            # Sealed but its metadata never written (crash between the two): still usable.
            st = os.stat(self.golden_path(name))
            return GoldenInfo(name, None, st.st_mtime)

    def new_golden(self, name: str) -> Path:
        """A fresh writable subvolume to build the golden `name` in; seal or abandon it."""
        check_name(name, "golden name")
        staging = f"{_STAGING}{name}-{secrets.token_hex(4)}"
        with _dir_fd(self.root / "goldens") as parent:
            _btrfs.create_subvolume(parent, staging)
        path = self.root / "goldens" / staging
        os.chmod(path, 0o755)
        return path

    def seal_golden(self, staging: Path, name: str, description: str | None) -> GoldenInfo:
        """Make `staging` read-only and publish it as `name` (conflict if taken)."""
        check_name(name, "golden name")
        staging = self._staging(staging)
        with _dir_fd(staging) as fd:
            _btrfs.set_readonly(fd, True)
        with _dir_fd(self.root / "goldens") as parent:
            try:
                _btrfs.rename_noreplace(parent, staging.name, name)
            except FileExistsError:
                raise ArkerError(ErrorCode.CONFLICT, f"golden {name!r} already exists") from None
        return self._write_golden_meta(name, description)

    def _write_golden_meta(self, name: str, description: str | None) -> GoldenInfo:
        info = GoldenInfo(name, description, time.time())
        meta = self._meta_path(name)
        tmp = meta.with_name(f".{meta.name}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps({"description": description, "created_at": info.created_at}))
        os.replace(tmp, meta)
        return info

    def publish_golden(self, vm_id: str, name: str, description: str | None) -> GoldenInfo:
        """A read-only snapshot of the VM as it is now, published as the golden
        `name` in constant time (conflict if taken). The VM keeps running."""
        dest = self.golden_path(name)
        vm_fd = _open_or_404(self.vm_path(vm_id), f"vm {vm_id!r}")
        try:
            with _dir_fd(dest.parent) as parent:
                _snapshot(vm_fd, parent, name, readonly=True, what=f"golden {name!r}")
        finally:
            os.close(vm_fd)
        return self._write_golden_meta(name, description)

    def abandon_golden(self, staging: Path) -> None:
        """Throw away a staging subvolume (missing is fine)."""
        staging = self._staging(staging)
        self._destroy(self.root / "goldens", staging.name)

    def delete_golden(self, name: str) -> None:
        """Delete a golden; VMs forked from it keep their files. Missing is fine."""
        self._destroy(self.root / "goldens", check_name(name, "golden name"))
        self._meta_path(name).unlink(missing_ok=True)

    def _staging(self, staging: Path) -> Path:
        staging = Path(staging)
        if staging.parent != self.root / "goldens" or not staging.name.startswith(_STAGING):
            raise ArkerError(ErrorCode.INVALID_REQUEST, f"not a staging golden: {staging}")
        return staging

    # -- VMs
    def fork(self, source: str, vm_id: str, *, disk_bytes: int | None = None) -> Path:
        """Make vm_id a writable snapshot of `source` (a golden name, else a VM
        id), that may write `disk_bytes` of its own (None: no limit)."""
        check_name(source, "source")
        try:
            src_fd = os.open(self.golden_path(source), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if not _btrfs.is_readonly(src_fd):  # still arriving from another host
                os.close(src_fd)
                raise ArkerError(ErrorCode.NOT_FOUND, f"golden {source!r} is still arriving")
        except FileNotFoundError:
            try:
                src_fd = os.open(self.vm_path(source), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise ArkerError(ErrorCode.NOT_FOUND, f"no golden or vm {source!r}") from None
        return self._fork_fd(src_fd, vm_id, disk_bytes)

    def fork_checkpoint(self, vm_id: str, checkpoint_id: str, *, disk_bytes: int | None) -> Path:
        """Make vm_id a writable snapshot of its own checkpoint (one received
        from another host: snapshotting keeps the received chain intact, where
        making the received subvolume writable would break it)."""
        path = self.checkpoint_path(vm_id, checkpoint_id)
        if not self._sealed(path):  # missing, or still arriving
            raise ArkerError(ErrorCode.NOT_FOUND, f"no checkpoint {checkpoint_id!r} of {vm_id!r}")
        return self._fork_fd(_open_or_404(path, f"checkpoint {checkpoint_id!r}"), vm_id, disk_bytes)

    def _fork_fd(self, src_fd: int, vm_id: str, disk_bytes: int | None) -> Path:
        """Snapshot the open `src_fd` as vm_id (closes `src_fd`)."""
        try:
            dest = self.vm_path(vm_id)
            with _dir_fd(dest.parent) as parent:
                _snapshot(src_fd, parent, vm_id, readonly=False, what=f"vm {vm_id!r}")
        finally:
            os.close(src_fd)
        if disk_bytes is not None:
            try:
                self.set_vm_disk_limit(vm_id, disk_bytes)
            except BaseException:
                self._destroy(dest.parent, vm_id)
                raise
        return dest

    def delete_vm(self, vm_id: str) -> None:
        """Delete the VM's subvolume and its checkpoints; missing is fine.
        The caller stops the VM first (its mounts pin the subvolume)."""
        cp_dir = self._checkpoint_dir(vm_id)
        with contextlib.suppress(FileNotFoundError):
            for cp in os.listdir(cp_dir):  # half-received ones too, which are not listed
                self._destroy(cp_dir, cp)
        with contextlib.suppress(FileNotFoundError):
            cp_dir.rmdir()
        vms = self.root / "vms"
        try:
            self._destroy(vms, check_name(vm_id, "vm id"))
        except OSError as exc:
            # Out of the way first, so the id is free and the VM gone for
            # everyone; the flusher retries freeing its storage.
            log.error("cannot delete vm %s yet, will retry: %s", vm_id, exc)
            trash = f"{_DELETED}{vm_id}-{secrets.token_hex(4)}"
            try:
                with _dir_fd(vms) as parent:
                    _btrfs.rename_noreplace(parent, vm_id, trash)
            except OSError:
                trash = vm_id
            with self._stale_lock:
                self._pending.add((vms, trash))
        # The kernel drops a deleted subvolume's squota qgroup itself once the
        # cleaner has freed its extents; nothing lingers to remove here.

    def vm_ids(self) -> list[str]:
        """Every VM in the pool, sorted."""
        return sorted(n for n in os.listdir(self.root / "vms") if not n.startswith("."))

    # -- checkpoints
    def checkpoint(self, vm_id: str, checkpoint_id: str) -> None:
        """A read-only snapshot of the VM as it is now, in constant time."""
        check_name(checkpoint_id, "checkpoint id")
        cp_dir = self._checkpoint_dir(vm_id)
        vm_fd = _open_or_404(self.vm_path(vm_id), f"vm {vm_id!r}")
        try:
            cp_dir.mkdir(exist_ok=True)
            with _dir_fd(cp_dir) as parent:
                _snapshot(
                    vm_fd,
                    parent,
                    checkpoint_id,
                    readonly=True,
                    what=f"checkpoint {checkpoint_id!r}",
                )
        finally:
            os.close(vm_fd)

    def checkpoints(self, vm_id: str) -> list[str]:
        """The VM's checkpoint ids, oldest first (by subvolume id, which only grows)."""
        cp_dir = self._checkpoint_dir(vm_id)
        try:
            names = [n for n in os.listdir(cp_dir) if not n.startswith(".")]
        except FileNotFoundError:
            return []
        order: list[tuple[int, str]] = []
        for n in names:
            with _dir_fd(cp_dir / n) as fd:
                if _btrfs.is_readonly(fd):  # else still arriving from another host
                    order.append((_btrfs.subvolume_id(fd), n))
        return [n for _, n in sorted(order)]

    def restore(self, vm_id: str, checkpoint_id: str) -> None:
        """Put the VM's files back as they were at the checkpoint. The caller
        stops the VM first. The swap is one atomic rename: a crash leaves
        either the old or the restored tree, never neither."""
        check_name(checkpoint_id, "checkpoint id")
        vms = self.root / "vms"
        if not self.vm_path(vm_id).is_dir():
            raise ArkerError(ErrorCode.NOT_FOUND, f"no vm {vm_id!r}")
        cp_fd = _open_or_404(
            self._checkpoint_dir(vm_id) / checkpoint_id, f"checkpoint {checkpoint_id!r}"
        )
        tmp = f"{_RESTORE}{vm_id}-{secrets.token_hex(4)}"
        try:
            with _dir_fd(vms) as parent:
                _snapshot(cp_fd, parent, tmp, readonly=False, what=tmp)
                try:
                    _btrfs.rename_exchange(parent, tmp, vm_id)
                except BaseException:
                    self._destroy(vms, tmp)
                    raise
        finally:
            os.close(cp_fd)
        self._destroy(vms, tmp)  # now the old tree

    def delete_checkpoint(self, vm_id: str, checkpoint_id: str) -> None:
        """Delete one checkpoint; missing is fine."""
        self._destroy(self._checkpoint_dir(vm_id), check_name(checkpoint_id, "checkpoint id"))

    def checkpoint_path(self, vm_id: str, checkpoint_id: str) -> Path:
        """Where the checkpoint is; validates both ids (the path may not exist)."""
        return self._checkpoint_dir(vm_id) / check_name(checkpoint_id, "checkpoint id")

    # -- send and receive (a cluster ships checkpoints and goldens through S3)
    def send(self, subvol: Path, parent: Path | None, out: sendstream.Sink, what: str) -> int:
        """Write the read-only `subvol` as a compressed send stream."""
        for path in (subvol, parent):
            if path is not None and not path.is_dir():
                missing = what if path is subvol else f"parent {path.name!r}"
                raise ArkerError(ErrorCode.NOT_FOUND, f"no {missing}")
        return sendstream.send(subvol, parent, out)

    def receive_checkpoint(self, vm_id: str, checkpoint_id: str, src: sendstream.Source) -> None:
        """Receive a checkpoint of vm_id sent by another host."""
        dest = self.checkpoint_path(vm_id, checkpoint_id)
        dest.parent.mkdir(exist_ok=True)
        self._receive(src, dest, f"checkpoint {checkpoint_id!r}")

    def receive_golden(self, name: str, src: sendstream.Source) -> GoldenInfo:
        """Receive a golden sent by another host (conflict if it is here)."""
        self._receive(src, self.golden_path(name), f"golden {name!r}")
        return self._write_golden_meta(name, None)

    def _receive(self, src: sendstream.Source, dest: Path, what: str) -> None:
        """Receive straight into `dest`'s directory (a read-only subvolume
        cannot be moved to another directory), check the stream made exactly
        `dest` and made it whole (read-only), else remove what it began."""
        with self._receive_lock:
            if dest.exists() and not self._sealed(dest):  # a receive a crash cut short
                self._destroy(dest.parent, dest.name)
            if dest.exists():
                raise ArkerError(ErrorCode.CONFLICT, f"{what} already exists")
            before = set(os.listdir(dest.parent))
            created: list[str] = []
            try:
                sendstream.receive(dest.parent, src, created)
                if created != [dest.name]:
                    why = f"the stream for {what} held {created or 'no subvolume'}"
                    raise ArkerError(ErrorCode.INVALID_REQUEST, why)
                with _dir_fd(dest) as fd:
                    if not _btrfs.is_readonly(fd):
                        raise ArkerError(
                            ErrorCode.INVALID_REQUEST, f"the stream for {what} was cut"
                        )
            except BaseException:
                for name in created:
                    if name not in before and "/" not in name:
                        self._destroy(dest.parent, name)
                raise

    # -- internals
    def _fd(self) -> int:
        if self._root_fd is None:
            raise ArkerError(ErrorCode.UNAVAILABLE, "the pool is not open")
        return self._root_fd

    def _sweep(self) -> None:
        """Remove what an interrupted build or restore left behind."""
        for parent in [self.root / "goldens", *(self.root / "checkpoints").iterdir()]:
            for name in os.listdir(parent):
                if not name.startswith(".") and not self._sealed(parent / name):
                    log.info("removing a half-received %s/%s", parent.name, name)
                    try:
                        self._destroy(parent, name)
                    except (OSError, ArkerError) as exc:
                        log.error("cannot remove %s/%s yet: %s", parent.name, name, exc)
                        self._pending.add((parent, name))
        for sub, prefix in (("goldens", _STAGING), ("vms", _RESTORE), ("vms", _DELETED)):
            for name in os.listdir(self.root / sub):
                if name.startswith(prefix):
                    log.info("removing leftover %s/%s", sub, name)
                    try:
                        self._destroy(self.root / sub, name)
                    except (OSError, ArkerError) as exc:
                        log.error("cannot remove %s/%s yet, will retry: %s", sub, name, exc)
                        self._pending.add((self.root / sub, name))

    def _destroy(self, parent: Path, name: str) -> None:
        """Delete subvolume parent/name, nested subvolumes first; missing is fine."""
        destroyed: list[int] = []
        try:
            with _dir_fd(parent) as pfd:
                _btrfs.destroy_tree(pfd, parent / name, destroyed)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise ArkerError(ErrorCode.CONFLICT, f"{name} is busy (mounted or in use)") from exc
            raise
        finally:
            if self.quotas and destroyed:
                with self._stale_lock:
                    self._stale_qgroups.update(destroyed)


def _snapshot(src_fd: int, parent_fd: int, name: str, *, readonly: bool, what: str) -> None:
    try:
        _btrfs.snapshot(src_fd, parent_fd, name, readonly=readonly)
    except FileExistsError:
        raise ArkerError(ErrorCode.CONFLICT, f"{what} already exists") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ArkerError(ErrorCode.INSUFFICIENT_STORAGE, "the storage pool is full") from exc
        raise


def _open_or_404(path: Path, what: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ArkerError(ErrorCode.NOT_FOUND, f"no {what}") from None


@contextlib.contextmanager
def _dir_fd(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)
