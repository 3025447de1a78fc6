"""rtnetlink by hand: the four requests a VM's network needs (a veth pair into
its namespace, an address, link up, a default route), sent in one batch per
namespace (the caller enters the VM's namespace with _netns.in_netns).

`ip` costs ~5 ms a call here and pyroute2 starts helper processes (15 ms to
open a netns); a netlink socket made inside the VM's namespace and a batch of
messages costs well under a millisecond.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

__all__ = ["Batch", "delete_link", "netlink_socket", "set_sysctl"]

_RTM_NEWLINK, _RTM_DELLINK, _RTM_NEWADDR, _RTM_NEWROUTE = 16, 17, 20, 24
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
_NLMSG_ERROR = 2
_IFLA_IFNAME, _IFLA_MTU, _IFLA_LINKINFO, _IFLA_NET_NS_FD = 3, 4, 18, 28
_IFLA_INFO_KIND, _IFLA_INFO_DATA, _VETH_INFO_PEER = 1, 2, 1
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_GATEWAY, _RTA_OIF = 5, 4
_IFF_UP = 0x1
_RT_TABLE_MAIN, _RTPROT_BOOT, _RT_SCOPE_UNIVERSE, _RTN_UNICAST = 254, 3, 0, 1


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, flags, change)


class Batch:
    """Requests for one netlink socket, sent together; each is acknowledged,
    and the first failure is raised as OSError with its errno."""

    def __init__(self) -> None:
        self._messages: list[bytes] = []

    def _add(self, kind: int, flags: int, body: bytes) -> None:
        seq = len(self._messages) + 1
        header = struct.pack(
            "=IHHII", 16 + len(body), kind, _NLM_F_REQUEST | _NLM_F_ACK | flags, seq, 0
        )
        self._messages.append(header + body)

    def veth(self, name: str, peer: str, peer_netns_fd: int, mtu: int) -> None:
        """A veth pair: `name` here, `peer` in the namespace of `peer_netns_fd`."""
        peer_info = _ifinfo() + _attr(_IFLA_IFNAME, peer.encode() + b"\0")
        peer_info += _attr(_IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
        peer_info += _attr(_IFLA_MTU, struct.pack("=I", mtu))
        info = _attr(_IFLA_INFO_KIND, b"veth\0") + _attr(
            _IFLA_INFO_DATA, _attr(_VETH_INFO_PEER, peer_info)
        )
        body = _ifinfo() + _attr(_IFLA_IFNAME, name.encode() + b"\0")
        body += _attr(_IFLA_MTU, struct.pack("=I", mtu)) + _attr(_IFLA_LINKINFO, info)
        self._add(_RTM_NEWLINK, _NLM_F_CREATE | _NLM_F_EXCL, body)

    def address(self, index: int, addr: str, prefix: int) -> None:
        packed = socket.inet_aton(addr)
        body = struct.pack("=BBBBI", socket.AF_INET, prefix, 0, 0, index)
        body += _attr(_IFA_LOCAL, packed) + _attr(_IFA_ADDRESS, packed)
        self._add(_RTM_NEWADDR, _NLM_F_CREATE | _NLM_F_EXCL, body)

    def up(self, index: int = 0, name: str | None = None) -> None:
        body = _ifinfo(index, _IFF_UP, _IFF_UP)
        if name is not None:
            body += _attr(_IFLA_IFNAME, name.encode() + b"\0")
        self._add(_RTM_NEWLINK, 0, body)

    def default_route(self, gateway: str, index: int) -> None:
        body = struct.pack(
            "=BBBBBBBBI",
            socket.AF_INET,
            0,  # dst_len: the default route
            0,
            0,
            _RT_TABLE_MAIN,
            _RTPROT_BOOT,
            _RT_SCOPE_UNIVERSE,
            _RTN_UNICAST,
            0,
        )
        body += _attr(_RTA_GATEWAY, socket.inet_aton(gateway))
        body += _attr(_RTA_OIF, struct.pack("=I", index))
        self._add(_RTM_NEWROUTE, _NLM_F_CREATE | _NLM_F_EXCL, body)

    def delete(self, name: str) -> None:
        self._add(_RTM_DELLINK, 0, _ifinfo() + _attr(_IFLA_IFNAME, name.encode() + b"\0"))

    def send(self, sock: socket.socket) -> None:
        if not self._messages:
            return
        sock.send(b"".join(self._messages))
        pending = len(self._messages)
        first_error = 0
        while pending:
            data = sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                size, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if kind == _NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + 16)
                    if code and not first_error:
                        first_error = -code
                    pending -= 1
                offset += max(size + (-size % 4), 16)
        self._messages.clear()
        if first_error:
            raise OSError(first_error, os.strerror(first_error))


def netlink_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    sock.bind((0, 0))
    return sock


def set_sysctl(path: str, value: str) -> None:
    """Write one /proc/sys file (of the calling thread's network namespace,
    for net.* keys)."""
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def delete_link(sock: socket.socket, name: str) -> bool:
    """Delete a link by name; False if it was already gone."""
    batch = Batch()
    batch.delete(name)
    try:
        batch.send(sock)
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True
