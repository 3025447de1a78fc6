"""openat2(2) through ctypes: path resolution the kernel keeps inside a root.

    struct open_how { __u64 flags; __u64 mode; __u64 resolve; }   24 bytes

Python has no binding; the syscall number is 437 on every architecture that
uses the generic table (x86_64 and arm64 alike).
"""

from __future__ import annotations

import ctypes
import os

__all__ = [
    "RESOLVE_BENEATH",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "RESOLVE_NO_XDEV",
    "openat2",
]

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_SYS_OPENAT2 = 437


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """Open `path` relative to `dir_fd` under the `resolve` rules; return the fd.

    RESOLVE_IN_ROOT treats `dir_fd` as "/" for the whole walk: absolute
    symlinks and `..` land inside it, as they would for a process chrooted
    there. Raises OSError with the kernel's errno (EXDEV, ELOOP, ENOENT, ...).
    """
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = _syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)
