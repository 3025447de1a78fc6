"""Where a running `arker serve` answers, kept in its data directory
(`server.json`), so that commands acting on that directory (`arker goldens`)
go through the API while a server holds the pool instead of refusing."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

__all__ = ["clear_address", "read_address", "write_address"]

FILE = "server.json"


def write_address(data_dir: str, host: str, port: int, api_prefix: str = "") -> Path:
    """Record this process's API URL (a wildcard address as loopback)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    url = f"http://{host}:{port}{api_prefix.rstrip('/')}"
    path = Path(data_dir) / FILE
    tmp = path.with_name(f".{FILE}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    os.replace(tmp, path)
    return path


def clear_address(data_dir: str) -> None:
    """Remove the record, if it is this process's."""
    path = Path(data_dir) / FILE
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def read_address(data_dir: str | os.PathLike[str]) -> str | None:
    """The URL of the server running on `data_dir`, if it wrote one and its
    process is alive."""
    try:
        found = json.loads((Path(data_dir) / FILE).read_text())
        url, pid = str(found["url"]), int(found["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return url
