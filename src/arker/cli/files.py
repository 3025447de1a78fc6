"""`arker cp` and `arker cat`: files into, out of and between VMs.

`VM:/path` marks the VM side. Data goes to stdout; notes for people go to stderr.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any

import typer

from arker.cli._connect import ApiKey, BaseUrl, Region, connect
from arker.cli._output import bytes_progress, cli_errors, err_console, fail, spinner, write_stdout

if TYPE_CHECKING:
    from arker import Arker

__all__ = ["register"]

# Below this, a transfer is over before a bar would be read.
PROGRESS_MIN_BYTES = 8 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024


def _split_remote(spec: str) -> tuple[str, str] | None:
    """`VM:/path` -> (VM, /path); anything else is a local path. The remote
    path must be absolute, so `./a:b` or `a:b` stay local."""
    vm, sep, path = spec.partition(":")
    if sep and vm and "/" not in vm and path.startswith("/"):
        return vm, path
    return None


def _read_local(path: Path) -> bytes:
    size = path.stat().st_size
    if size < PROGRESS_MIN_BYTES:
        return path.read_bytes()
    chunks = []
    with bytes_progress(f"reading {path.name}", size) as advance, path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            chunks.append(chunk)
            advance(len(chunk))
    return b"".join(chunks)


def _write_local(path: Path, data: bytes) -> None:
    if len(data) < PROGRESS_MIN_BYTES:
        path.write_bytes(data)
        return
    view = memoryview(data)
    with bytes_progress(f"writing {path.name}", len(data)) as advance, path.open("wb") as f:
        for start in range(0, len(data), CHUNK_BYTES):
            advance(f.write(view[start : start + CHUNK_BYTES]))


def cp(
    src: Annotated[str, typer.Argument(help="LOCAL or VM:/home/user/PATH")],
    dst: Annotated[str, typer.Argument(help="LOCAL or VM:/home/user/PATH")],
    recursive: Annotated[
        bool, typer.Option("-r", "--recursive", help="Copy a directory and all in it")
    ] = False,
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """Copy a file (or with -r a directory) into, out of, or between VMs;
    `VM:` marks the VM side.

    Large files show a bar while they are read or written locally; the SDK
    sends a file in one request, so the network part shows a spinner with
    the time taken, not a byte count it does not have. With -r, as cp -r: a
    destination that is a directory already gets the source inside it.
    """
    remote_src, remote_dst = _split_remote(src), _split_remote(dst)
    if remote_src is None and remote_dst is None:
        fail("invalid_request", "one side must be VM:/home/user/PATH")
    if recursive:
        with connect(api_key, region, base_url) as arker:
            _cp_dir(arker, src, dst, remote_src, remote_dst)
        return
    with connect(api_key, region, base_url) as arker:
        if remote_src is None:
            data = _read_local(Path(src))
            name = Path(src).name
        else:
            with spinner(f"fetching {src}"):
                data = arker.vm(remote_src[0]).sync.read_file(remote_src[1])
            name = PurePosixPath(remote_src[1]).name
        if remote_dst is not None:
            vm_id, path = remote_dst
            if path.endswith("/"):
                path += name
            with spinner(f"sending {len(data):,} bytes to {vm_id}:{path}"):
                arker.vm(vm_id).sync.write_file(path, data)
            return
    local = Path(dst)
    if local.is_dir():
        local = local / name
    _write_local(local, data)


def _cp_dir(
    arker: Arker,
    src: str,
    dst: str,
    remote_src: tuple[str, str] | None,
    remote_dst: tuple[str, str] | None,
) -> None:
    name = PurePosixPath(remote_src[1]).name if remote_src else Path(src).resolve().name
    if remote_dst is None:
        local = Path(dst)
        if local.is_dir():
            local = local / name
        assert remote_src is not None
        with spinner(f"fetching {src}"):
            arker.vm(remote_src[0]).fs.download_dir(remote_src[1], local)
        return
    vm_id, path = remote_dst
    target = arker.vm(vm_id)
    if path.endswith("/") or _remote_is_dir(target.fs, path):
        path = path.rstrip("/") + "/" + name
    if remote_src is None:
        with spinner(f"sending {src} to {vm_id}:{path}"):
            done = target.fs.upload_dir(src, path)
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="arker-cp-") as tmp:
            with spinner(f"fetching {src}"):
                arker.vm(remote_src[0]).fs.download_dir(remote_src[1], tmp)
            with spinner(f"sending to {vm_id}:{path}"):
                done = target.fs.upload_dir(tmp, path)
    err_console.print(
        f"{done.entries} entries, {done.bytes:,} bytes to {vm_id}:{done.path}", highlight=False
    )


def _remote_is_dir(fs: Any, path: str) -> bool:
    from arker import ArkerError

    try:
        return bool(fs.stat(path).type == "dir")
    except ArkerError as error:
        if error.code == "not_found":
            return False
        raise


def cat(
    spec: Annotated[str, typer.Argument(metavar="VM:PATH", help="VM:/home/user/PATH")],
    api_key: ApiKey = None,
    region: Region = None,
    base_url: BaseUrl = None,
) -> None:
    """Print a VM's file to stdout, byte for byte."""
    remote = _split_remote(spec)
    if remote is None:
        fail("invalid_request", f"expected VM:/home/user/PATH, got {spec!r}")
    with connect(api_key, region, base_url) as arker:
        write_stdout(arker.vm(remote[0]).sync.read_file(remote[1]))


def register(app: typer.Typer) -> None:
    """Add `cp` and `cat` to the `arker` app."""
    for func in (cp, cat):
        app.command()(cli_errors(func))
