"""Every public `Engine` method (and `HostExtras`') crosses the host API:
a `RemoteEngine` against a real `arker host` over the real namespace engine,
each method called and its result checked, and the host's refusals (no
token, a VM not placed on it) in the contract's error shape."""

from __future__ import annotations

import asyncio
import io
import socket
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from clusterkit import NEEDS_CLUSTER, Cluster, HostProc

from arker.cluster.remote import METHODS, RemoteEngineBase, connect
from arker.engine.base import Engine, Limits, NetworkPolicy, RunPhase, RunSpec, VmPower
from arker.errors import ArkerError

pytestmark = NEEDS_CLUSTER


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, HostProc]]:
    c = Cluster.create()
    try:
        host = c.add_host()
        yield c, host
    finally:
        left = c.close()
        assert not left, left


class Recorder:
    """The remote engine, noting each method called through it."""

    def __init__(self, engine: RemoteEngineBase) -> None:
        self.engine = engine
        self.called: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        self.called.add(name)
        return getattr(self.engine, name)


def _place(c: Cluster, host: HostProc, *vm_ids: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(c.database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            fence = await conn.fetchval(
                "SELECT fence FROM cluster_hosts WHERE id = $1", host.host_id
            )
            for vm_id in vm_ids:
                await conn.execute(
                    "INSERT INTO vm_placements (vm_id, host_id, fence, spec, placed_at)"
                    " VALUES ($1, $2, $3, '{}', 0)",
                    vm_id,
                    host.host_id,
                    fence,
                )
        finally:
            await conn.close()

    asyncio.run(go())


def _tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_every_method_crosses(cluster: tuple[Cluster, HostProc]) -> None:
    c, host = cluster
    remote = connect(host.url, c.token_file.read_text().strip())
    e: Any = Recorder(remote)
    vm, child = "01CCOREREMOTEVMA00000000000", "01CCOREREMOTEVMB00000000000"
    _place(c, host, vm, child)

    assert "busybox" in [g.name for g in e.goldens()]
    assert e.build_golden("busybox").name == "busybox"  # there already: returned as is
    e.check_storage()
    assert e.storage_delete_pending() == 0
    limits = Limits(memory_bytes=256 * 2**20, pids_max=128, cpu_cores=0.5, disk_bytes=64 * 2**20)
    e.fork("busybox", vm, hostname="remote-a", limits=limits, network=NetworkPolicy())
    assert vm in e.vm_ids()
    assert e.power(vm) is VmPower.STOPPED
    usage = e.disk_usage(vm)
    assert usage is not None and usage[0] == 64 * 2**20

    # runs, their output, stdin and signals
    e.start_run(vm, "r1", RunSpec(command="echo hi; echo err >&2; hostname", env={"A": "1"}))
    info = e.wait_run(vm, "r1", 30)
    assert info.phase is RunPhase.COMPLETED and info.exit_code == 0
    assert info.stdout == b"hi\nremote-a\n" and info.stderr == b"err\n"
    assert e.run_info(vm, "r1").stdout_bytes == len(b"hi\nremote-a\n")
    chunk = e.read_output(vm, "r1", "stdout", 3, 100)
    assert (chunk.start, chunk.data, chunk.total) == (3, b"remote-a\n", 12)
    assert e.output_wakers(vm, "r1") == ()  # fds do not cross: callers poll read_output
    e.forget_run(vm, "r1")
    assert e.power(vm) is VmPower.RUNNING

    e.start_run(vm, "r2", RunSpec(command="cat", stdin_open=True))
    assert e.write_stdin(vm, "r2", b"typed", 10) == 5
    e.close_stdin(vm, "r2")
    assert e.wait_run(vm, "r2", 30).stdout == b"typed"
    e.start_run(vm, "r3", RunSpec(command="sleep 60"))
    e.signal_run(vm, "r3", 15)
    assert e.wait_run(vm, "r3", 30).done
    e.start_run(vm, "r4", RunSpec(command="sleep 60"))
    assert e.cancel_run(vm, "r4").phase is RunPhase.CANCELLED

    # files
    assert e.write_file(vm, "/home/user/f.txt", b"\x00data\xff").size == 6
    assert e.read_file(vm, "/home/user/f.txt", 100) == b"\x00data\xff"
    writer = e.open_file_writer(vm, "/home/user/big.bin", 1 << 20)
    for _ in range(4):
        writer.write(b"x" * 100_000)
    assert writer.commit().size == 400_000
    assert len(e.read_file(vm, "/home/user/big.bin", 1 << 20)) == 400_000
    too_big = e.open_file_writer(vm, "/home/user/no.bin", 10)
    with pytest.raises(ArkerError) as err:
        too_big.write(b"y" * 11)
    assert err.value.code == "payload_too_large"
    assert e.make_dir(vm, "/home/user/d/e", parents=True).type == "dir"
    assert e.stat_path(vm, "/home/user/f.txt").size == 6
    moved = e.move_path(vm, "/home/user/f.txt", "/home/user/d/g.txt")
    assert moved.path == "/home/user/d/g.txt"
    listing = e.list_dir(vm, "/home/user", depth=2)
    assert "d/g.txt" in [x.name for x in listing.entries] and listing.next_offset is None
    e.remove_path(vm, "/home/user/d/e", recursive=True)
    reader = e.open_archive(vm, "/home/user/d")
    data = b"".join(iter(reader.read, b""))
    reader.close()
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getnames()  # a real tar
    with tempfile.NamedTemporaryFile(suffix=".tar") as f:
        f.write(_tar_of({"one.txt": b"1", "sub/two.txt": b"22"}))
        f.flush()
        unpacked = e.unpack_archive(vm, "/home/user/unpacked", f.name, 1 << 20)
    assert unpacked.entries >= 2 and unpacked.bytes == 3
    assert e.read_file(vm, "/home/user/unpacked/sub/two.txt", 10) == b"22"
    with pytest.raises(ArkerError) as err:
        e.read_file(vm, "/home/user/nothing-here", 10)
    assert err.value.code == "not_found" and err.value.status == 404  # the error crosses

    # ports and terminals
    e.start_run(
        vm,
        "web",
        RunSpec(command="mkdir -p w && echo web-ok > w/i && httpd -p 127.0.0.1:8080 -h w"),
    )
    assert e.wait_run(vm, "web", 30).exit_code == 0
    sock: socket.socket = e.connect_port(vm, 8080)
    sock.sendall(b"GET /i HTTP/1.0\r\n\r\n")
    got = b""
    sock.settimeout(10)
    while chunk_ := sock.recv(4096):
        got += chunk_
    sock.close()
    assert b"200 OK" in got and got.endswith(b"web-ok\n")
    with pytest.raises(ArkerError) as err:
        e.connect_port(vm, 8099)
    assert err.value.code == "unavailable" and err.value.status == 502
    pty = e.open_pty(vm, command="stty size; read x; echo got-$x; exit 3", cols=100, rows=30)
    out = b""
    deadline = time.monotonic() + 15
    while b"30 100" not in out and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            out += pty.read(4096, timeout_s=1)
    pty.resize(120, 40)
    pty.write(b"hello\n")
    while not pty.done and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            out += pty.read(4096, timeout_s=0.5)
    assert pty.wait(10) == 3, out
    assert b"got-hello" in out
    pty.close()

    # network, checkpoints, power
    e.set_network(vm, NetworkPolicy(egress=True, allow=("example.com",)))
    e.checkpoint(vm, "cp1")
    assert e.checkpoints(vm) == ["cp1"]
    e.write_file(vm, "/home/user/after.txt", b"later")
    e.restore(vm, "cp1")
    with pytest.raises(ArkerError):
        e.read_file(vm, "/home/user/after.txt", 10)
    e.delete_checkpoint(vm, "cp1")
    assert e.checkpoints(vm) == []
    e.restart(vm)
    e.stop(vm)
    assert e.power(vm) is VmPower.STOPPED

    # a fork of a VM, a golden imported, the cluster's own call, deletes
    e.fork(vm, child, hostname="remote-b")
    assert e.read_file(child, "/home/user/unpacked/one.txt", 10) == b"1"
    with tempfile.NamedTemporaryFile(suffix=".tar") as f:
        f.write(_tar_of({"etc/motd": b"imported\n"}))
        f.flush()
        assert e.import_golden("ccore-tiny", f.name).name == "ccore-tiny"
        with pytest.raises(ArkerError) as err:  # no /bin/sh: not a root filesystem
            e.import_golden("ccore-nosh", f.name, description="x", require_shell=True)
        assert err.value.code == "invalid_request"
        assert "ccore-nosh" not in [g.name for g in e.goldens()]
    # a VM published as a golden, forked, and the golden deleted under the fork
    assert e.publish_golden(child, "ccore-pub", "from a vm").name == "ccore-pub"
    assert "ccore-pub" in [g.name for g in e.goldens()]
    e.delete_golden("ccore-pub")
    assert "ccore-pub" not in [g.name for g in e.goldens()]
    assert e.read_file(child, "/home/user/unpacked/one.txt", 10) == b"1"
    with pytest.raises(ArkerError) as err:
        e.adopt(vm, hostname="x")  # this host has no blob store
    assert err.value.code == "unsupported_operation"
    # Streams to and from the blob store are the host's own (its Shipper):
    # a file object of this process cannot cross, and the call says so here.
    for name, args in (
        ("send_checkpoint", (vm, "cp", None, io.BytesIO())),
        ("receive_checkpoint", (vm, "cp", None, io.BytesIO())),
        ("send_golden", ("busybox", io.BytesIO())),
        ("receive_golden", ("other", io.BytesIO())),
    ):
        with pytest.raises(ArkerError) as err:
            getattr(e, name)(*args)
        assert err.value.code == "unsupported_operation", name
    with pytest.raises(ArkerError) as err:
        e.restore_received(child, "cp_never_received", hostname="x")  # crosses, and fails there
    assert err.value.status in (404, 409) and err.value.code in ("not_found", "conflict")
    e.delete(child)
    e.delete(vm)
    assert vm not in e.vm_ids()

    public = {
        n
        for n in dir(Engine)
        if not n.startswith("_") and callable(getattr(Engine, n)) and n not in ("open", "close")
    }
    assert public <= set(METHODS)  # the table carries every public Engine method
    assert set(METHODS) - e.called == set(), "a method of the table was not exercised"
    remote.close()


def test_the_host_refuses_strangers_and_vms_not_placed_on_it(
    cluster: tuple[Cluster, HostProc],
) -> None:
    c, host = cluster
    with pytest.raises(ArkerError) as err:
        connect(host.url, "not-the-host-token").goldens()
    assert err.value.code == "unauthorized" and err.value.status == 401
    engine = connect(host.url, c.token_file.read_text().strip())
    with pytest.raises(ArkerError) as err:
        engine.fork("busybox", "01CCORENOTPLACED0000000000", hostname="x")
    assert err.value.code == "conflict" and "not placed" in err.value.message
    with pytest.raises(ArkerError) as err:
        engine.power("01CCORENOTPLACED0000000000")
    assert err.value.code == "conflict"
    import httpx

    token = c.token_file.read_text().strip()
    r = httpx.post(
        f"{host.url}/engine/fork",
        json={"args": {"source": 5}},
        headers={"authorization": f"Bearer {token}"},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = httpx.post(
        f"{host.url}/engine/no_such_method",
        json={"args": {}},
        headers={"authorization": f"Bearer {token}"},
    )
    assert r.status_code == 404
    engine.close()
