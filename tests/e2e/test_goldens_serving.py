"""Goldens while the server runs, over a real server and engine: publish a
VM as a golden (per org, or for all with an admin key), delete it while its
forks keep working, import a rootfs tarball as an operation (polled and
streamed), and the bad inputs: a name taken, another org's VM, a tarball
that is not a root filesystem, a body larger than the free space."""

from __future__ import annotations

import gzip
import io
import json
import os
import secrets
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from contract_check import check
from live import Live, make_live, stop_live
from sse import events

from arker import Arker, ArkerError


def _http(live: Live, org: str = "acme", *, admin: bool = False) -> httpx.Client:
    key = live.admin_key if admin else live.keys[org]
    return httpx.Client(
        base_url=live.url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        event_hooks={"response": [lambda r: (r.read(), check(r))]},
    )


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def _listed(http: httpx.Client) -> dict[str, dict[str, Any]]:
    r = http.get("/v1/goldens")
    assert r.status_code == 200, r.text
    return {g["name"]: g for g in r.json()["items"]}


def _pool_goldens(live: Live) -> list[str] | None:
    """The engine's goldens, as its pool has them; None where the server has
    no pool of its own (a cluster's replica: its goldens are on the hosts)."""
    for root in (live.server.data_dir / "pool" / "goldens", live.server.data_dir / "goldens"):
        if root.is_dir():
            return sorted(os.listdir(root))
    return None


def _spooled(live: Live) -> list[str]:
    tmp = live.server.data_dir / "tmp"
    return sorted(n for n in os.listdir(tmp) if n.startswith("golden-")) if tmp.is_dir() else []


@pytest.fixture
def http(live: Live) -> Iterator[httpx.Client]:
    with _http(live) as client:
        yield client


def test_publish_is_per_org_and_forks_outlive_a_delete(live: Live, http: httpx.Client) -> None:
    name = _name("tools")
    with (
        live.client() as acme,
        live.client("globex") as globex,
        _http(live, "globex") as other,
        acme.vm("busybox").fork(name="pub-src") as src,
    ):
        src.sync.write_file("/home/user/marker.txt", b"from acme\n")
        r = http.post("/v1/goldens", json={"name": name, "from_vm": src.vm_id})
        assert r.status_code == 201, r.text
        assert r.json()["name"] == name and r.json()["scope"] == "org"
        src.sync.write_file("/home/user/after.txt", b"later")  # not in the golden

        # Seen and forked by acme only; globex gets the answer of no golden.
        assert _listed(http)[name]["scope"] == "org"
        assert _listed(http)["busybox"]["scope"] == "all"
        assert name not in _listed(other)
        with pytest.raises(ArkerError) as err:
            globex.vm(name).fork()
        assert err.value.code == "not_found"
        # Nor can the engine's name of it be forked by anyone.
        pool = _pool_goldens(live)
        internal = [n for n in pool if n.startswith("O-")] if pool is not None else []
        assert internal or pool is None
        for n in internal or ["O-01M00000000000000000000000"]:
            r = other.post(f"/v1/vms/{n}/fork", json={})
            assert r.status_code == 404, r.text

        # The same name in another org is another golden.
        with globex.vm("busybox").fork(name="pub-other") as theirs:
            theirs.sync.write_file("/home/user/marker.txt", b"from globex\n")
            r = other.post("/v1/goldens", json={"name": name, "from_vm": theirs.vm_id})
            assert r.status_code == 201, r.text
        with globex.vm(name).fork() as g:
            assert g.sync.read_file("/home/user/marker.txt") == b"from globex\n"

        child = acme.vm(name).fork(name="pub-child")
        try:
            assert child.sync.read_file("/home/user/marker.txt") == b"from acme\n"
            with pytest.raises(ArkerError):
                child.sync.read_file("/home/user/after.txt")
            assert child.get().base_image == name

            # Bad input: a name taken (the org's own, a built-in), another
            # org's VM, a name the contract refuses; nothing changes.
            r = http.post("/v1/goldens", json={"name": name, "from_vm": src.vm_id})
            assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
            r = http.post("/v1/goldens", json={"name": "busybox", "from_vm": src.vm_id})
            assert r.status_code == 409
            r = other.post("/v1/goldens", json={"name": _name("x"), "from_vm": src.vm_id})
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            r = http.post("/v1/goldens", json={"name": "Bad/Name", "from_vm": src.vm_id})
            assert r.status_code == 422
            for body in (  # PostgreSQL's text holds no NUL: refused before it
                {"name": _name("nul"), "from_vm": src.vm_id, "description": "a\x00b"},
                {"name": _name("nul"), "from_vm": "a\x00b"},
            ):
                assert http.post("/v1/goldens", json=body).status_code == 422
            assert http.get("/v1/operations/op%00x").status_code == 422
            r = http.post(
                "/v1/goldens", json={"name": _name("y"), "from_vm": src.vm_id, "for_all": True}
            )
            assert r.status_code == 401  # for all: an admin key only
            r = other.delete(f"/v1/goldens/{name}")  # globex deletes its own, not acme's
            assert r.status_code == 204
            assert name in _listed(http)
            r = http.delete("/v1/goldens/busybox")  # built in: not an org's to delete
            assert r.status_code == 404

            # Deleted: gone for forks, while the fork made from it works on.
            before = _pool_goldens(live)
            r = http.delete(f"/v1/goldens/{name}")
            assert r.status_code == 204, r.text
            assert name not in _listed(http)
            after = _pool_goldens(live)
            if before is not None and after is not None:
                assert len(set(after) ^ set(before)) == 1  # its snapshot is gone
            with pytest.raises(ArkerError) as err:
                acme.vm(name).fork()
            assert err.value.code == "not_found"
            assert http.delete(f"/v1/goldens/{name}").status_code == 404
            out = child.run("cat /home/user/marker.txt && echo more > /home/user/m2")
            assert out.exit_code == 0 and out.stdout == b"from acme\n"
        finally:
            child.delete()


def test_an_admin_publishes_for_all(live: Live, http: httpx.Client) -> None:
    name = _name("shared")
    with (
        Arker(api_key=live.admin_key, base_url=live.url) as ops,
        _http(live, admin=True) as admin,
        _http(live, "globex") as other,
        live.client("globex") as globex,
    ):
        with ops.vm("busybox").fork(name="pub-all") as src:
            src.sync.write_file("/home/user/for-all.txt", b"everyone\n")
            body = {"name": name, "from_vm": src.vm_id, "for_all": True}
            r = admin.post("/v1/goldens", json=body)
            assert r.status_code == 201, r.text
            assert r.json()["scope"] == "all"
        assert _listed(http)[name]["scope"] == "all"
        assert _listed(other)[name]["scope"] == "all"
        with globex.vm(name).fork() as vm:
            assert vm.sync.read_file("/home/user/for-all.txt") == b"everyone\n"
        # An org cannot take a name that is every org's; nor delete it.
        with live.client() as acme, acme.vm("busybox").fork() as mine:
            r = http.post("/v1/goldens", json={"name": name, "from_vm": mine.vm_id})
            assert r.status_code == 409
        assert http.delete(f"/v1/goldens/{name}").status_code == 404
        assert admin.delete(f"/v1/goldens/{name}").status_code == 204
        assert name not in _listed(other)


def _rootfs(*, shell: bool = True, filler: bytes = b"") -> bytes:
    """A plain tar of a tiny root filesystem: busybox, /bin/sh, a user."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "home", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        home = tarfile.TarInfo("home/user")
        home.type, home.mode, home.uid, home.gid = tarfile.DIRTYPE, 0o755, 1000, 1000
        tar.addfile(home)
        busybox = Path("/bin/busybox").read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(busybox), 0o755
        tar.addfile(info, io.BytesIO(busybox))
        links = ["cat", "echo", "ls"] + (["sh"] if shell else [])
        for applet in links:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "/bin/busybox"
            tar.addfile(link)
        for rel, text in (
            ("etc/passwd", b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"),
            ("etc/group", b"root:x:0:\nuser:x:1000:\n"),
            ("etc/imported", b"yes\n" + filler),
        ):
            info = tarfile.TarInfo(rel)
            info.size, info.mode = len(text), 0o644
            tar.addfile(info, io.BytesIO(text))
    return buf.getvalue()


def _wait(http: httpx.Client, op: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while op["state"] == "running":
        assert time.monotonic() < deadline, op
        time.sleep(0.1)
        r = http.get(f"/v1/operations/{op['operation_id']}")
        assert r.status_code == 200, r.text
        op = r.json()
    return op


def test_import_is_an_operation_polled_or_streamed(live: Live, http: httpx.Client) -> None:
    plain = _rootfs()
    zstd = subprocess.run(["zstd", "-q", "-c"], input=plain, capture_output=True, check=True)
    bodies = {"plain": plain, "gzip": gzip.compress(plain), "zstd": zstd.stdout}
    made = []
    try:
        for kind, body in bodies.items():
            name = _name(f"imp-{kind}")
            # Streamed, as a client uploading a large file sends it.
            chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
            r = http.put(f"/v1/goldens/{name}", content=chunks, params={"description": kind})
            assert r.status_code == 202, r.text
            made.append(name)
            op = r.json()
            assert op["kind"] == "import_golden" and op["state"] in ("running", "succeeded")
            if kind == "zstd":
                url = f"/v1/operations/{op['operation_id']}/events"
                with http.stream("GET", url) as stream:
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    seen = [e for e in events(stream) if e is not None]
                assert seen[-1].event == "end"
                assert all(e.event == "progress" for e in seen[:-1])
                op = json.loads(seen[-1].data)
            else:
                op = _wait(http, op)
            assert op["state"] == "succeeded", op
            assert op["golden"]["name"] == name and op["golden"]["scope"] == "org"
            assert op["error"] is None
            assert _listed(http)[name]["description"] == kind
        with live.client() as acme, acme.vm(made[-1]).fork() as vm:
            out = vm.run("cat /etc/imported; echo $0")
            assert out.exit_code == 0 and out.stdout.startswith(b"yes\n"), out
        # Another org sees neither the golden nor the operation.
        with _http(live, "globex") as other:
            assert made[0] not in _listed(other)
            r = other.get(f"/v1/operations/{op['operation_id']}")
            assert r.status_code == 404
        assert _spooled(live) == []
    finally:
        for name in made:
            http.delete(f"/v1/goldens/{name}")


def test_import_refuses_what_is_not_a_root_filesystem(live: Live, http: httpx.Client) -> None:
    name = _name("noshell")
    before = _pool_goldens(live)
    r = http.put(f"/v1/goldens/{name}", content=_rootfs(shell=False))
    assert r.status_code == 202, r.text
    op = _wait(http, r.json())
    assert op["state"] == "failed" and op["golden"] is None
    assert op["error"]["code"] == "invalid_request" and op["error"]["status"] == 400
    assert "/bin/sh" in op["error"]["message"]
    # Nothing kept: no golden, no staging, no spool file; the name is free.
    assert name not in _listed(http)
    assert _pool_goldens(live) == before
    assert _spooled(live) == []
    for junk in (b"not a tar at all" * 100, b""):
        r = http.put(f"/v1/goldens/{name}", content=junk)
        assert r.status_code == 202, r.text
        op = _wait(http, r.json())
        assert op["state"] == "failed" and op["error"]["status"] == 400, op
    assert _pool_goldens(live) == before
    r = http.put(f"/v1/goldens/{name}", content=_rootfs())
    op = _wait(http, r.json())
    assert op["state"] == "succeeded", op
    r = http.put(f"/v1/goldens/{_name('nul')}", params={"description": "a\x00"}, content=b"x")
    assert r.status_code == 422
    # A name taken: 409 at once, before the body is read.
    r = http.put(f"/v1/goldens/{name}", content=_rootfs())
    assert r.status_code == 409, r.text
    r = http.put("/v1/goldens/busybox", content=_rootfs())
    assert r.status_code == 409
    assert http.delete(f"/v1/goldens/{name}").status_code == 204
    assert _pool_goldens(live) == before


def test_a_body_past_the_free_space_is_refused_and_leaves_nothing(
    single_db: str | None, tmp_path: Path
) -> None:
    probe = Path("/tmp")
    st = os.statvfs(probe)
    free_mib = st.f_bavail * st.f_frsize // 2**20
    # A reserve that leaves ~200 MiB to write: the import's body is larger.
    live = make_live(single_db, "--pool-reserve-mib", str(max(free_mib - 200, 64)))
    try:
        st = os.statvfs(live.server.data_dir)
        room = st.f_bavail * st.f_frsize - (max(free_mib - 200, 64) * 2**20)
        piece = b"\0" * 2**20

        def body() -> Iterator[bytes]:
            for _ in range(max(room, 0) // 2**20 + 300):
                yield piece

        with _http(live) as http:
            r = http.put(f"/v1/goldens/{_name('huge')}", content=body())
            assert r.status_code == 507, r.text
            assert r.json()["error"]["code"] == "insufficient_storage"
            assert _spooled(live) == []
            assert [g for g in _listed(http) if g.startswith("huge")] == []
    finally:
        stop_live(live)


async def test_the_sdk_publishes_imports_and_deletes(live: Live, tmp_path: Path) -> None:
    tarball = tmp_path / "root.tar.gz"
    tarball.write_bytes(gzip.compress(_rootfs()))
    bad = tmp_path / "nosh.tar"
    bad.write_bytes(_rootfs(shell=False))
    published, imported = _name("sdk-pub"), _name("sdk-imp")
    async with live.aclient() as acme:
        async with await acme.vm("busybox").fork(name="sdk-src") as src:
            await src.sync.write_file("/home/user/sdk.txt", b"sdk\n")
            golden = await acme.publish_golden(published, src.vm_id, description="by the sdk")
            assert golden.name == published and golden.scope == "org"
        op = await acme.import_golden(imported, tarball)
        assert op.state == "succeeded" and op.golden is not None and op.golden.name == imported
        names = {g.name: g.scope for g in await acme.goldens()}
        assert names[published] == names[imported] == "org" and names["busybox"] == "all"
        with pytest.raises(ArkerError) as err:
            await acme.import_golden(_name("sdk-bad"), bad)
        assert err.value.code == "invalid_request" and err.value.status == 400
        running = await acme.import_golden(_name("sdk-nowait"), bad, wait=False)
        assert running.kind == "import_golden"
        with pytest.raises(ArkerError):
            await acme.wait_operation(running.operation_id, timeout_s=60)
        async with await acme.vm(published).fork() as vm:
            assert await vm.sync.read_file("/home/user/sdk.txt") == b"sdk\n"
            await acme.delete_golden(published)
            assert (await vm.run("cat /home/user/sdk.txt")).stdout == b"sdk\n"
        await acme.delete_golden(imported)
        with pytest.raises(ArkerError) as err:
            await acme.delete_golden(imported)
        assert err.value.code == "not_found"
