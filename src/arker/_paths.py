"""The one rule for file paths, shared by the SDK (checked before any request)
and the engine (checked again on the host): absolute, under /home/user, and no
`..` component. Symlinks are the engine's business: it resolves them inside the
VM's root."""

from __future__ import annotations

from arker.errors import ArkerError, ErrorCode

__all__ = ["HOME", "check_path"]

HOME = "/home/user"


def check_path(path: str, *, anywhere: bool = False, home: bool = False) -> str:
    """Return `path` normalised (no `.` or empty components), or raise
    `ArkerError(invalid_path)`. `anywhere`: any file of the VM, not only
    under /home/user (the engine's own writes, such as /etc/resolv.conf).
    `home`: /home/user itself is accepted too (a directory to list or pack)."""
    if not isinstance(path, str) or not path:
        raise ArkerError(ErrorCode.INVALID_PATH, "path must be a non-empty string")
    if "\x00" in path:
        raise ArkerError(ErrorCode.INVALID_PATH, "path must not contain NUL bytes")
    if not path.startswith("/"):
        raise ArkerError(ErrorCode.INVALID_PATH, f"path must be absolute: {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArkerError(ErrorCode.INVALID_PATH, f"path must not contain '..': {path!r}")
    if not parts:
        raise ArkerError(ErrorCode.INVALID_PATH, f"path must name a file: {path!r}")
    if not anywhere and (parts[:2] != ["home", "user"] or len(parts) < (2 if home else 3)):
        raise ArkerError(ErrorCode.INVALID_PATH, f"path must be under {HOME}/: {path!r}")
    if len(path) > 4096 or any(len(p) > 255 for p in parts):
        raise ArkerError(ErrorCode.INVALID_PATH, "path is too long")
    return "/" + "/".join(parts)
