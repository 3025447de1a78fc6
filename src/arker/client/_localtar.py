"""Local directories to and from tar bytes, for `vm.fs.upload_dir` and
`vm.fs.download_dir`. Local disk only, no network: shared by both clients.

Unpacking uses tarfile's `data` filter (Python's own guard against archives
that escape: absolute names, `..`, links out, devices), so even a hostile
server cannot write outside the local directory.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

from arker.errors import ArkerError, ErrorCode

__all__ = ["pack_dir", "unpack_into"]


def pack_dir(local: str | os.PathLike[str]) -> bytes:
    """The directory's contents (names relative to it) as tar bytes: files,
    directories and symlinks; FIFOs, sockets and devices are left out."""
    root = Path(local)
    if not root.is_dir():
        raise ArkerError(ErrorCode.INVALID_REQUEST, f"{root} is not a local directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            here = Path(dirpath)
            for name in sorted(dirnames) + sorted(filenames):
                path = here / name
                mode = path.lstat().st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                    continue
                info = tar.gettarinfo(str(path), str(path.relative_to(root)))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isreg():
                    with path.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def unpack_into(data: bytes, local: str | os.PathLike[str]) -> None:
    """Unpack tar bytes into the local directory (made if missing)."""
    root = Path(local)
    root.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, EOFError) as exc:
        message = f"the archive could not be unpacked: {exc}"
        raise ArkerError(ErrorCode.INVALID_RESPONSE, message) from exc
