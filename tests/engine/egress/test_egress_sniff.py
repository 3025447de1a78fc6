"""The name a connection carries, from real ClientHellos (Python's own TLS
stack makes them) and HTTP heads, whole and split."""

from __future__ import annotations

import contextlib

import pytest
from egress_helpers import client_hello, split_records

from arker.engine.egress.sniff import (
    Incomplete,
    host_from_request_head,
    is_tls,
    sni_from_client_hello,
)


def test_sni_of_a_real_client_hello() -> None:
    hello = client_hello("Allowed.Example.test")
    assert is_tls(hello)
    assert sni_from_client_hello(hello) == "allowed.example.test"
    assert sni_from_client_hello(hello + b"more bytes after it") == "allowed.example.test"


def test_no_sni_when_the_client_connects_by_address() -> None:
    assert sni_from_client_hello(client_hello(None)) is None


def test_every_prefix_asks_for_more_bytes() -> None:
    hello = client_hello("split.example.test")
    for end in range(len(hello)):
        with pytest.raises(Incomplete):
            sni_from_client_hello(hello[:end])


@pytest.mark.parametrize("size", [1, 7, 100, 512])
def test_hello_split_over_records(size: int) -> None:
    framed = split_records(client_hello("records.example.test"), size)
    assert sni_from_client_hello(framed) == "records.example.test"
    with pytest.raises(Incomplete):
        sni_from_client_hello(framed[:-1])


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a ServerHello, not a ClientHello
        b"\x17\x03\x03\x00\x05hello",  # application data
        b"\x16\x03\x01\x00\x00",  # an empty record
        b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00",  # truncated body
    ],
)
def test_malformed_hellos_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        sni_from_client_hello(data)


def test_a_hello_garbled_at_every_byte_never_crashes() -> None:
    hello = client_hello("fuzz.example.test")
    for i in range(len(hello)):
        garbled = hello[:i] + bytes([hello[i] ^ 0xFF]) + hello[i + 1 :]
        with contextlib.suppress(ValueError, Incomplete):
            sni_from_client_hello(garbled)


def test_http_host() -> None:
    head = b"GET /simple/ HTTP/1.1\r\nUser-Agent: x\r\nhost: Files.Example.test:8080\r\n\r\nbody"
    assert not is_tls(head)
    assert host_from_request_head(head, 16384) == "files.example.test"
    assert host_from_request_head(b"GET / HTTP/1.0\r\n\r\n", 16384) is None
    absolute = b"GET http://a.example.test/x HTTP/1.1\r\nHost: a.example.test\r\n\r\n"
    assert host_from_request_head(absolute, 16384) == "a.example.test"


def test_http_head_split_and_bounded() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n"
    for end in range(len(head) - 1):
        with pytest.raises(Incomplete):
            host_from_request_head(head[:end], 16384)
    with pytest.raises(ValueError, match="longer than 64"):
        host_from_request_head(b"GET / HTTP/1.1\r\nX: " + b"x" * 64, 64)


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: a.example.test\r\nHost: b.example.test\r\n\r\n",
        b"GET http://evil.example.test/ HTTP/1.1\r\nHost: a.example.test\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    ],
)
def test_ambiguous_heads_are_refused(head: bytes) -> None:
    with pytest.raises(ValueError):
        host_from_request_head(head, 16384)
