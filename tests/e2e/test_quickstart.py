"""The quickstart and the basics, through the SDK against a real server on the
real engine."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from live import Live

from arker import Arker, ArkerError, AsyncArker


def test_quickstart_sync(arker: Arker) -> None:
    assert "busybox" in [g.name for g in arker.goldens()]
    with arker.vm("busybox").fork(name="quick") as vm:
        result = vm.run("echo hello; echo oops >&2; exit 3")
        assert result.type == "completed"
        assert result.stdout == b"hello\n" and result.stderr == b"oops\n" and result.exit_code == 3
        vm.sync.write_file("/home/user/notes.txt", b"\x00bytes\xff")
        assert vm.sync.read_file("/home/user/notes.txt") == b"\x00bytes\xff"
        r = vm.run("cat /home/user/notes.txt | wc -c; id -u; hostname")
        assert r.type == "completed" and r.stdout.split() == [b"7", b"1000", b"quick"]
        info = vm.get()
        assert info.base_image == "busybox" and info.parent_id is None and info.region == "local"
        vm_id = vm.vm_id
    with pytest.raises(ArkerError) as err:
        arker.get(vm_id)
    assert err.value.code == "not_found"


async def test_quickstart_async(aarker: AsyncArker) -> None:
    async with await aarker.vm("busybox").fork() as vm:
        result = await vm.run("cat", stdin=b"piped", env={"A": "1"}, cwd="/tmp")
        assert result.type == "completed" and result.stdout == b"piped"
        r = await vm.run("echo $A; pwd", env={"A": "1"}, cwd="/tmp")
        assert r.type == "completed" and r.stdout == b"1\n/tmp\n"
        r = await vm.run("id -u", user="root")
        assert r.type == "completed" and r.stdout == b"0\n"
        await vm.sync.write_file("/home/user/a.txt", "text")
        assert await vm.sync.read_file("/home/user/a.txt") == b"text"


def test_fork_isolation(arker: Arker) -> None:
    with arker.vm("busybox").fork() as parent:
        parent.sync.write_file("/home/user/shared", b"before")
        with parent.fork() as child:
            assert child.info is not None and child.info.parent_id == parent.vm_id
            assert child.info.base_image == "busybox"
            assert child.sync.read_file("/home/user/shared") == b"before"
            parent.sync.write_file("/home/user/shared", b"parent-after")
            child.run("echo child-after > /home/user/shared; echo new > /home/user/only-child")
            assert parent.sync.read_file("/home/user/shared") == b"parent-after"
            assert child.sync.read_file("/home/user/shared") == b"child-after\n"
            with pytest.raises(ArkerError) as err:
                parent.sync.read_file("/home/user/only-child")
            assert err.value.code == "not_found"


def test_background_status_cancel(arker: Arker) -> None:
    with arker.vm("busybox").fork() as vm:
        started = vm.run("echo begun; sleep 30", background=True)
        assert started.type == "started"
        deadline = time.monotonic() + 10
        while True:
            status = vm.run_status(started.run_id)
            if status.stdout == b"begun\n" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status.state == "running" and status.stdout == b"begun\n"
        assert status.retry_count == 0 and status.finished_at is None
        cancelled = vm.cancel_run(started.run_id)
        assert cancelled.state == "cancelled" and cancelled.finished_at is not None
        quick = vm.run("echo bg-done", background=True)
        deadline = time.monotonic() + 10
        while (s := vm.run_status(quick.run_id)).state == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.state == "completed" and s.stdout == b"bg-done\n" and s.exit_code == 0


def test_timeout_keeps_output(arker: Arker) -> None:
    with arker.vm("busybox").fork() as vm:
        t0 = time.monotonic()
        r = vm.run("echo partial; sleep 30", timeout_s=0.5)
        assert time.monotonic() - t0 < 30  # not held by the sleep
        assert r.type == "timed_out" and r.stdout == b"partial\n" and r.timeout_s == 0.5


def test_idempotency(arker: Arker) -> None:
    with arker.vm("busybox").fork() as vm:
        a = vm.run("echo $$ >> /home/user/count", idempotency_key="e2e-run-1")
        b = vm.run("echo $$ >> /home/user/count", idempotency_key="e2e-run-1")
        assert a.run_id == b.run_id
        assert vm.sync.read_file("/home/user/count").count(b"\n") == 1
        with pytest.raises(ArkerError) as err:
            vm.run("echo other", idempotency_key="e2e-run-1")
        assert err.value.code == "conflict" and err.value.status == 409
        path = "/home/user/up.txt"
        first = vm.sync.write_file(path, b"one", upload_id="e2e-up-1")
        vm.sync.write_file(path, b"two")
        assert vm.sync.write_file(path, b"one", upload_id="e2e-up-1") == first
        assert vm.sync.read_file(path) == b"two"  # the retry did not write again
        with pytest.raises(ArkerError) as err:
            vm.sync.write_file(path, b"three", upload_id="e2e-up-1")
        assert err.value.code == "conflict"
        f1 = arker.vm("busybox").fork(name="idem", idempotency_key="e2e-fork-1")
        f2 = arker.vm("busybox").fork(name="idem", idempotency_key="e2e-fork-1")
        try:
            assert f1.vm_id == f2.vm_id
        finally:
            f1.delete()


def test_cross_org_isolation(live: Live, arker: Arker) -> None:
    with arker.vm("busybox").fork() as vm, live.client("globex") as other:
        run = vm.run("echo mine")
        vm.sync.write_file("/home/user/secret", b"s")
        theirs = other.vm(vm.vm_id)
        for call in (
            lambda: other.get(vm.vm_id),
            lambda: theirs.run("echo hi"),
            lambda: theirs.run_status(run.run_id),
            lambda: theirs.sync.read_file("/home/user/secret"),
            lambda: theirs.fork(),
            lambda: theirs.delete(),
        ):
            with pytest.raises(ArkerError) as err:
                call()
            assert err.value.code == "not_found" and err.value.status == 404
        assert vm.vm_id not in [v.vm_id for v in other.list().items]


def test_path_attacks(arker: Arker) -> None:
    with arker.vm("busybox").fork() as vm:
        for bad in ("/home/user/../../etc/shadow", "/etc/shadow", "home/user/x"):
            with pytest.raises(ArkerError) as err:
                vm.sync.read_file(bad)
            assert err.value.code == "invalid_path"
        vm.run("echo vm-shadow > /etc/shadow", user="root")
        vm.run("ln -s /etc/shadow /home/user/link; ln -s ../../../../../etc/shadow /home/user/up")
        host_shadow = Path("/etc/shadow").read_bytes()
        for link in ("/home/user/link", "/home/user/up"):
            try:
                data = vm.sync.read_file(link)
            except ArkerError as exc:  # refusing is fine too; leaking is not
                assert exc.code in ("not_found", "invalid_path"), exc
            else:
                assert data == b"vm-shadow\n" and data != host_shadow
        # a write through a symlink stays inside the VM too
        vm.run("ln -s /etc/passwd /home/user/pw")
        host_passwd = Path("/etc/passwd").read_bytes()
        with contextlib.suppress(ArkerError):
            vm.sync.write_file("/home/user/pw", b"owned")
        assert Path("/etc/passwd").read_bytes() == host_passwd


def test_list_and_limits(arker: Arker, live: Live) -> None:
    import httpx

    with arker.vm("busybox").fork() as vm:
        assert vm.vm_id in [v.vm_id for v in arker.list(limit=1000).items]
        headers = {"Authorization": f"Bearer {live.keys['acme']}"}
        r = httpx.get(f"{live.url}/v1/vms", params={"limit": 0}, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        r = httpx.get(f"{live.url}/v1/goldens")
        assert r.status_code == 401
        r = httpx.post(
            f"{live.url}/v1/vms/busybox/fork",
            content=b"{",
            timeout=10,
            headers={**headers, "content-type": "application/json"},
        )
        assert r.status_code == 400
        assert "x-request-id" in r.headers
        assert httpx.get(f"{live.url}/metrics").status_code == 401
        assert "arker_forks_total" in live.metrics()


async def test_async_background_cancel_and_idempotency(aarker: AsyncArker) -> None:
    import anyio

    async with await aarker.vm("busybox").fork(durable=True) as vm:
        started = await vm.run("echo a; sleep 30", background=True, idempotency_key="a-bg")
        again = await vm.run("echo a; sleep 30", background=True, idempotency_key="a-bg")
        assert started.type == again.type == "started" and started.run_id == again.run_id
        with anyio.fail_after(10):
            while (await vm.run_status(started.run_id)).stdout != b"a\n":
                await anyio.sleep(0.05)
        cancelled = await vm.cancel_run(started.run_id)
        assert cancelled.state == "cancelled"
        r = await vm.run("echo durable", timeout_s=10)
        assert r.type == "completed" and r.stdout == b"durable\n"
        status = await vm.run_status(r.run_id)
        assert status.state == "completed" and status.retry_count == 0
