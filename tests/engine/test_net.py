"""engine/net.py on the real kernel: a link into a network namespace (a
`unshare -n` process stands for a VM's PID 1), the allow-list sets, and what
a crashed engine leaves behind being swept by the next one. Everything made
here is removed by its names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker.engine.net import Network
from arker.errors import ArkerError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, nftables)")

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def net() -> Iterator[Network]:
    n = Network(dns_port=1, proxy_port=2)  # nothing listens: these tests never send DNS
    n.open()
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def netns_pid() -> Iterator[int]:
    proc = subprocess.Popen(["unshare", "-n", "sleep", "60"])
    try:
        for _ in range(100):  # until it has its own namespace
            if os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                break
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _in(pid: int, *cmd: str) -> str:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", *cmd], capture_output=True, text=True, check=True
    ).stdout


def _table(net: Network) -> str:
    return subprocess.run(
        ["nft", "list", "table", "inet", net.table], capture_output=True, text=True, check=True
    ).stdout


def test_a_link_with_address_route_and_no_ipv6(net: Network, netns_pid: int) -> None:
    link = net.attach("vm-a", netns_pid, None)
    assert link.name.startswith(net.prefix) and Path(f"/sys/class/net/{link.name}").exists()
    assert f"inet {link.address}/31" in _in(netns_pid, "ip", "-4", "addr", "show", "eth0")
    assert f"default via {link.gateway} dev eth0" in _in(netns_pid, "ip", "route")
    assert _in(netns_pid, "cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6").strip() == "1"
    rp = Path(f"/proc/sys/net/ipv4/conf/{link.name}/rp_filter").read_text().strip()
    assert rp == "1"
    assert net.vm_for_address(link.address) == "vm-a"
    assert net.vm_for_address(link.gateway) is None  # the host end is nobody's
    net.detach("vm-a")
    assert not Path(f"/sys/class/net/{link.name}").exists()
    assert net.vm_for_address(link.address) is None


def test_allow_lists_are_set_elements_not_chains(net: Network, netns_pid: int) -> None:
    link = net.attach("vm-b", netns_pid, ["198.51.100.0/24"])
    table = _table(net)
    assert f'"{link.name}" . 198.51.100.0/24' in table
    assert table.count("chain ") == 5  # the same chains whatever the VMs
    net.set_allow("vm-b", ["192.0.2.0/28", "198.51.100.7/32"])
    table = _table(net)
    assert "198.51.100.0/24" not in table and f'"{link.name}" . 192.0.2.0/28' in table
    net.set_allow("vm-b", None)  # the internet: in no set at all
    assert link.name not in _table(net)
    net.detach("vm-b")


def test_a_new_allow_list_replaces_the_old_in_one_transaction(net: Network, netns_pid: int) -> None:
    link = net.attach("vm-c", netns_pid, ["198.51.100.0/24"])
    assert net._nft is not None
    real_run = net._nft.run
    sent: list[str] = []

    def counted(command: str) -> None:  # the real nft, its transactions counted
        sent.append(command)
        real_run(command)

    net._nft.run = counted  # type: ignore[method-assign]
    try:
        net.set_allow("vm-c", ["192.0.2.0/28"])
        # Unlisted between two transactions, the VM would have had the internet.
        assert len(sent) == 1 and "delete element" in sent[0] and "add element" in sent[0]
        with pytest.raises(ArkerError, match="nftables refused"):  # none of the batch applies
            net.set_allow("vm-c", ["192.0.2.0/28", "999.1.2.3/32"])
        table = _table(net)
        assert f'"{link.name}" . 192.0.2.0/28' in table and "999." not in table
        net.set_allow("vm-c", None)  # the engine still knows the list in force
        assert link.name not in _table(net)
    finally:
        net._nft.run = real_run  # type: ignore[method-assign]
        net.detach("vm-c")


CRASH = """
import os, sys
sys.path.insert(0, {src!r})
from arker.engine.net import Network
from arker.errors import ArkerError
n = Network(dns_port=1, proxy_port=2)
n.open()
print(n.table, flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_crashed_engines_table_is_swept_by_the_next(net: Network) -> None:
    # `net` holds a block, so the crashing engine takes another one.
    proc = subprocess.run(
        [sys.executable, "-c", CRASH.format(src=str(SRC))], capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL
    left = proc.stdout.strip()
    assert left.startswith("arker_") and left != net.table
    assert (
        subprocess.run(["nft", "list", "table", "inet", left], capture_output=True).returncode == 0
    )
    after = Network(dns_port=1, proxy_port=2)
    after.open()
    try:
        assert not _exists(left) or after.table == left  # swept, or reclaimed afresh
    finally:
        after.close()
    assert (
        subprocess.run(["nft", "list", "table", "inet", left], capture_output=True).returncode != 0
    )


def _exists(table: str) -> bool:
    done = subprocess.run(["nft", "list", "table", "inet", table], capture_output=True)
    return done.returncode == 0
