"""VMs on the network: a veth pair per VM into its network namespace, a /31
of the engine's own block, and one nftables table of the engine's own.

The policy first, as the kernel gets it (every rule matches only this
engine's interfaces, `ak<block>*`, so nothing else on the host is touched):

- prerouting: a VM's DNS (any address, port 53) goes to the engine's
  forwarder; TCP 80 and 443 of a VM with an allow-list go to its SNI/Host proxy.
- input: a VM reaches the host only as those two redirections; every other
  packet to any host address (services on 0.0.0.0 included) is refused. The
  forwarder's and proxy's ports answer nothing but VMs.
- forward: nothing starts a connection into a VM (so no VM reaches another);
  no IPv6; never the private, loopback, link-local, CGNAT, multicast or
  metadata ranges; a VM with an allow-list only its CIDRs (its domains go
  through the proxy); everything else out, masqueraded on the uplink.
- rp_filter=1 on the host ends: a VM cannot send as another VM or any address
  but its own. IPv6 is off on both ends.

A VM without egress gets no veth at all: connecting anywhere fails at once
with "Network is unreachable". Membership is by interface name and sets,
never by per-VM chains, so a change costs the same at 1 or 1,000 VMs; a VM
with the internet and no allow-list needs no nftables change at all.

Each engine claims a block of addresses with a lock file in /run/arker/net
(engines side by side, as tests run them, get different blocks, names and
tables) and undoes everything it added on close: its table, its links, and
ip_forward if it was the one that turned it on and no other engine is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from arker.engine import _netlink, _netns
from arker.engine.egress.policy import DENIED_IPV4
from arker.errors import ArkerError, ErrorCode

__all__ = ["Link", "Network"]

log = logging.getLogger(__name__)

POOL = ipaddress.IPv4Network("10.208.0.0/12")  # inside 10/8: denied to every VM
BLOCK_PREFIX = 19  # one engine's addresses: 2,048 VMs
LOCK_DIR = Path("/run/arker/net")
MTU = 1500

_RULESET = """\
table inet {table} {{
  set denied {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {denied} }} }}
  set listed {{ type ifname; }}
  set allowed {{ type ifname . ipv4_addr; flags interval; }}
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;
    iifname "{vms}" meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns}
    iifname @listed tcp dport {{ 80, 443 }} redirect to :{proxy}
  }}
  chain input {{ type filter hook input priority filter - 10; policy accept;
    iifname "{vms}" ct status dnat udp dport {dns} accept
    iifname "{vms}" ct status dnat tcp dport {{ {dns}, {proxy} }} accept
    iifname "{vms}" meta l4proto tcp reject with tcp reset
    iifname "{vms}" reject with icmpx admin-prohibited
    iifname != "{vms}" udp dport {dns} drop
    iifname != "{vms}" tcp dport {{ {dns}, {proxy} }} drop
  }}
  chain forward {{ type filter hook forward priority filter - 10; policy accept;
    oifname "{vms}" ct state established,related accept
    oifname "{vms}" drop
    iifname "{vms}" meta nfproto ipv6 drop
    iifname "{vms}" ip daddr @denied goto refuse
    iifname @listed iifname . ip daddr != @allowed goto refuse
    iifname "{vms}" accept
  }}
  chain refuse {{  # at once: a reset (ICMP is rate-limited per destination)
    meta l4proto tcp reject with tcp reset
    reject with icmpx admin-prohibited
  }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    ip saddr {block} oifname != "{vms}" masquerade
  }}
}}
"""


class _Nft:
    """libnftables in-process (~1 ms a command, against ~14 ms for `nft -f`)."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as exc:
            raise ArkerError(
                ErrorCode.UNAVAILABLE, "networking needs libnftables (Debian: nftables)"
            ) from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()  # a context is not thread-safe

    def run(self, command: str) -> None:
        with self._lock:
            if self._ctx is None:
                raise ArkerError(ErrorCode.UNAVAILABLE, "the network is closed")
            if self._lib.nft_run_cmd_from_buffer(self._ctx, command.encode()) != 0:
                err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode().strip()
                raise ArkerError(ErrorCode.INTERNAL, f"nftables refused {command!r}: {err}")

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


@dataclass(frozen=True)
class Link:
    name: str  # the host end
    gateway: str  # the host end's address: the VM's default route and resolver
    address: str  # the VM's own


class Network:
    """One engine's share of the host's network (see the module docstring)."""

    def __init__(self, dns_port: int, proxy_port: int) -> None:
        self.dns_port = dns_port
        self.proxy_port = proxy_port
        self._nft: _Nft | None = None
        self._lock_fd: int | None = None
        self.block: ipaddress.IPv4Network | None = None
        self.prefix = ""  # of this engine's interface names
        self.table = ""
        self._slots: dict[str, int] = {}  # vm_id -> slot
        self._holders: dict[int, str] = {}  # slot -> vm_id
        # Slots come back at the end: a VM's namespace dies (taking its pair)
        # a little after its PID 1, so a slot is not reused at once.
        self._free: deque[int] = deque()
        self._listed: dict[str, list[str]] = {}  # vm_id -> its CIDRs, for removal
        self._mutex = threading.Lock()

    # -- lifecycle
    def open(self) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        with _host_lock():
            number, fd = _claim_block()
            self._lock_fd = fd
            try:
                self.block = list(POOL.subnets(new_prefix=BLOCK_PREFIX))[number]
                self.prefix = f"ak{number:02x}"
                self.table = f"arker_{number:02x}"
                self._nft = _Nft()
                self._sweep(number)  # what crashed engines left, this block's included
                self._nft.run(
                    _RULESET.format(
                        table=self.table,
                        vms=self.prefix + "*",
                        denied=", ".join(str(net) for net, _ in DENIED_IPV4),
                        dns=self.dns_port,
                        proxy=self.proxy_port,
                        block=self.block,
                    )
                )
                _forwarding_on()
            except BaseException:
                self._release()
                raise
        slots = self.block.num_addresses // 2
        self._free = deque(range(1, slots))  # slot 0: the block's own address

    def close(self) -> None:
        if self._lock_fd is None:
            return
        with _host_lock():
            try:
                self._remove_links()
                self._drop_table()
            finally:
                self._release()
                _forwarding_restore()
        self._slots.clear()
        self._holders.clear()
        self._listed.clear()

    def _release(self) -> None:
        if self._nft is not None:
            self._nft.close()
            self._nft = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the block is free again
            self._lock_fd = None

    def _drop_table(self, table: str | None = None) -> None:
        # nft 1.0.6 has no `destroy`: an add (a no-op if it exists) makes the delete safe.
        table = table or self.table
        if self._nft is not None:
            self._nft.run(f"add table inet {table}\ndelete table inet {table}")

    def _remove_links(self, prefix: str | None = None) -> None:
        prefix = prefix or self.prefix
        names = [n for n in os.listdir("/sys/class/net") if n.startswith(prefix)]
        if names:
            with contextlib.closing(_netlink.netlink_socket()) as sock:
                for name in names:
                    _netlink.delete_link(sock, name)

    def _sweep(self, mine: int) -> None:
        """Remove the table and links of every block no engine holds (an
        engine killed with SIGKILL leaves them), and of our own."""
        for path in sorted(LOCK_DIR.glob("block-*")):
            number = int(path.name.removeprefix("block-"), 16)
            if number != mine and _held(path):
                continue  # a live engine's
            self._remove_links(f"ak{number:02x}")
            self._drop_table(f"arker_{number:02x}")

    # -- VMs
    def attach(self, vm_id: str, init_pid: int, allow_cidrs: list[str] | None) -> Link:
        """Give the running VM (its PID 1 is `init_pid`) a veth, an address and a
        default route; `allow_cidrs` None: the internet, else only those CIDRs
        (and what the proxy lets through on 80 and 443)."""
        if self.block is None:
            raise ArkerError(ErrorCode.UNAVAILABLE, "the network is not open")
        with self._mutex:
            if vm_id in self._slots:
                raise ArkerError(ErrorCode.CONFLICT, f"vm {vm_id!r} has a network already")
            slot = self._take_slot()
            self._slots[vm_id] = slot
            self._holders[slot] = vm_id
        link = self._link(slot)
        try:
            self._plumb(link, init_pid)
            if allow_cidrs is not None:
                self._list(vm_id, link.name, allow_cidrs)
        except BaseException:
            self.detach(vm_id)
            raise
        return link

    def _take_slot(self) -> int:
        for _ in range(len(self._free)):
            slot = self._free.popleft()
            if not os.path.exists(f"/sys/class/net/{self._link(slot).name}"):
                return slot
            self._free.append(slot)  # its old pair is still going away
        raise ArkerError(ErrorCode.UNAVAILABLE, "no address left for another networked vm")

    def detach(self, vm_id: str, *, delete_link: bool = True) -> None:
        """Take the VM's set entries and, with `delete_link`, its link away
        (~20 ms: the kernel waits for every CPU). A VM whose PID 1 is dead
        needs no delete: its namespace takes the pair with it."""
        with self._mutex:
            slot = self._slots.pop(vm_id, None)
            if slot is None:
                return
            del self._holders[slot]
        link = self._link(slot)
        try:
            self._unlist(vm_id, link.name)
            if delete_link:
                with contextlib.closing(_netlink.netlink_socket()) as sock:
                    _netlink.delete_link(sock, link.name)
        finally:
            with self._mutex:
                self._free.append(slot)

    def set_allow(self, vm_id: str, allow_cidrs: list[str] | None) -> None:
        """A running VM's new CIDRs (None: the internet). New connections
        follow them; established ones may finish."""
        with self._mutex:
            slot = self._slots.get(vm_id)
        if slot is None:
            raise ArkerError(ErrorCode.CONFLICT, f"vm {vm_id!r} has no network")
        name = self._link(slot).name
        had = self._listed.get(vm_id)
        # One nft transaction: between the old list and the new one the VM
        # must never be unlisted, which would be the whole internet.
        command = self._unlisting(vm_id, name)
        if allow_cidrs is not None:
            command += self._listing(vm_id, name, allow_cidrs)
        if command and self._nft is not None:
            try:
                self._nft.run(command)
            except BaseException:
                self._listed.pop(vm_id, None)
                if had is not None:
                    self._listed[vm_id] = had  # the transaction left the old list in force
                raise

    def link(self, vm_id: str) -> Link | None:
        slot = self._slots.get(vm_id)
        return None if slot is None else self._link(slot)

    def vm_for_address(self, address: str) -> str | None:
        """The VM that holds `address` (for the DNS forwarder and the proxy)."""
        if self.block is None:
            return None
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return None
        if ip not in self.block or int(ip) % 2 == 0:
            return None
        return self._holders.get((int(ip) - int(self.block.network_address)) // 2)

    # -- mechanism
    def _link(self, slot: int) -> Link:
        assert self.block is not None
        host = self.block.network_address + 2 * slot
        return Link(f"{self.prefix}{slot:03x}", str(host), str(host + 1))

    def _plumb(self, link: Link, init_pid: int) -> None:
        netns = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with _netns.in_netns(netns):
                inside = _netlink.netlink_socket()
                # Before eth0 exists, so it never gets an IPv6 address.
                _netlink.set_sysctl("net/ipv6/conf/default/disable_ipv6", "1")
                _netlink.set_sysctl("net/ipv6/conf/all/disable_ipv6", "1")
            with contextlib.closing(inside), contextlib.closing(_netlink.netlink_socket()) as host:
                batch = _netlink.Batch()
                batch.veth(link.name, "eth0", netns, MTU)
                batch.send(host)
                with _netns.in_netns(netns):  # not always 2: a VM may have had a link
                    vm_index = socket.if_nametoindex("eth0")
                conf = f"net/ipv4/conf/{link.name}"
                _netlink.set_sysctl(f"{conf}/rp_filter", "1")
                _netlink.set_sysctl(f"net/ipv6/conf/{link.name}/disable_ipv6", "1")
                index = _ifindex(link.name)
                batch.address(index, link.gateway, 31)
                batch.up(index)
                batch.send(host)
                batch.address(vm_index, link.address, 31)
                batch.up(vm_index)
                batch.default_route(link.gateway, vm_index)
                batch.send(inside)
        except OSError as exc:
            raise ArkerError(
                ErrorCode.INTERNAL, f"cannot give the vm its network ({link.name}): {exc}"
            ) from exc
        finally:
            os.close(netns)

    def _list(self, vm_id: str, name: str, cidrs: list[str]) -> None:
        assert self._nft is not None
        command = self._listing(vm_id, name, cidrs)
        try:
            self._nft.run(command)
        except BaseException:
            self._listed.pop(vm_id, None)
            raise

    def _unlist(self, vm_id: str, name: str) -> None:
        command = self._unlisting(vm_id, name)
        if command and self._nft is not None:
            self._nft.run(command)

    def _listing(self, vm_id: str, name: str, cidrs: list[str]) -> str:
        """The commands that put the VM's link on the allow-list with `cidrs`."""
        elements = ", ".join(f'"{name}" . {c}' for c in cidrs)
        command = f'add element inet {self.table} listed {{ "{name}" }}\n'
        if elements:
            command += f"add element inet {self.table} allowed {{ {elements} }}\n"
        self._listed[vm_id] = list(cidrs)
        return command

    def _unlisting(self, vm_id: str, name: str) -> str:
        """The commands that take the VM's link off the allow-list ("" when it is not on it)."""
        cidrs = self._listed.pop(vm_id, None)
        if cidrs is None:
            return ""
        command = f'delete element inet {self.table} listed {{ "{name}" }}\n'
        if cidrs:
            elements = ", ".join(f'"{name}" . {c}' for c in cidrs)
            command += f"delete element inet {self.table} allowed {{ {elements} }}\n"
        return command


def _ifindex(name: str) -> int:
    with open(f"/sys/class/net/{name}/ifindex") as f:
        return int(f.read())


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    """One engine at a time claims a block or touches ip_forward."""
    fd = os.open(LOCK_DIR / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _claim_block() -> tuple[int, int]:
    """The first block no other engine holds (an flock, freed when its holder
    exits however it exits) and no host route overlaps."""
    routes = _host_routes()
    blocks = list(POOL.subnets(new_prefix=BLOCK_PREFIX))
    for number, block in enumerate(blocks):
        if any(block.overlaps(r) for r in routes):
            continue
        fd = os.open(LOCK_DIR / f"block-{number:02x}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return number, fd
    raise ArkerError(ErrorCode.UNAVAILABLE, f"every address block of {POOL} is taken")


def _held(block_file: Path) -> bool:
    """Whether a live engine holds this block (probed under the host lock;
    the probe's own lock goes with its descriptor)."""
    fd = os.open(block_file, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _host_routes() -> list[ipaddress.IPv4Network]:
    """The host's IPv4 routes other than the default one (/proc/net/route)."""
    found = []
    with open("/proc/net/route") as f:
        next(f)
        for line in f:
            fields = line.split()
            dest, mask = int(fields[1], 16), int(fields[7], 16)
            if mask == 0:
                continue
            net = ipaddress.IPv4Network(
                (ipaddress.IPv4Address(dest.to_bytes(4, "little")), bin(mask).count("1")),
                strict=False,
            )
            found.append(net)
    return found


_FORWARD = "net/ipv4/ip_forward"
_RESTORE = LOCK_DIR / "ip_forward.restore"


def _forwarding_on() -> None:
    with open(f"/proc/sys/{_FORWARD}") as f:
        was = f.read().strip()
    if was != "1":
        _RESTORE.write_text(was)  # whoever turned it on, the last engine restores it
        _netlink.set_sysctl(_FORWARD, "1")


def _forwarding_restore() -> None:
    """Put ip_forward back if an engine turned it on and none holds a block now."""
    if not _RESTORE.exists():
        return
    if any(_held(path) for path in LOCK_DIR.glob("block-*")):
        return  # another engine is still up
    _netlink.set_sysctl(_FORWARD, _RESTORE.read_text().strip() or "0")
    _RESTORE.unlink()
