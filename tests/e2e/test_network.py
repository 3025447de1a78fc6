"""VMs on the network, against a real server on the real engine: egress to
the package index, none at all, allow-lists (pip works, npm does not, nor the
/etc/hosts trick), never the host nor another VM, live changes, and nothing
of the engine's left on the host after the server stops.

The package registries are the only outside hosts these machines reach, so
they are the only ones used, by the names the package tools give (pip's
default index and file store, npm's configured registry).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from live import Live, make_live, stop_live
from pip._internal.models.index import PyPI

from arker import Arker, Computer

INDEX = PyPI.netloc
FILES = PyPI.file_storage_domain
POOL = ipaddress.IPv4Network("10.208.0.0/12")  # engine/net.py's, 2**13 addresses a block
PREVIEW = "preview.test"


def _npm_registry() -> str:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: no second registry name to refuse")
    out = subprocess.run(
        ["npm", "config", "get", "registry"], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    host = out.split("//", 1)[-1].split("/", 1)[0]
    assert host, out
    return host


@pytest.fixture(scope="module")
def net_live() -> Iterator[Live]:
    server = make_live(None, "--preview-domain", PREVIEW, goldens=("debian",))
    try:
        yield server
    finally:
        stop_live(server)


@pytest.fixture
def arker(net_live: Live) -> Iterator[Arker]:
    with net_live.client() as client:
        yield client


HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
VM_CA = "/home/user/host-ca.pem"
# Outbound TLS here passes a proxy whose CA only the host trusts: a VM's TLS
# clients are given the host's bundle, as pip on the host is (its `cert`).
TLS_ENV = {"SSL_CERT_FILE": VM_CA, "PIP_CERT": VM_CA}


def _trust_host_ca(vm: Computer) -> None:
    vm.sync.write_file(VM_CA, HOST_CA.read_bytes())


def _py(vm: Computer, code: str, timeout_s: float = 120) -> dict[str, object]:
    """Run Python in the VM; it prints one JSON object as its last line."""
    result = vm.run(
        f"python3 - <<'EOF'\n{code}\nEOF", timeout_s=timeout_s, user="root", env=TLS_ENV
    )
    assert result.type == "completed", result
    lines = result.stdout_text.strip().splitlines()
    assert lines, result.stderr_text
    answer: dict[str, object] = json.loads(lines[-1])
    return answer


FETCH = """
import json, urllib.request, sys
try:
    with urllib.request.urlopen(sys.argv[1] if len(sys.argv) > 1 else {url!r}, timeout=30) as r:
        body = r.read()
        print(json.dumps({{"status": r.status, "body": body[:2000].decode(errors="replace")}}))
except Exception as e:
    print(json.dumps({{"error": type(e).__name__, "detail": str(e)}}))
"""

CONNECT = """
import errno, json, socket
out = {{}}
for host, port in {targets!r}:
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, port))
        out[f"{{host}}:{{port}}"] = "connected"
    except OSError as e:
        out[f"{{host}}:{{port}}"] = errno.errorcode.get(e.errno, str(e)) if e.errno else "timeout"
    finally:
        s.close()
print(json.dumps(out))
"""


SELF = """
import json, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("203.0.113.80", 9))  # sends nothing: picks the source address
print(json.dumps({"address": s.getsockname()[0]}))
"""


def _address(vm: Computer) -> str:
    """A busybox VM's own address."""
    out = vm.run("ip -4 -o addr show eth0", user="root").stdout_text.split()
    return out[out.index("inet") + 1].split("/")[0]


def test_egress_fetches_the_package_index(arker: Arker) -> None:
    with arker.vm("debian").fork() as vm:
        assert vm.info is not None and vm.info.network is not None
        assert vm.info.network.egress is True  # the server's default: --egress on
        _trust_host_ca(vm)
        got = _py(vm, FETCH.format(url=f"https://{INDEX}/simple/six/"))
        assert got.get("status") == 200, got
        assert "six" in str(got["body"])
        # Its resolver is its gateway, the host end of its link.
        me = _py(vm, SELF)
        resolv = vm.run("cat /etc/resolv.conf").stdout_text
        assert resolv.strip() == f"nameserver {_gateway(str(me['address']))}"


def test_root_installs_a_package_with_apt_in_its_user_namespace(arker: Arker) -> None:
    # The mirror is the golden's own (its apt sources), not a name written here.
    with arker.vm("debian").fork() as vm:
        cmd = (
            "apt-get update -q >/tmp/apt.log 2>&1 && "
            "apt-get install -y -q --no-install-recommends jq >>/tmp/apt.log 2>&1; "
            "echo apt=$?; tail -5 /tmp/apt.log; jq --version; cat /proc/self/uid_map"
        )
        result = vm.run(cmd, user="root", timeout_s=300)
        out = result.stdout_text
        assert "apt=0" in out and "jq-" in out, out
        inside, outside, count = out.strip().splitlines()[-1].split()
        assert (inside, count) == ("0", "65536") and outside != "0"  # root here is not host root


def test_no_egress_fails_at_once(arker: Arker) -> None:
    with arker.vm("debian").fork(network={"egress": False}) as vm:
        ip = socket.gethostbyname(INDEX)  # on the host: the VM has no resolver
        got = _py(vm, CONNECT.format(targets=[(ip, 443), ("1.1.1.1", 53)]))
        # Unreachable, not a timeout: no route out at all.
        assert set(got.values()) == {"ENETUNREACH"}, got
        assert "eth0" not in vm.run("cat /proc/net/dev").stdout_text  # loopback only


def test_allow_list_lets_pip_in_and_keeps_npm_out(arker: Arker) -> None:
    npm = _npm_registry()
    with arker.vm("debian").fork(network={"egress": True, "allow": [INDEX, FILES]}) as vm:
        _trust_host_ca(vm)
        done = vm.run(
            "python3 -m pip download --no-deps --disable-pip-version-check -q -d /tmp/dl six"
            " && ls /tmp/dl",
            timeout_s=300,
            env=TLS_ENV,
        )
        assert done.type == "completed" and done.exit_code == 0, done.stderr_text[-2000:]
        assert "six-" in done.stdout_text
        refused = _py(vm, FETCH.format(url=f"https://{npm}/left-pad"))
        assert "error" in refused, refused  # the name does not even resolve
        # Pin an allowed name's address for the denied name: the proxy reads
        # the name the connection carries, not the address the VM chose.
        pinned = socket.gethostbyname(INDEX)
        vm.run(f"echo '{pinned} {npm}' >> /etc/hosts", user="root")
        assert "error" in _py(vm, FETCH.format(url=f"https://{npm}/left-pad"))
        plain = _py(vm, FETCH.format(url=f"http://{npm}/left-pad"))
        assert plain.get("error") == "HTTPError" and "403" in str(plain["detail"]), plain


class _Listener:
    """A TCP listener on the host that counts the connections it accepts."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def _gateway(vm_address: str) -> str:
    return str(ipaddress.IPv4Address(vm_address) - 1)


def test_no_vm_reaches_the_host(arker: Arker) -> None:
    anywhere, loopback = _Listener("0.0.0.0"), _Listener("127.0.0.1")
    try:
        with arker.vm("busybox").fork() as vm:
            ip = _address(vm)
            addresses = {*_host_addresses(), _gateway(ip)}
            for address in sorted(addresses):
                for port in (anywhere.port, loopback.port):
                    done = vm.run(f"nc -w 3 {address} {port} </dev/null", user="root")
                    assert done.exit_code != 0, (address, port, done)
            # The VM's own 127.0.0.1 is its own loopback, not the host's.
            done = vm.run(f"nc -w 3 127.0.0.1 {loopback.port} </dev/null", user="root")
            assert done.exit_code != 0
        assert anywhere.accepted == 0 and loopback.accepted == 0
    finally:
        anywhere.close()
        loopback.close()


def test_no_vm_reaches_another(arker: Arker) -> None:
    with arker.vm("busybox").fork() as a, arker.vm("busybox").fork() as b:
        b.run("nc -l -p 9000 > /home/user/got 2>&1 </dev/null &")
        target = _address(b)
        assert _address(a) != target
        done = a.run(f"echo hello | nc -w 3 {target} 9000", user="root")
        assert done.exit_code != 0, done
        assert b.sync.read_file("/home/user/got") == b""


def test_policy_changes_live(arker: Arker) -> None:
    ip = socket.gethostbyname(INDEX)
    with arker.vm("busybox").fork() as vm:
        assert vm.run(f"nc -w 5 {ip} 443 </dev/null").exit_code == 0
        vm.network.update(egress=False)
        assert vm.info is not None and vm.info.network is not None
        assert vm.info.network.egress is False
        done = vm.run(f"nc -w 5 {ip} 443 </dev/null")
        assert done.exit_code != 0 and "unreachable" in done.stderr_text.lower(), done
        vm.network.update(egress=True, allow=[FILES])  # by name: 443 goes to the proxy
        assert vm.run(f"nslookup {INDEX}").exit_code != 0
        vm.network.update(allow=None)
        assert vm.run(f"nc -w 5 {ip} 443 </dev/null").exit_code == 0
        assert vm.get().network is not None and vm.get().network.allow is None  # type: ignore[union-attr]


def test_the_engine_leaves_nothing_on_the_host() -> None:
    live = make_live(None)
    stopped = False
    try:
        with live.client() as arker, arker.vm("busybox").fork() as vm:
            block = (int(ipaddress.IPv4Address(_address(vm))) - int(POOL.network_address)) >> 13
            table, prefix = f"arker_{block:02x}", f"ak{block:02x}"
            assert _has_table(table)
            assert any(n.startswith(prefix) for n in _links())
        stop_live(live)
        stopped = True
        assert not _has_table(table)
        assert not any(n.startswith(prefix) for n in _links())
    finally:
        if not stopped:
            stop_live(live, clean=False)


def _has_table(name: str) -> bool:
    return (
        subprocess.run(["nft", "list", "table", "inet", name], capture_output=True).returncode == 0
    )


def _links() -> list[str]:
    return [p.name for p in Path("/sys/class/net").iterdir()]


# A WebSocket echo server in the standard library only (the debian golden has
# no websockets package): the handshake, then each masked frame sent back.
WS_ECHO = r"""
import base64, hashlib, socketserver, struct
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        headers = {}
        while (line := self.rfile.readline().decode().strip()):
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        digest = hashlib.sha1((headers["sec-websocket-key"] + GUID).encode()).digest()
        accept = base64.b64encode(digest)
        self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        while (head := self.rfile.read(2)) and len(head) == 2:
            op, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126: n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127: n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if n < 126:
                size = bytes([n])
            elif n < 65536:
                size = b"\x7e" + struct.pack(">H", n)
            else:
                size = b"\x7f" + struct.pack(">Q", n)
            self.wfile.write(bytes([0x80 | op]) + size + data)
            if op == 8:
                return
socketserver.ThreadingTCPServer(("127.0.0.1", 8765), Echo).serve_forever()
"""


def _until_listening(get: Callable[[], httpx.Response]) -> httpx.Response:
    for _ in range(100):
        r = get()
        if r.status_code != 502:
            return r
        time.sleep(0.1)
    return r


def test_http_server_in_debian_through_the_api_and_a_preview_host(
    net_live: Live, arker: Arker
) -> None:
    with arker.vm("debian").fork() as vm:
        vm.sync.write_file("/home/user/hello.txt", b"hello through the port\n")
        vm.run("python3 -m http.server 8000 --bind 127.0.0.1", background=True)
        key = {"Authorization": f"Bearer {net_live.keys['acme']}"}
        r = _until_listening(lambda: httpx.get(vm.port_url(8000) + "hello.txt", headers=key))
        assert r.status_code == 200 and r.content == b"hello through the port\n", r.text
        # By Host, as a browser behind a wildcard DNS name would ask, with a token.
        token = vm.port_token(8000)
        assert token.url.startswith(f"http://8000-{vm.vm_id.lower()}.{PREVIEW}/")
        query = token.url.split("?", 1)[1]
        host = {"Host": f"8000-{vm.vm_id.lower()}.{PREVIEW}"}
        r = httpx.get(f"{net_live.url}/hello.txt?{query}", headers=host)
        assert r.status_code == 200 and r.content == b"hello through the port\n", r.text
        r = httpx.get(f"{net_live.url}/hello.txt", headers=host)  # neither key nor token
        assert r.status_code == 401
        other = {**host, "Authorization": f"Bearer {net_live.keys['globex']}"}
        assert httpx.get(f"{net_live.url}/hello.txt", headers=other).status_code == 404
        forged = query[:-4] + ("AAAA" if not query.endswith("AAAA") else "BBBB")
        assert httpx.get(f"{net_live.url}/hello.txt?{forged}", headers=host).status_code == 404


async def test_websocket_echo_in_the_vm(net_live: Live, arker: Arker) -> None:
    import websockets

    with arker.vm("debian").fork() as vm:
        vm.sync.write_file("/home/user/ws.py", WS_ECHO.encode())
        vm.run("python3 /home/user/ws.py", background=True)
        key = {"Authorization": f"Bearer {net_live.keys['acme']}"}
        _until_listening(lambda: httpx.get(vm.port_url(8765), headers=key))
        url = vm.port_url(8765).replace("http://", "ws://")
        async with websockets.connect(url, additional_headers=key) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\xff" * 40_000)
            assert await ws.recv() == b"\x00\xff" * 40_000
