"""Shipping a durable VM's checkpoints through a real SeaweedFS from one engine
(host A) and restoring them on another (host B): whole, incremental, compacted;
what a crashed or failing upload leaves is never restored; goldens on first use."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import BinaryIO

import pytest
from conftest import new_id, sh

from arker.cluster.blobs import BlobStore
from arker.cluster.checkpoints import Shipped, Shipper
from arker.engine import _btrfs
from arker.engine.base import Limits
from arker.engine.host import NamespaceEngine
from arker.errors import ArkerError, ErrorCode

pytestmark = pytest.mark.root


@pytest.fixture
def vm_a(engine_a: NamespaceEngine, engine_b: NamespaceEngine) -> Iterator[str]:
    vm = new_id()
    engine_a.fork("busybox", vm, hostname="durable")
    try:
        yield vm
    finally:
        engine_a.delete(vm)
        engine_b.delete(vm)


def _manifests(blobs: BlobStore, vm: str) -> list[Shipped]:
    keys = [k for k in blobs.list(f"checkpoints/{vm}/") if "/m-" in k]
    return [Shipped.from_json(blobs.get_bytes(k)) for k in keys]


def test_ship_compact_and_restore_elsewhere(
    blob_store: BlobStore, engine_a: NamespaceEngine, engine_b: NamespaceEngine, vm_a: str
) -> None:
    ship_a = Shipper(blob_store, engine_a, compact_every=3)
    for n in range(1, 6):
        sh(engine_a, vm_a, f"echo {n} > /home/user/n; echo {n} >> /home/user/log")
        engine_a.checkpoint(vm_a, f"cp{n}")
        ship_a.ship(vm_a, f"cp{n}")
    ship_a.ship(vm_a, "cp5")  # again: a no-op
    sh(engine_a, vm_a, "echo lost > /home/user/n")  # after the last checkpoint
    shipped = _manifests(blob_store, vm_a)
    assert [(s.checkpoint_id, s.parent_id, s.depth) for s in shipped] == [
        ("cp1", None, 0), ("cp2", "cp1", 1), ("cp3", "cp2", 2),
        ("cp4", None, 0), ("cp5", "cp4", 1),
    ]  # fmt: skip
    assert all(s.size_bytes > 0 and len(s.sha256) == 64 for s in shipped)

    ship_b = Shipper(blob_store, engine_b, compact_every=3)  # a fresh host process
    assert ship_b.latest(vm_a) == "cp5"
    got = ship_b.restore_latest(vm_a, hostname="durable", limits=Limits(pids_max=64))
    assert got == "cp5"
    out = sh(engine_b, vm_a, "cat /home/user/n /home/user/log; hostname").stdout
    assert out == b"5\n1\n2\n3\n4\n5\ndurable\n"
    assert engine_b.checkpoints(vm_a) == ["cp4", "cp5"]  # only the chain from its base
    # Host B carries on: its next checkpoint goes as an increment on cp5.
    sh(engine_b, vm_a, "echo 6 > /home/user/n")
    engine_b.checkpoint(vm_a, "cp6")
    ship_b.ship(vm_a, "cp6")
    last = _manifests(blob_store, vm_a)[-1]
    assert (last.checkpoint_id, last.parent_id, last.depth, last.seq) == ("cp6", "cp5", 2, 6)

    ship_b.forget(vm_a)
    assert blob_store.list(f"checkpoints/{vm_a}/") == []
    assert ship_b.latest(vm_a) is None


class _Failing(NamespaceEngine):
    """The real engine, but its send dies after `cut` bytes (a host dying mid-upload)."""

    cut = 1000

    def __init__(self, real: NamespaceEngine) -> None:
        self.__dict__.update(real.__dict__)

    def send_checkpoint(
        self, vm_id: str, checkpoint_id: str, parent_id: str | None, out: BinaryIO
    ) -> None:
        cut = self.cut

        class Cut(io.RawIOBase):
            sent = 0

            def write(self, data: bytes) -> int:  # type: ignore[override]
                if self.sent + len(data) > cut:
                    out.write(data[: cut - self.sent])
                    raise OSError("the host died")
                self.sent += len(data)
                out.write(data)
                return len(data)

        super().send_checkpoint(vm_id, checkpoint_id, parent_id, Cut())  # type: ignore[arg-type]


@pytest.mark.parametrize("cut", [1000, 12 * 2**20])  # one small put, a multipart upload
def test_a_cut_upload_is_never_restored(
    blob_store: BlobStore, engine_a: NamespaceEngine, engine_b: NamespaceEngine, vm_a: str,
    cut: int,
) -> None:  # fmt: skip
    good = Shipper(blob_store, engine_a)
    sh(engine_a, vm_a, "echo kept > /home/user/f")
    engine_a.checkpoint(vm_a, "cp1")
    good.ship(vm_a, "cp1")
    sh(engine_a, vm_a, "echo cut > /home/user/f; head -c 30000000 /dev/urandom > /home/user/big")
    engine_a.checkpoint(vm_a, "cp2")
    failing = _Failing(engine_a)
    failing.cut = cut
    with pytest.raises(OSError, match="the host died"):
        Shipper(blob_store, failing).ship(vm_a, "cp2")
    assert [k for k in blob_store.list(f"checkpoints/{vm_a}/") if "cp2" in k] == []
    # An orphan a crash left between the stream and its manifest: a whole stream, no manifest.
    orphan = io.BytesIO()
    engine_a.send_checkpoint(vm_a, "cp2", None, orphan)
    blob_store.put_bytes(f"checkpoints/{vm_a}/s-0000000002-cp2-dead.zst", orphan.getvalue())
    assert Shipper(blob_store, engine_b).restore_latest(vm_a, hostname="x") == "cp1"
    assert sh(engine_b, vm_a, "cat /home/user/f; ls /home/user").stdout == b"kept\nf\n"


def test_a_host_that_lost_its_lease_while_shipping_commits_nothing(
    blob_store: BlobStore, engine_a: NamespaceEngine, engine_b: NamespaceEngine, vm_a: str
) -> None:
    """The stream went up, then the lease lapsed (the VM is another host's
    now): no manifest is written and the stream is removed, so a restore
    never takes the old host's late checkpoint for the VM's latest."""
    ship = Shipper(blob_store, engine_a)
    sh(engine_a, vm_a, "echo owned > /home/user/f")
    engine_a.checkpoint(vm_a, "cp1")
    ship.ship(vm_a, "cp1", lambda: True)
    sh(engine_a, vm_a, "echo late > /home/user/f")
    engine_a.checkpoint(vm_a, "cp2")
    asked: list[bool] = []

    def lapsed() -> bool:
        asked.append(True)
        return False

    with pytest.raises(ArkerError) as err:
        ship.ship(vm_a, "cp2", lapsed)
    assert err.value.code == "conflict" and "not this host's any more" in err.value.message
    assert asked == [True]  # asked once, after the stream and before the manifest
    assert [k for k in blob_store.list(f"checkpoints/{vm_a}/") if "cp2" in k] == []
    assert Shipper(blob_store, engine_b).restore_latest(vm_a, hostname="x") == "cp1"
    assert sh(engine_b, vm_a, "cat /home/user/f").stdout == b"owned\n"


def test_a_stream_that_does_not_match_its_manifest_is_refused(
    blob_store: BlobStore, engine_a: NamespaceEngine, engine_b: NamespaceEngine, vm_a: str
) -> None:
    Shipper(blob_store, engine_a).ship(vm_a, _checkpoint(engine_a, vm_a, "cp1"))
    (key,) = [k for k in blob_store.list(f"checkpoints/{vm_a}/") if "/m-" in k]
    body = json.loads(blob_store.get_bytes(key))
    blob_store.delete(key)
    blob_store.put_bytes(key, json.dumps({**body, "sha256": "0" * 64}).encode())
    with pytest.raises(ArkerError) as err:
        Shipper(blob_store, engine_b).restore_latest(vm_a, hostname="x")
    assert err.value.code == ErrorCode.INTERNAL and "does not match" in err.value.message
    assert vm_a not in engine_b.vm_ids()
    cp_dir = engine_b.pool.checkpoint_path(vm_a, "cp1").parent
    assert not cp_dir.exists() or os.listdir(cp_dir) == []  # nothing half-received left


def _checkpoint(engine: NamespaceEngine, vm: str, cp: str) -> str:
    engine.checkpoint(vm, cp)
    return cp


def test_goldens_publish_once_and_fetch_on_first_use(
    blob_store: BlobStore, engine_a: NamespaceEngine, engine_b: NamespaceEngine
) -> None:
    name = new_id("gold")
    vm = new_id()
    engine_a.fork("busybox", vm, hostname="g")  # a golden made from a VM's files
    sh(engine_a, vm, "echo gold > /home/user/marker")
    engine_a.checkpoint(vm, "seal")
    cp = engine_a.pool.checkpoint_path(vm, "seal")
    src = os.open(cp, os.O_RDONLY | os.O_DIRECTORY)
    dst = os.open(engine_a.pool.root / "goldens", os.O_RDONLY | os.O_DIRECTORY)
    try:
        _btrfs.snapshot(src, dst, name, readonly=True)
    finally:
        os.close(src)
        os.close(dst)
    try:
        ship_a, ship_b = Shipper(blob_store, engine_a), Shipper(blob_store, engine_b)
        ship_a.publish_golden(name)
        assert name in ship_b.published_goldens()
        with pytest.raises(ArkerError) as err:
            ship_a.publish_golden(name)
        assert err.value.code == ErrorCode.CONFLICT
        assert ship_b.fetch_golden(name) is True
        assert ship_b.fetch_golden(name) is False  # cached
        child = new_id()
        engine_b.fork(name, child, hostname="c")
        try:
            assert sh(engine_b, child, "cat /home/user/marker").stdout == b"gold\n"
        finally:
            engine_b.delete(child)
        for call in (lambda: ship_b.fetch_golden("nope"), lambda: ship_a.publish_golden("nope")):
            with pytest.raises(ArkerError) as err:
                call()
            assert err.value.code == ErrorCode.NOT_FOUND
    finally:
        engine_a.delete(vm)
        engine_a.pool.delete_golden(name)
        engine_b.pool.delete_golden(name)


def test_bad_input_and_a_store_that_is_down(
    blob_store: BlobStore, engine_a: NamespaceEngine, engine_b: NamespaceEngine, vm_a: str
) -> None:
    ship = Shipper(blob_store, engine_a)
    for call, code in [
        (lambda: ship.ship(new_id(), "cp1"), ErrorCode.NOT_FOUND),
        (lambda: ship.ship(vm_a, "nope"), ErrorCode.NOT_FOUND),
        (lambda: ship.ship(vm_a, "../x"), ErrorCode.INVALID_REQUEST),
        (lambda: ship.restore_latest("../x", hostname="x"), ErrorCode.INVALID_REQUEST),
        (lambda: Shipper(blob_store, engine_a, compact_every=0), ErrorCode.INVALID_REQUEST),
    ]:
        with pytest.raises(ArkerError) as err:
            call()
        assert err.value.code == code
    assert blob_store.list(f"checkpoints/{vm_a}/") == []
    assert Shipper(blob_store, engine_b).restore_latest(new_id(), hostname="x") is None
    down = BlobStore.from_url("s3://b/p", endpoint_url="http://127.0.0.1:18499",
                              access_key="a", secret_key="b", retries=0)  # fmt: skip
    engine_a.checkpoint(vm_a, "cp1")
    dead = Shipper(down, engine_a)
    calls = [lambda: dead.ship(vm_a, "cp1"),
             lambda: Shipper(down, engine_b).restore_latest(vm_a, hostname="x"),
             lambda: dead.fetch_golden("nope"), lambda: dead.publish_golden("busybox")]  # fmt: skip
    for call in calls:
        with pytest.raises(ArkerError) as err:
            call()
        assert err.value.code == ErrorCode.UNAVAILABLE
    assert engine_a.checkpoints(vm_a) == ["cp1"] and vm_a not in engine_b.vm_ids()


def test_ships_racing_in_one_process_take_turns(
    blob_store: BlobStore, engine_a: NamespaceEngine, vm_a: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ship = Shipper(blob_store, engine_a)
    for n in range(4):
        engine_a.checkpoint(vm_a, f"cp{n}")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: ship.ship(vm_a, f"cp{n}"), range(4)))
    shipped = _manifests(blob_store, vm_a)
    assert [s.seq for s in shipped] == [1, 2, 3, 4]
    assert sorted(s.checkpoint_id for s in shipped) == ["cp0", "cp1", "cp2", "cp3"]
