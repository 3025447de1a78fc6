"""Tar archives made member by member, for the tests that attack archive
uploads (engine and e2e alike)."""

from __future__ import annotations

import io
import tarfile

__all__ = ["member", "tar"]


def tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """A plain pax tar of `members`, each (header, data or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    """A header of `kind` (a file unless told), mode 0644, with `attrs` set."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info
