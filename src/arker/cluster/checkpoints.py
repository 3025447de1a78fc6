"""Durable checkpoints and goldens shipped through the S3 store.

    checkpoints/<vm_id>/s-<seq>-<checkpoint_id>-<rand>.zst   the send stream
    checkpoints/<vm_id>/m-<seq>-<checkpoint_id>.json         its manifest, written last
    goldens/<name>/s-<rand>.zst                              a golden's send stream
    goldens/<name>/manifest.json                             its manifest, written last

A checkpoint counts only once its manifest exists, and a manifest is written
only after its stream's upload completed (S3 shows a multipart object only
whole), so a host that dies mid-upload leaves nothing a restore takes. Every
key names the VM and the checkpoint, and every put is a conditional create:
nothing is overwritten. A stream's key has a random part so that a retry after
a crash never collides with the orphan the crash left (`forget` removes those).

The first checkpoint of a VM goes whole, each next one as an increment against
the one before, and every `compact_every`-th whole again, so a restore replays
at most that many streams. Manifests carry the stream's size and SHA-256, and a
restore checks them before it keeps anything.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from arker.cluster.blobs import BlobStore, Readable
from arker.engine.base import Engine, Limits, NetworkPolicy
from arker.engine.pool import check_name
from arker.errors import ArkerError, ErrorCode

__all__ = ["Shipped", "Shipper"]


@dataclass(frozen=True)
class Shipped:
    """One checkpoint as its manifest records it."""

    vm_id: str
    checkpoint_id: str
    seq: int
    parent_id: str | None  # None: a whole stream
    depth: int  # increments since the last whole stream (0 for a whole one)
    stream: str
    size_bytes: int
    sha256: str

    def as_json(self) -> bytes:
        return json.dumps({**self.__dict__, "shipped_at": time.time()}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Shipped:
        raw = json.loads(data)
        fields = {k: raw[k] for k in cls.__dataclass_fields__}
        return cls(**fields)


class Shipper:
    """Ships one host's checkpoints and goldens; one per host process."""

    def __init__(self, blobs: BlobStore, engine: Engine, compact_every: int = 8) -> None:
        if compact_every < 1:
            raise ArkerError(ErrorCode.INVALID_REQUEST, "compact_every must be at least 1")
        self.blobs = blobs
        self.engine = engine
        self.compact_every = compact_every
        self._last: dict[str, Shipped] = {}  # per VM, the last one this process knows of
        self._lock = threading.Lock()
        self._golden_locks: dict[str, threading.Lock] = {}
        self._vm_locks: dict[str, threading.Lock] = {}

    # -- checkpoints ---------------------------------------------------------

    def ship(
        self, vm_id: str, checkpoint_id: str, may_commit: Callable[[], bool] | None = None
    ) -> None:
        """Upload the engine's checkpoint, whole or as an increment; returns
        once its stream and manifest are both complete in S3. Shipping the same
        checkpoint again right after is a no-op. `may_commit` is asked just
        before the manifest (the commit point) is written: a host that lost
        its lease while the stream went up must not add a checkpoint to a VM
        another host owns now, so then the stream is removed and nothing kept."""
        check_name(vm_id, "vm id")
        check_name(checkpoint_id, "checkpoint id")
        with self._lock:
            lock = self._vm_locks.setdefault(vm_id, threading.Lock())
        with lock:  # one ship per VM at a time: each takes the next seq
            self._ship(vm_id, checkpoint_id, may_commit)

    def _ship(self, vm_id: str, checkpoint_id: str, may_commit: Callable[[], bool] | None) -> None:
        last = self._latest(vm_id)
        if last is not None and last.checkpoint_id == checkpoint_id:
            return
        parent = None
        # Whole again every compact_every-th, or when the parent is not here
        # (a host that lost its pool): the increment would have nothing to go on.
        if (
            last is not None
            and last.depth + 1 < self.compact_every
            and self._has_locally(vm_id, last.checkpoint_id)
        ):
            parent = last
        seq = 1 if last is None else last.seq + 1
        stream_key = f"checkpoints/{vm_id}/s-{seq:010d}-{checkpoint_id}-{secrets.token_hex(4)}.zst"
        parent_id = None if parent is None else parent.checkpoint_id

        def send(out: BinaryIO) -> None:
            self.engine.send_checkpoint(vm_id, checkpoint_id, parent_id, out)

        size, digest = _upload(self.blobs, stream_key, send)
        shipped = Shipped(
            vm_id, checkpoint_id, seq, parent_id, 0 if parent is None else parent.depth + 1,
            stream_key, size, digest,
        )  # fmt: skip
        if may_commit is not None and not may_commit():
            self.blobs.delete(stream_key)
            raise ArkerError(
                ErrorCode.CONFLICT,
                f"vm {vm_id!r} is not this host's any more (its lease lapsed while checkpoint "
                f"{checkpoint_id!r} was shipped): the checkpoint is not kept",
            )
        self.blobs.put_bytes(_manifest_key(vm_id, seq, checkpoint_id), shipped.as_json())
        with self._lock:
            self._last[vm_id] = shipped

    def latest(self, vm_id: str) -> str | None:
        """The id of the VM's latest complete checkpoint in S3, if any."""
        shipped = self._scan(vm_id)
        return shipped[-1].checkpoint_id if shipped else None

    def restore_latest(
        self,
        vm_id: str,
        *,
        hostname: str,
        limits: Limits | None = None,
        network: NetworkPolicy | None = None,
    ) -> str | None:
        """Make the VM on this host from its latest complete checkpoint in S3:
        fetch its chain from the whole stream up, receive each in order, then
        make the VM. Returns the checkpoint id; None if nothing was shipped."""
        check_name(vm_id, "vm id")
        shipped = self._scan(vm_id)
        if not shipped:
            return None
        by_id = {s.checkpoint_id: s for s in shipped}
        target = shipped[-1]
        chain = [target]
        while chain[-1].parent_id is not None:
            parent = by_id.get(chain[-1].parent_id)
            if parent is None:
                raise ArkerError(
                    ErrorCode.INTERNAL,
                    f"checkpoint {chain[-1].checkpoint_id!r} of {vm_id!r} has no parent in S3",
                )
            chain.append(parent)
        for link in reversed(chain):
            stream = _Verified(self.blobs.open_stream(link.stream), link)
            try:
                self.engine.receive_checkpoint(
                    vm_id, link.checkpoint_id, link.parent_id, cast(BinaryIO, stream)
                )
            except ArkerError as exc:
                if exc.code != ErrorCode.CONFLICT:  # conflict: received before, and whole
                    raise
            finally:
                stream.close()
        self.engine.restore_received(
            vm_id, target.checkpoint_id, hostname=hostname, limits=limits, network=network
        )
        with self._lock:
            self._last[vm_id] = target
        return target.checkpoint_id

    def forget(self, vm_id: str) -> None:
        """Delete every object of the VM (when the VM is deleted)."""
        check_name(vm_id, "vm id")
        with self._lock:
            self._last.pop(vm_id, None)
            self._vm_locks.pop(vm_id, None)
        # Manifests first: a half-forgotten VM must not look restorable from streams it lost.
        keys = self.blobs.list(f"checkpoints/{vm_id}/")
        for key in sorted(keys, key=lambda k: not k.rsplit("/", 1)[-1].startswith("m-")):
            self.blobs.delete(key)

    def _latest(self, vm_id: str) -> Shipped | None:
        with self._lock:
            known = self._last.get(vm_id)
        if known is not None:
            return known
        shipped = self._scan(vm_id)
        return shipped[-1] if shipped else None

    def _scan(self, vm_id: str) -> list[Shipped]:
        """The VM's complete checkpoints in S3, oldest first."""
        names = [
            k for k in self.blobs.list(f"checkpoints/{vm_id}/")
            if k.rsplit("/", 1)[-1].startswith("m-")
        ]  # fmt: skip
        return [Shipped.from_json(self.blobs.get_bytes(k)) for k in sorted(names)]

    def _has_locally(self, vm_id: str, checkpoint_id: str) -> bool:
        try:
            return checkpoint_id in self.engine.checkpoints(vm_id)
        except ArkerError:
            return False

    # -- goldens -------------------------------------------------------------

    def publish_golden(self, name: str) -> None:
        """Upload the engine's golden `name` (conflict if one is published already)."""
        check_name(name, "golden name")
        manifest = f"goldens/{name}/manifest.json"
        if self.blobs.exists(manifest):
            raise ArkerError(ErrorCode.CONFLICT, f"golden {name!r} is published already")
        info = next((g for g in self.engine.goldens() if g.name == name), None)
        if info is None:
            raise ArkerError(ErrorCode.NOT_FOUND, f"no golden {name!r} on this host")
        key = f"goldens/{name}/s-{secrets.token_hex(6)}.zst"

        def send(out: BinaryIO) -> None:
            self.engine.send_golden(name, out)

        size, digest = _upload(self.blobs, key, send)
        body = {"name": name, "stream": key, "size_bytes": size, "sha256": digest,
                "description": info.description, "published_at": time.time()}  # fmt: skip
        self.blobs.put_bytes(manifest, json.dumps(body).encode())

    def published_goldens(self) -> list[str]:
        """The names of the goldens published in S3."""
        return sorted(
            k.split("/")[1] for k in self.blobs.list("goldens/") if k.endswith("/manifest.json")
        )

    def fetch_golden(self, name: str) -> bool:
        """Make sure this host holds the golden `name`, receiving it from S3 on
        first use; True if it was fetched now, False if it was here."""
        check_name(name, "golden name")
        with self._lock:
            lock = self._golden_locks.setdefault(name, threading.Lock())
        with lock:
            if any(g.name == name for g in self.engine.goldens()):
                return False
            try:
                body = json.loads(self.blobs.get_bytes(f"goldens/{name}/manifest.json"))
            except ArkerError as exc:
                if exc.code == ErrorCode.NOT_FOUND:
                    raise ArkerError(ErrorCode.NOT_FOUND, f"no golden {name!r}") from exc
                raise
            stream = _Verified(self.blobs.open_stream(body["stream"]), body)
            try:
                self.engine.receive_golden(name, cast(BinaryIO, stream))
            finally:
                stream.close()
            return True


def _manifest_key(vm_id: str, seq: int, checkpoint_id: str) -> str:
    return f"checkpoints/{vm_id}/m-{seq:010d}-{checkpoint_id}.json"


def _upload(blobs: BlobStore, key: str, send: Any) -> tuple[int, str]:
    """Run `send(out)` in a thread into a pipe that `put_stream` reads from.
    If the sender fails, the read raises before the upload completes, so a cut
    stream never becomes an object."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def writer() -> None:
        with os.fdopen(write_fd, "wb", buffering=1 << 20) as out:
            try:
                send(out)
            except BaseException as exc:
                failure.append(exc)

    thread = threading.Thread(target=writer, name="arker-ship-send", daemon=True)
    reader = _Checked(os.fdopen(read_fd, "rb"), thread, failure)
    thread.start()
    try:
        blobs.put_stream(key, reader)
    finally:
        reader.close()  # the sender sees EPIPE if the upload stopped early
        thread.join()
    if failure:
        raise failure[0]
    return reader.size, reader.hash.hexdigest()


class _Checked:
    """The pipe's read end: counts and hashes, and at EOF raises the sender's failure."""

    def __init__(
        self, f: io.BufferedReader, thread: threading.Thread, failure: list[BaseException]
    ):
        self._f, self._thread, self._failure = f, thread, failure
        self.size = 0
        self.hash = hashlib.sha256()

    def read(self, n: int = -1, /) -> bytes:
        data = self._f.read(n)
        if not data:
            self._thread.join()
            if self._failure:
                raise self._failure[0]
        self.size += len(data)
        self.hash.update(data)
        return data

    def close(self) -> None:
        self._f.close()


class _Verified:
    """An object's bytes, checked against its manifest before the last read returns."""

    def __init__(self, body: Readable, manifest: Shipped | dict[str, Any]) -> None:
        self._body = body
        want = manifest if isinstance(manifest, dict) else manifest.__dict__
        self._size, self._sha = int(want["size_bytes"]), str(want["sha256"])
        self._what = str(want["stream"])
        self._seen = 0
        self._hash = hashlib.sha256()

    def read(self, n: int = -1, /) -> bytes:
        data = self._body.read(n)
        self._seen += len(data)
        self._hash.update(data)
        if (not data or self._seen > self._size) and (
            self._seen != self._size or self._hash.hexdigest() != self._sha
        ):
            raise ArkerError(ErrorCode.INTERNAL, f"{self._what} in S3 does not match its manifest")
        return data

    def close(self) -> None:
        self._body.close()
