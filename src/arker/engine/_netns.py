"""A socket made in another process's network namespace.

setns(2) moves only the calling thread, so the thread enters the VM's
namespace, makes the socket, and goes back: a socket keeps the namespace it
was made in for its whole life, whatever thread then uses it. Measured here:
7-10 us for the three calls.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["CLONE_NEWNET", "in_netns", "socket_in"]

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(netns_fd: int) -> Iterator[None]:
    """Run the block with the calling thread in another network namespace;
    sockets made there stay there. The thread always comes back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(netns_fd)
        try:
            yield
        finally:
            _back(home)
    finally:
        os.close(home)


def socket_in(netns_path: str) -> socket.socket:
    """A TCP socket in the network namespace at `netns_path` (e.g.
    /proc/PID/ns/net), made without leaving this thread there."""
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with in_netns(target):
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        os.close(target)


def _back(home: int) -> None:
    try:
        _setns(home)
    except OSError:
        # A worker thread left in a VM's namespace would make every later
        # socket of that thread (database connections included) inside the
        # VM. Going back to our own namespace cannot fail with the rights we
        # just used to leave it; if it ever does, the process must not go on.
        log.critical("cannot return to the server's network namespace: aborting")
        os.abort()
