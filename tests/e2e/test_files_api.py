"""The files API over a real server and engine: /fs/ (list, stat, mkdir,
move, remove) and /archive (a directory as a tar, a tar into a directory),
through the SDK, raw HTTP and `arker cp -r`, and the attacks on them: links
out of the VM, `..` and absolute tar names, links out of the target, device
nodes, a header-only bomb, another org's VM, huge directories."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from contract_check import check
from live import ARKER, Live
from tarballs import member as _m
from tarballs import tar as _tar

from arker import Arker, ArkerError, AsyncArker, Computer


@pytest.fixture
def vm(arker: Arker) -> Iterator[Computer]:
    with arker.vm("busybox").fork(name="fs-api") as made:
        yield made


def _code(call: object) -> str:
    assert callable(call)
    with pytest.raises(ArkerError) as e:
        call()
    return str(e.value.code)


def _http(live: Live, org: str = "acme") -> httpx.Client:
    headers = {"Authorization": f"Bearer {live.keys[org]}"}
    return httpx.Client(base_url=live.url, headers=headers, timeout=60)


def test_list_stat_mkdir_move_remove(vm: Computer) -> None:
    made = vm.fs.mkdir("/home/user/a/b", parents=True)
    assert made.type == "dir" and made.path == "/home/user/a/b"
    vm.sync.write_file("/home/user/a/b/f.txt", "hello")
    vm.sync.write_file("/home/user/a/g.txt", "x")
    listing = vm.fs.list("/home/user/a", depth=2)
    assert [(e.name, e.type) for e in listing.entries] == [
        ("b", "dir"),
        ("b/f.txt", "file"),
        ("g.txt", "file"),
    ]
    assert listing.next_offset is None and not listing.truncated
    st = vm.fs.stat("/home/user/a/b/f.txt")
    assert (st.size, st.type, st.mode) == (5, "file", 0o644)
    owners = vm.run("ls -lnd /home/user/a /home/user/a/b /home/user/a/b/f.txt").stdout_text
    assert all(line.split()[2:4] == ["1000", "1000"] for line in owners.splitlines()), owners

    with pytest.raises(ArkerError) as e:
        vm.fs.list("/home/user/a/g.txt")
    assert (e.value.code, e.value.status) == ("conflict", 409)
    assert "not a directory" in str(e.value)
    assert _code(lambda: vm.fs.stat("/home/user/none")) == "not_found"
    assert _code(lambda: vm.fs.mkdir("/home/user/a")) == "conflict"
    assert _code(lambda: vm.fs.mkdir("/home/user/x/y")) == "not_found"

    with pytest.raises(ArkerError) as e:
        vm.fs.move("/home/user/a/g.txt", "/home/user/a/b/f.txt")
    assert e.value.code == "conflict" and "overwrite" in str(e.value)
    moved = vm.fs.move("/home/user/a/g.txt", "/home/user/a/b/f.txt", overwrite=True)
    assert moved.size == 1 and vm.sync.read_file("/home/user/a/b/f.txt") == b"x"

    with pytest.raises(ArkerError) as e:
        vm.fs.remove("/home/user/a")
    assert e.value.code == "conflict" and "recursive" in str(e.value)
    vm.fs.remove("/home/user/a", recursive=True)
    assert _code(lambda: vm.fs.stat("/home/user/a")) == "not_found"
    assert _code(lambda: vm.fs.list("/etc")) == "invalid_path"
    assert _code(lambda: vm.fs.remove("/home/user")) == "invalid_path"


def test_symlinks_resolve_inside_the_vm_never_on_the_host(vm: Computer, live: Live) -> None:
    host_dir = str(live.server.data_dir)  # a real directory of the host, absent in the VM
    marker = Path(host_dir) / f"marker-{vm.vm_id}"
    marker.write_text("HOST")
    r = vm.run(f"ln -s /etc /home/user/etc && ln -s {host_dir} /home/user/host && echo ok")
    assert r.stdout_text == "ok\n"
    names = {e.name for e in vm.fs.list("/home/user/etc").entries}
    assert "passwd" in names and marker.name not in names
    assert vm.fs.stat("/home/user/host").link_target == host_dir
    for call in (
        lambda: vm.fs.list("/home/user/host"),
        lambda: vm.fs.mkdir("/home/user/host/x"),
        lambda: vm.fs.download_dir("/home/user/host", "/tmp/agents-never"),
    ):
        assert _code(call) == "not_found"
    assert not Path("/tmp/agents-never").exists()
    # moving and removing the link act on the link, not its target
    vm.fs.move("/home/user/host", "/home/user/host2")
    vm.fs.remove("/home/user/host2")
    assert marker.read_text() == "HOST"
    marker.unlink()


async def test_a_huge_directory_comes_in_bounded_pages(aarker: AsyncArker) -> None:
    vm = await aarker.vm("busybox").fork(name="fs-huge")
    try:
        r = await vm.run("mkdir /home/user/big && cd /home/user/big && seq 2500 | xargs touch")
        assert r.type == "completed" and r.exit_code == 0, r
        seen: list[str] = []
        offset: int | None = 0
        while offset is not None:
            page = await vm.fs.list("/home/user/big", limit=1000, offset=offset)
            assert len(page.entries) <= 1000
            seen += [e.name for e in page.entries]
            offset = page.next_offset
        assert len(seen) == 2500 and seen == sorted(seen)
        with pytest.raises(ArkerError) as e:
            await vm.fs.list("/home/user/big", limit=5000)
        assert e.value.code == "invalid_request"
    finally:
        await vm.delete()


def test_upload_and_download_a_directory(vm: Computer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg/sub").mkdir(parents=True)
    (src / "pkg/sub/mod.py").write_text("X = 1\n")
    (src / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (src / "run.sh").chmod(0o755)
    (src / "big.bin").write_bytes(os.urandom(3 * 2**20))
    os.symlink("pkg/sub/mod.py", src / "link")
    done = vm.fs.upload_dir(src, "/home/user/app")
    assert done.path == "/home/user/app" and done.entries == 6
    r = vm.run("cd /home/user/app && ./run.sh && cat link && ls -ln run.sh")
    assert r.stdout_text.startswith("ran\nX = 1\n"), r
    assert r.stdout_text.splitlines()[-1].split()[2:4] == ["1000", "1000"]
    out = vm.fs.download_dir("/home/user/app", tmp_path / "back")
    assert (out / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert os.readlink(out / "link") == "pkg/sub/mod.py"
    assert os.access(out / "run.sh", os.X_OK)
    # a second upload merges into what is there
    (src / "run.sh").write_text("#!/bin/sh\necho again\n")
    vm.fs.upload_dir(src, "/home/user/app")
    assert vm.run("/home/user/app/run.sh").stdout_text == "again\n"


def test_archive_as_zstd_and_gzip_and_plain(vm: Computer, live: Live) -> None:
    vm.sync.write_file("/home/user/z/a.txt", "A" * 10_000)
    with _http(live) as http:
        r = http.get(
            f"/v1/vms/{vm.vm_id}/archive",
            params={"path": "/home/user/z"},
            headers={"Accept-Encoding": "zstd"},
        )
        check(r)
        assert r.status_code == 200 and r.headers["content-encoding"] == "zstd"
        raw = subprocess.run(["zstd", "-dcq"], input=r.content, capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(raw.stdout)) as tar:
            member = tar.extractfile("a.txt")
            assert member is not None and member.read() == b"A" * 10_000
        plain = http.get(f"/v1/vms/{vm.vm_id}/archive", params={"path": "/home/user/z"})
        check(plain)
        assert "content-encoding" not in plain.headers and plain.content[:5] == b"a.txt"
        # PUT with Content-Encoding gzip (and the magic says the same)
        import gzip

        body = gzip.compress(_tar((_m("g.txt"), b"gz")))
        r = http.put(
            f"/v1/vms/{vm.vm_id}/archive",
            params={"path": "/home/user/g"},
            content=body,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/x-tar"},
        )
        check(r)
        assert r.status_code == 200 and r.json()["entries"] == 1
    assert vm.sync.read_file("/home/user/g/g.txt") == b"gz"


BAD_TARS = {
    "dotdot": lambda: _tar((_m("ok"), b"1"), (_m("../../etc/escape"), b"x")),
    "absolute": lambda: _tar((_m("ok"), b"1"), (_m("/etc/escape"), b"x")),
    "symlink out": lambda: _tar((_m("l", tarfile.SYMTYPE, linkname="/etc"), None)),
    "symlink up": lambda: _tar((_m("l", tarfile.SYMTYPE, linkname="../../../etc"), None)),
    "hardlink out": lambda: _tar((_m("h", tarfile.LNKTYPE, linkname="../../../etc/passwd"), None)),
    "hardlink absolute": lambda: _tar((_m("h", tarfile.LNKTYPE, linkname="/etc/passwd"), None)),
    "device": lambda: _tar((_m("null", tarfile.CHRTYPE, devmajor=1, devminor=3), None)),
    "fifo": lambda: _tar((_m("f", tarfile.FIFOTYPE), None)),
    "through its own symlink": lambda: _tar(
        (_m("l", tarfile.SYMTYPE, linkname="."), None), (_m("l/x"), b"x")
    ),
    # A header that claims more than the server's file limit: refused before
    # a byte of it is read (the data is not even there).
    "bomb": lambda: (
        _m("ok", size=1).tobuf(tarfile.PAX_FORMAT)
        + b"1".ljust(512, b"\0")
        + _m("huge", size=2**40).tobuf(tarfile.PAX_FORMAT)
        + b"\0" * 1024
    ),
    "garbage": lambda: b"not a tar at all " * 100,
}


@pytest.mark.parametrize("kind", sorted(BAD_TARS))
def test_a_bad_tar_is_400_with_nothing_written(vm: Computer, live: Live, kind: str) -> None:
    vm.fs.mkdir("/home/user/into")
    with _http(live) as http:
        for target in ("/home/user/into", "/home/user/new"):
            r = http.put(
                f"/v1/vms/{vm.vm_id}/archive", params={"path": target}, content=BAD_TARS[kind]()
            )
            check(r)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    assert vm.fs.list("/home/user/into").entries == []
    names = [e.name for e in vm.fs.list("/home/user").entries]
    assert "new" not in names and not any(n.startswith(".arker") for n in names)
    assert b"escape" not in vm.run("ls /etc /").stdout


def test_another_orgs_vm_is_not_found(vm: Computer, live: Live) -> None:
    vm.fs.mkdir("/home/user/d")
    with _http(live, "globex") as http:
        base = f"/v1/vms/{vm.vm_id}"
        calls = [
            http.get(f"{base}/fs/list", params={"path": "/home/user"}),
            http.get(f"{base}/fs/stat", params={"path": "/home/user/d"}),
            http.post(f"{base}/fs/mkdir", json={"path": "/home/user/e"}),
            http.post(
                f"{base}/fs/move", json={"source": "/home/user/d", "destination": "/home/user/e"}
            ),
            http.delete(f"{base}/fs", params={"path": "/home/user/d", "recursive": "true"}),
            http.get(f"{base}/archive", params={"path": "/home/user"}),
            http.put(f"{base}/archive", params={"path": "/home/user/x"}, content=_tar()),
        ]
    for r in calls:
        check(r)
        assert r.status_code == 404, (r.request.url, r.text)
    assert [e.name for e in vm.fs.list("/home/user").entries] == ["d"]


@pytest.mark.skipif(ARKER is None, reason="needs the arker console script")
def test_cli_cp_r_both_ways(vm: Computer, live: Live, tmp_path: Path) -> None:
    src = tmp_path / "proj"
    (src / "lib").mkdir(parents=True)
    (src / "lib/x.txt").write_text("x")
    env = {**os.environ, "ARKER_API_KEY": live.keys["acme"], "ARKER_BASE_URL": live.url}
    assert ARKER is not None

    def cp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ARKER, "cp", "-r", *args], env=env, capture_output=True, text=True)

    up = cp(str(src), f"{vm.vm_id}:/home/user/")
    assert up.returncode == 0, up.stderr
    assert vm.sync.read_file("/home/user/proj/lib/x.txt") == b"x"
    up = cp(str(src), f"{vm.vm_id}:/home/user/proj")  # an existing directory: goes inside
    assert up.returncode == 0, up.stderr
    assert vm.sync.read_file("/home/user/proj/proj/lib/x.txt") == b"x"
    down = cp(f"{vm.vm_id}:/home/user/proj", str(tmp_path / "back"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "back/lib/x.txt").read_text() == "x"
    assert (tmp_path / "back/proj/lib/x.txt").read_text() == "x"
