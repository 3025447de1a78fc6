"""EgressServices from plain threads, as the engine calls it: side-by-side
instances on free ports, every socket and the thread gone after stop; and the
one real-network test, against the package index only (names from pip)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from egress_helpers import dns_query, rcode

from arker.engine.egress import EgressServices, Policy

ME = "127.0.0.1"


def _threads() -> int:
    return sum(t.name == "arker-egress" for t in threading.enumerate())


def _free(kind: int, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((ME, port))
        except OSError:
            return False
        return True


def test_start_stop_side_by_side_releases_everything() -> None:
    before = _threads()
    a = EgressServices({}.get, upstreams=[(ME, 9)])
    b = EgressServices({}.get, upstreams=[(ME, 9)])
    pa = a.start((ME, 0), (ME, 0))
    pb = b.start((ME, 0), (ME, 0))
    assert a.start((ME, 0), (ME, 0)) == pa  # a second start is the first one
    assert len({pa.dns, pa.proxy, pb.dns, pb.proxy}) == 4
    assert _threads() == before + 2
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:  # it serves: a stranger is refused
        c.settimeout(2)
        c.sendto(dns_query("x.test"), (ME, pa.dns))
        assert rcode(c.recv(512)) == 5
    a.stop()
    a.stop()
    b.stop()
    assert _threads() == before
    for ports in (pa, pb):
        assert _free(socket.SOCK_DGRAM, ports.dns)
        assert _free(socket.SOCK_STREAM, ports.dns)
        assert _free(socket.SOCK_STREAM, ports.proxy)


def test_a_failed_start_leaves_nothing() -> None:
    before = _threads()
    with socket.socket() as taken:
        taken.bind((ME, 0))
        taken.listen()
        services = EgressServices({}.get, upstreams=[(ME, 9)])
        with pytest.raises(OSError):
            services.start((ME, 0), (ME, taken.getsockname()[1]))
    assert _threads() == before
    services.stop()


@pytest.fixture
def pypi_services() -> Iterator[tuple[EgressServices, dict[str, Policy]]]:
    from pip._internal.models.index import PyPI

    policies = {ME: Policy(True, (PyPI.netloc, PyPI.file_storage_domain))}
    services = EgressServices(policies.get)
    services.start((ME, 0), (ME, 0))
    try:
        yield services, policies
    finally:
        services.stop()


def _https_get(proxy_port: int, host: str, path: str) -> bytes:
    """A TLS client that verifies the certificate as usual, connected to the
    proxy instead of the host it names."""
    with socket.create_connection((ME, proxy_port), timeout=15) as raw:
        ctx = ssl.create_default_context()
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            return tls.recv(64)


def _npm_registry_host() -> str:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: no registry name to refuse")
    url = subprocess.run(
        [npm, "config", "get", "registry"], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    host = urlsplit(url).hostname
    assert host
    return host


def test_pypi_through_the_proxy_and_npm_refused(
    pypi_services: tuple[EgressServices, dict[str, Policy]],
) -> None:
    from pip._internal.models.index import PyPI

    services, _ = pypi_services
    assert services.ports is not None
    assert _https_get(services.ports.proxy, PyPI.netloc, "/simple/six/").startswith(
        b"HTTP/1.1 200 "
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(5)
        c.sendto(dns_query(PyPI.file_storage_domain), (ME, services.ports.dns))
        answer = c.recv(4096)
        assert rcode(answer) == 0 and int.from_bytes(answer[6:8], "big") >= 1
    npm_host = _npm_registry_host()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _https_get(services.ports.proxy, npm_host, "/six")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(5)
        c.sendto(dns_query(npm_host), (ME, services.ports.dns))
        assert rcode(c.recv(4096)) == 3


def test_policy_changes_apply_to_new_connections(
    pypi_services: tuple[EgressServices, dict[str, Policy]],
) -> None:
    from pip._internal.models.index import PyPI

    services, policies = pypi_services
    assert services.ports is not None
    policies[ME] = Policy(True, (PyPI.file_storage_domain,))  # the index is out now
    # Refused at once: a proxy that held the connection would end in a
    # TimeoutError, which is neither of these.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _https_get(services.ports.proxy, PyPI.netloc, "/simple/six/")
