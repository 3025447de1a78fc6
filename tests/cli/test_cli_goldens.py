"""`arker goldens` on a fresh local engine (no server: the pool is one process's)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_servers import arker, remove_data_dir

pytestmark = pytest.mark.root


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    try:
        yield path
    finally:
        remove_data_dir(path)


def _rootfs_tarball(where: Path, evil: bool = False) -> Path:
    root = where / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "home" / "user").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"
    )
    tarball = where / "rootfs.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(root, arcname=".")
        if evil:
            info = tarfile.TarInfo("../escape")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    return tarball


def test_build_import_ls(data_dir: Path, tmp_path: Path) -> None:
    built = arker("goldens", "build", "busybox", "--data-dir", str(data_dir))
    assert built.returncode == 0, built.stderr
    assert b"golden busybox ready" in built.stderr
    imported = arker(
        "goldens", "import", "mini", str(_rootfs_tarball(tmp_path)), "--data-dir", str(data_dir)
    )
    assert imported.returncode == 0, imported.stderr
    listed = arker("goldens", "ls", "--json", "--data-dir", str(data_dir))
    names = [g["name"] for g in json.loads(listed.stdout)]
    assert names == ["busybox", "mini"]
    table = arker("goldens", "ls", "--data-dir", str(data_dir))
    assert b"mini" in table.stdout and b"imported from rootfs.tar.gz" in table.stdout


def test_errors_are_one_line(data_dir: Path, tmp_path: Path) -> None:
    unknown = arker("goldens", "build", "nope", "--data-dir", str(data_dir))
    assert unknown.returncode == 1
    assert unknown.stderr == b"error: not_found: no known golden 'nope'\n"
    evil = arker(
        "goldens",
        "import",
        "evil",
        str(_rootfs_tarball(tmp_path, evil=True)),
        "--data-dir",
        str(data_dir),
    )
    assert evil.returncode == 1
    [line] = evil.stderr.decode().splitlines()
    assert line.startswith("error: invalid_request: ")
    missing = arker(
        "goldens", "import", "x", str(tmp_path / "none.tar"), "--data-dir", str(data_dir)
    )
    assert missing.returncode == 2  # a usage error, from the argument's check
    nowhere = arker("goldens", "ls", "--data-dir", str(tmp_path / "nowhere"))
    assert nowhere.returncode == 1
    assert nowhere.stderr.startswith(b"error: not_found: no data directory at ")
    assert not (tmp_path / "nowhere").exists()
