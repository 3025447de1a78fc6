"""The name a connection asks for, from its first bytes: the SNI of a TLS
ClientHello or the Host of an HTTP request head. Pure parsing, no I/O, so the
proxy can call it again as bytes arrive: `Incomplete` means "read more".

    first byte   parser                 name from
    0x16         sni_from_client_hello  server_name extension (type 0, host_name)
    otherwise    host_from_request_head Host header (port stripped), which must
                                        agree with an absolute-form request target

A ClientHello may be split over several TLS records and TCP segments; the
records are joined before the handshake message is read. Anything that is not
what it claims to be raises ValueError: the proxy closes such a connection.
"""

from __future__ import annotations

import struct

__all__ = [
    "Incomplete",
    "host_from_request_head",
    "is_tls",
    "sni_from_client_hello",
]

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_HOST_NAME = 0x00


class Incomplete(Exception):
    """Not enough bytes yet to decide."""


def is_tls(first: bytes | bytearray) -> bool:
    """A TLS handshake record starts 0x16 0x03: HTTP never starts so."""
    return len(first) >= 1 and first[0] == _HANDSHAKE


def _handshake_bytes(data: bytes) -> bytes:
    """The payloads of the leading handshake records, joined, as far as they
    go; raises Incomplete until they hold the whole ClientHello message."""
    out = bytearray()
    pos = 0
    while True:
        if len(out) >= 4:
            need = 4 + int.from_bytes(out[1:4], "big")
            if len(out) >= need:
                return bytes(out[:need])
        if len(data) < pos + 5:
            raise Incomplete
        ctype, major, length = data[pos], data[pos + 1], struct.unpack_from("!H", data, pos + 3)[0]
        if ctype != _HANDSHAKE or major != 3 or length == 0 or length > 2**14:
            raise ValueError("not a TLS handshake record")
        if len(data) < pos + 5 + length:
            raise Incomplete
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if out[0] != _CLIENT_HELLO:
            raise ValueError("first handshake message is not a ClientHello")


class _Reader:
    """Bounds-checked reads over one message: a short message is malformed
    (the whole message is already here), never Incomplete."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated ClientHello")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, len_bytes: int) -> bytes:
        return self.take(self.uint(len_bytes))


def sni_from_client_hello(data: bytes) -> str | None:
    """The server name the ClientHello at the start of `data` asks for,
    lowercased, or None if it carries none (a client connecting by address)."""
    msg = _Reader(_handshake_bytes(data))
    msg.take(4)  # handshake type and length, checked above
    msg.take(2 + 32)  # legacy_version, random
    msg.vector(1)  # legacy_session_id
    msg.vector(2)  # cipher_suites
    msg.vector(1)  # legacy_compression_methods
    if msg.pos == len(msg.data):
        return None  # no extensions at all (TLS 1.0 style)
    extensions = _Reader(msg.vector(2))
    while extensions.pos < len(extensions.data):
        ext_type, body = extensions.uint(2), extensions.vector(2)
        if ext_type != _EXT_SERVER_NAME:
            continue
        names = _Reader(_Reader(body).vector(2))
        while names.pos < len(names.data):
            name_type, name = names.uint(1), names.vector(2)
            if name_type == _HOST_NAME:
                return _ascii_name(name)
        return None
    return None


def _ascii_name(raw: bytes) -> str:
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ValueError("server name is not ASCII") from exc
    if not name or any(c in name for c in " \t\r\n/\\@:"):
        raise ValueError(f"bad server name {name!r}")
    return name.lower().removesuffix(".")


def _strip_port(authority: str) -> str:
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and "]" not in port:
        return host
    return authority


def host_from_request_head(data: bytes, limit: int) -> str | None:
    """The host an HTTP/1.x request head names, or None if it names none.
    Raises Incomplete until the head (up to the blank line) is here, and
    ValueError for a head longer than `limit`, two Host headers, or an
    absolute-form target that names another host than Host."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) >= limit:
            raise ValueError(f"request head longer than {limit} bytes")
        raise Incomplete
    try:
        head = data[:end].decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes any byte
        raise ValueError("undecodable request head") from exc
    request_line, *header_lines = head.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("not an HTTP/1.x request line")
    hosts = [
        value.strip()
        for name, sep, value in (line.partition(":") for line in header_lines)
        if sep and name.strip().lower() == "host"
    ]
    if len(hosts) > 1:
        raise ValueError("more than one Host header")
    host = _strip_port(hosts[0]).lower().removesuffix(".") if hosts else None
    target = parts[1]
    if "://" in target:
        authority = target.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
        absolute = _strip_port(authority).lower().removesuffix(".")
        if host is not None and absolute != host:
            raise ValueError("request target and Host name different hosts")
        host = absolute
    return host or None
