"""A VM's ports through the API on the real engine: busybox httpd in the VM,
on the VM's 127.0.0.1 and on its 0.0.0.0, reached by the relay (which makes
its socket in the VM's network namespace); a closed port is 502 at once;
`arker forward` relays a local port; a port token opens it with no key."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from contract_check import check
from live import ARKER, Live

from arker import Arker, Computer

PAGE = b"<h1>hello from the vm</h1>\n"


@pytest.fixture
def vm(arker: Arker) -> Iterator[Computer]:
    with arker.vm("busybox").fork(name="ports") as computer:
        computer.sync.write_file("/home/user/www/index.html", PAGE)
        computer.sync.write_file("/home/user/www/big.bin", os.urandom(3 * 1024 * 1024))
        yield computer


def _serve(vm: Computer, address: str) -> None:
    """busybox httpd in the background, serving /home/user/www on `address`."""
    started = vm.run(f"busybox httpd -f -p {address} -h /home/user/www", background=True)
    assert started.type == "started"


def _get(live: Live, vm: Computer, port: int, path: str = "") -> httpx.Response:
    headers = {"Authorization": f"Bearer {live.keys['acme']}"}
    r = httpx.get(f"{live.url}/v1/vms/{vm.vm_id}/ports/{port}/{path}", headers=headers)
    check(r)
    return r


def _wait_for(live: Live, vm: Computer, port: int) -> httpx.Response:
    deadline = time.monotonic() + 10
    while True:
        r = _get(live, vm, port)
        if r.status_code != 502 or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_loopback_and_any_address_servers_are_reached(live: Live, vm: Computer) -> None:
    _serve(vm, "127.0.0.1:8000")
    _serve(vm, "0.0.0.0:8001")
    for port in (8000, 8001):
        r = _wait_for(live, vm, port)
        assert r.status_code == 200, r.text
        assert r.content == PAGE and r.headers["x-arker-relayed"] == "1"
        big = _get(live, vm, port, "big.bin")
        assert big.status_code == 200 and big.content == vm.sync.read_file("/home/user/www/big.bin")
    # The VM's 0.0.0.0 is its own namespace's: nothing is on the host's interfaces.
    try:
        on_host = httpx.get("http://127.0.0.1:8001/", timeout=2).content
    except httpx.HTTPError:
        on_host = b""
    assert PAGE not in on_host


def test_closed_port_is_502_at_once(live: Live, vm: Computer) -> None:
    vm.run("true")
    r = _get(live, vm, 8009)
    assert r.status_code == 502
    assert r.json()["error"] == {
        "code": "unavailable",
        "message": f"nothing listens on port 8009 in vm {vm.vm_id}",
    }
    # "At once": only a refused connect says this; one that waits for an
    # answer ends in "did not accept" (the engine's connect timeout) instead.


def test_a_stopped_vm_is_started_and_the_token_opens_it(live: Live, vm: Computer) -> None:
    _serve(vm, "127.0.0.1:8000")
    assert _wait_for(live, vm, 8000).status_code == 200
    token = vm.port_token(8000, ttl_s=120)
    assert token.url.startswith(vm.port_url(8000) + "?arker_token=")
    with httpx.Client() as browser:  # no key
        r = browser.get(token.url)
        check(r)
        assert r.status_code == 200 and r.content == PAGE
        r = browser.get(vm.port_url(8000) + "index.html")  # the cookie alone
        check(r)
        assert r.status_code == 200 and r.content == PAGE
        assert browser.get(vm.port_url(8001)).status_code == 401  # not that port's cookie


def test_arker_forward_relays_a_local_port(live: Live, vm: Computer) -> None:
    _serve(vm, "127.0.0.1:8000")
    assert _wait_for(live, vm, 8000).status_code == 200
    env = {
        **os.environ,
        "ARKER_API_KEY": live.keys["acme"],
        "ARKER_BASE_URL": live.url,
    }
    env.pop("ARKER_REGION", None)
    cmd = [ARKER] if ARKER else ["arker"]
    proc = subprocess.Popen(
        [*cmd, "forward", vm.vm_id, "8000", "--local", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "arker forward printed nothing"
        line = proc.stdout.readline().decode()
        assert line.startswith("forwarding 127.0.0.1:"), line
        local = line.split()[1]
        for _ in range(3):  # one WebSocket each, one after another
            r = httpx.get(f"http://{local}/index.html", timeout=10)
            assert r.status_code == 200 and r.content == PAGE
    finally:
        proc.send_signal(2)  # Ctrl-C
        try:
            rc = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc in (0, 130), proc.stderr.read() if proc.stderr else rc


def test_arker_forward_to_a_closed_port_fails_with_the_servers_message(
    live: Live, vm: Computer
) -> None:
    env = {**os.environ, "ARKER_API_KEY": live.keys["acme"], "ARKER_BASE_URL": live.url}
    env.pop("ARKER_REGION", None)
    cmd = [ARKER] if ARKER else ["arker"]
    proc = subprocess.run(
        [*cmd, "forward", vm.vm_id, "8009", "--local", "0"],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == (
        f"error: unavailable: nothing listens on port 8009 in vm {vm.vm_id}"
    )
