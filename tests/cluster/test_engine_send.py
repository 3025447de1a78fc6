"""btrfs send/receive between two engines (two data dirs, two pools) on this
machine: a VM's checkpoints, whole and incremental, and goldens; bad streams
and missing ids fail with one clear error and leave both pools as they were."""

from __future__ import annotations

import io
import os

import pytest
from conftest import new_id, sh

from arker.engine import _btrfs
from arker.engine.base import Limits
from arker.engine.host import NamespaceEngine
from arker.errors import ArkerError, ErrorCode

pytestmark = pytest.mark.root


def _send(engine: NamespaceEngine, vm_id: str, cp: str, parent: str | None) -> bytes:
    out = io.BytesIO()
    engine.send_checkpoint(vm_id, cp, parent, out)
    return out.getvalue()


def test_checkpoints_move_whole_then_incremental(
    engine_a: NamespaceEngine, engine_b: NamespaceEngine
) -> None:
    vm = new_id()
    engine_a.fork("busybox", vm, hostname="shipper")
    try:
        sh(engine_a, vm, "echo one > /home/user/f; head -c 3000000 /dev/urandom > /home/user/big")
        engine_a.checkpoint(vm, "cp1")
        sh(engine_a, vm, "echo two > /home/user/f; rm /home/user/big; echo new > /home/user/g")
        engine_a.checkpoint(vm, "cp2")
        sh(engine_a, vm, "echo after > /home/user/f")  # not in any checkpoint
        full, incr = _send(engine_a, vm, "cp1", None), _send(engine_a, vm, "cp2", "cp1")
        assert full[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
        assert len(incr) < len(full) / 10  # only what changed
        engine_b.receive_checkpoint(vm, "cp1", None, io.BytesIO(full))
        engine_b.receive_checkpoint(vm, "cp2", "cp1", io.BytesIO(incr))
        engine_b.restore_received(vm, "cp2", hostname="shipper", limits=Limits(pids_max=64))
        try:
            got = sh(engine_b, vm, "cat f g; ls big 2>&1; hostname; id -u")
            assert got.stdout.startswith(b"two\nnew\n")
            assert b"No such file" in got.stdout and b"shipper\n" in got.stdout
            assert engine_b.checkpoints(vm) == ["cp1", "cp2"]
            # The received checkpoints stay intact parents: a later local one sends on top.
            sh(engine_b, vm, "echo three > /home/user/f")
            engine_b.checkpoint(vm, "cp3")
            assert len(_send(engine_b, vm, "cp3", "cp2")) < len(full) / 10
        finally:
            engine_b.delete(vm)
        assert vm not in engine_b.vm_ids() and engine_b.pool.checkpoints(vm) == []
    finally:
        engine_a.delete(vm)


def test_goldens_move(engine_a: NamespaceEngine, engine_b: NamespaceEngine) -> None:
    name = new_id("gold")
    staging = engine_a.pool.new_golden(name)
    (staging / "etc").mkdir()
    (staging / "etc" / "marker").write_text("golden\n")
    src = engine_a.pool.golden_path("busybox")
    for sub in ("bin", "sbin", "usr", "home", "tmp", "proc", "dev", "sys", "root"):
        if (src / sub).is_dir() and not (staging / sub).exists():
            import shutil

            shutil.copytree(src / sub, staging / sub, symlinks=True)
    engine_a.pool.seal_golden(staging, name, None)
    out = io.BytesIO()
    engine_a.send_golden(name, out)
    engine_b.receive_golden(name, io.BytesIO(out.getvalue()))
    vm = new_id()
    engine_b.fork(name, vm, hostname="g")
    try:
        assert sh(engine_b, vm, "cat /etc/marker").stdout == b"golden\n"
        assert name in [g.name for g in engine_b.goldens()]
        with pytest.raises(ArkerError) as err:  # never replaced
            engine_b.receive_golden(name, io.BytesIO(out.getvalue()))
        assert err.value.code == ErrorCode.CONFLICT
    finally:
        engine_b.delete(vm)
        engine_b.pool.delete_golden(name)
        engine_a.pool.delete_golden(name)


def test_bad_input_changes_nothing(engine_a: NamespaceEngine, engine_b: NamespaceEngine) -> None:
    vm = new_id()
    engine_a.fork("busybox", vm, hostname="bad")
    try:
        engine_a.checkpoint(vm, "cp1")
        engine_a.checkpoint(vm, "cp2")
        for call, code in [
            (lambda: _send(engine_a, new_id(), "cp1", None), ErrorCode.NOT_FOUND),
            (lambda: _send(engine_a, vm, "nope", None), ErrorCode.NOT_FOUND),
            (lambda: _send(engine_a, vm, "cp2", "nope"), ErrorCode.NOT_FOUND),
            (lambda: _send(engine_a, vm, "../x", None), ErrorCode.INVALID_REQUEST),
            (lambda: engine_a.send_golden("nope", io.BytesIO()), ErrorCode.NOT_FOUND),
        ]:
            with pytest.raises(ArkerError) as err:
                call()
            assert err.value.code == code
        full = _send(engine_a, vm, "cp1", None)
        incr = _send(engine_a, vm, "cp2", "cp1")
        for stream, parent in [(full[: len(full) // 2], None), (b"not a stream", None),
                               (b"", None)]:  # fmt: skip
            with pytest.raises(ArkerError) as err:
                engine_b.receive_checkpoint(vm, "cp1", parent, io.BytesIO(stream))
            assert err.value.code == ErrorCode.INVALID_REQUEST
        with pytest.raises(ArkerError) as err:  # its parent never arrived
            engine_b.receive_checkpoint(vm, "cp2", "cp1", io.BytesIO(incr))
        assert err.value.code == ErrorCode.NOT_FOUND
        with pytest.raises(ArkerError) as err:
            engine_b.restore_received(vm, "cp1", hostname="bad")
        assert err.value.code == ErrorCode.NOT_FOUND
        assert engine_b.pool.checkpoints(vm) == [] and vm not in engine_b.vm_ids()
        cp_dir = engine_b.pool.checkpoint_path(vm, "cp1").parent
        assert not cp_dir.exists() or os.listdir(cp_dir) == []  # nothing half-received left
        engine_b.receive_checkpoint(vm, "cp1", None, io.BytesIO(full))
        with pytest.raises(ArkerError) as err:  # received twice: never replaced
            engine_b.receive_checkpoint(vm, "cp1", None, io.BytesIO(full))
        assert err.value.code == ErrorCode.CONFLICT
        with pytest.raises(ArkerError) as err:  # the vm is on engine a already
            engine_a.restore_received(vm, "cp1", hostname="bad")
        assert err.value.code == ErrorCode.CONFLICT
    finally:
        engine_a.delete(vm)
        engine_b.delete(vm)
    assert engine_b.pool.checkpoints(vm) == []


def test_a_half_received_checkpoint_is_never_listed_and_is_swept(
    engine_b: NamespaceEngine,
) -> None:
    """What a host that died mid-receive leaves: a writable subvolume under the
    checkpoint's name (btrfs receive seals it read-only only at the end)."""
    vm = new_id()
    cp_dir = engine_b.pool.checkpoint_path(vm, "cp1").parent
    cp_dir.mkdir(parents=True)
    fd = os.open(cp_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _btrfs.create_subvolume(fd, "cp1")
    finally:
        os.close(fd)
    assert engine_b.pool.checkpoints(vm) == []
    with pytest.raises(ArkerError) as err:
        engine_b.restore_received(vm, "cp1", hostname="half")
    assert err.value.code == ErrorCode.NOT_FOUND
    engine_b.pool._sweep()  # what open() does after a crash
    assert not (cp_dir / "cp1").exists()
    engine_b.delete(vm)
