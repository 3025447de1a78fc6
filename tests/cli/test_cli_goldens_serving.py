"""`arker goldens` while `arker serve` holds the pool: build, import, ls and
rm go through its API (found in server.json, with a temporary admin key that
is revoked after) instead of refusing, and what they make every org forks."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_servers import LocalServer, arker

from arker import Arker

pytestmark = pytest.mark.root


def _rootfs_tarball(where: Path, shell: bool = True) -> Path:
    root = where / f"rootfs-{shell}"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "home" / "user").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    if shell:
        (root / "bin" / "sh").symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    tarball = where / f"rootfs-{shell}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(root, arcname=".")
    return tarball


def _keys(server: LocalServer) -> str:
    return arker("keys", "ls", "--data-dir", str(server.data_dir)).stdout.decode()


def test_goldens_go_through_the_running_server(server: LocalServer, tmp_path: Path) -> None:
    data = ["--data-dir", str(server.data_dir)]
    assert (server.data_dir / "server.json").is_file()
    keys_before = _keys(server).count("arker-admin")

    imported = arker("goldens", "import", "cli-mini", str(_rootfs_tarball(tmp_path)), *data)
    assert imported.returncode == 0, imported.stderr
    assert b"golden cli-mini ready" in imported.stderr
    assert b"in use by another process" not in imported.stderr

    listed = arker("goldens", "ls", "--json", *data)
    assert listed.returncode == 0, listed.stderr
    names = [g["name"] for g in json.loads(listed.stdout)]
    assert "busybox" in names and "cli-mini" in names

    # For every org: the server's key forks it.
    with (
        Arker(api_key=server.api_key, base_url=server.base_url) as client,
        client.vm("cli-mini").fork() as vm,
    ):
        assert vm.run("echo ok").stdout == b"ok\n"
        again = arker("goldens", "build", "busybox", *data)  # there: kept as it is
        assert again.returncode == 0, again.stderr
        removed = arker("goldens", "rm", "cli-mini", *data)
        assert removed.returncode == 0, removed.stderr
        assert vm.run("echo still").stdout == b"still\n"  # the fork outlives it
    listed = arker("goldens", "ls", "--json", *data)
    assert "cli-mini" not in [g["name"] for g in json.loads(listed.stdout)]

    # Errors come back as one line; nothing is kept of a bad import.
    bad = arker("goldens", "import", "cli-nosh", str(_rootfs_tarball(tmp_path, False)), *data)
    assert bad.returncode == 1
    [line] = bad.stderr.decode().strip().splitlines()[-1:]
    assert line.startswith("error: invalid_request: ") and "/bin/sh" in line
    gone = arker("goldens", "rm", "cli-nosh", *data)
    assert gone.returncode == 1 and gone.stderr.startswith(b"error: not_found: ")
    # Each command's temporary admin key was revoked once it was done.
    keys = _keys(server)
    made = [ln for ln in keys.splitlines() if "arker-admin" in ln]
    assert len(made) > keys_before
    assert all(ln.split()[-1] != "-" for ln in made), keys


def test_build_through_the_server_makes_a_known_golden(
    start_another: Callable[..., LocalServer],
) -> None:
    other = start_another()
    data = ["--data-dir", str(other.data_dir)]
    removed = arker("goldens", "rm", "busybox", *data)  # through the API, an admin's right
    assert removed.returncode == 0, removed.stderr
    built = arker("goldens", "build", "busybox", *data)
    assert built.returncode == 0, built.stderr
    assert b"golden busybox ready" in built.stderr
    with (
        Arker(api_key=other.api_key, base_url=other.base_url) as client,
        client.vm("busybox").fork() as vm,
    ):
        assert vm.run("id -u user").stdout == b"1000\n"
    assert list((other.data_dir / "tmp").glob(".build-*")) == []
