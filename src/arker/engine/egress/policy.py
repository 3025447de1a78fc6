"""A VM's network policy, and the one table of IPv4 ranges no VM may reach.

Pure code, no I/O: the DNS forwarder and the proxy ask it about names, the
nftables rules (engine/net.py) are written from `DENIED_IPV4`, and the API
validates `network.allow` with `parse_allow`, whose ValueError names the entry.

    allow entry         matches
    example.com         exactly example.com
    *.example.org       any name below example.org (a.example.org, a.b.example.org),
                        not example.org itself: list both to allow both
    203.0.113.0/24      the addresses in that IPv4 CIDR
    203.0.113.7         the same as 203.0.113.7/32

Names are lowercased and a trailing dot is dropped. IPv6 entries are refused:
IPv6 is off in VMs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "DENIED_IPV4",
    "MAX_ALLOW_ENTRIES",
    "AllowEntryError",
    "Policy",
    "addr_allowed",
    "cidr_allowed",
    "is_denied",
    "name_allowed",
    "parse_allow",
]

MAX_ALLOW_ENTRIES = 256

# Always denied, whatever the policy says: the nftables rules drop them before
# any allow-list is read, and the proxy refuses them likewise.
DENIED_IPV4: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), why)
    for net, why in (
        ("0.0.0.0/8", "this network"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local, cloud metadata (169.254.169.254)"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "broadcast"),
    )
)
# Not denied: the documentation ranges 192.0.2.0/24, 198.51.100.0/24 and
# 203.0.113.0/24. On these machines the package registries resolve to
# 203.0.113.80 (a transparent proxy), so denying TEST-NET-3 would cut VMs off
# from the only outside hosts they can reach; the other two stay open alike.

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class AllowEntryError(ValueError):
    """One bad entry of `network.allow`: `index` and `entry` name it, and the
    message is one sentence the API can answer as a 422."""

    def __init__(self, index: int | None, entry: str, reason: str) -> None:
        where = "network.allow" if index is None else f"network.allow[{index}]"
        super().__init__(f"{where}: {reason}")
        self.index = index
        self.entry = entry


def _hostname(name: str) -> str | None:
    """The name lowercased without a trailing dot, or None if it is not an
    RFC 1123 hostname (labels of 1-63 letters, digits and inner hyphens, 253
    characters in all, and a last label that is not all digits, so that
    "1.2.3" is never taken for a name)."""
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or not name.isascii():
        return None
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        return None
    return name


def _cidr(index: int, entry: str) -> ipaddress.IPv4Network:
    if ":" in entry:
        raise AllowEntryError(index, entry, f"{entry!r}: IPv6 is off in VMs; give IPv4 CIDRs")
    try:
        return ipaddress.IPv4Network(entry)
    except ValueError as exc:
        try:
            loose = ipaddress.IPv4Network(entry, strict=False)
        except ValueError:
            raise AllowEntryError(index, entry, f"{entry!r} is not a valid CIDR") from exc
        raise AllowEntryError(
            index, entry, f"{entry!r} has host bits set; did you mean {loose}?"
        ) from exc


def parse_allow(
    entries: Iterable[str],
) -> tuple[tuple[str, ...], tuple[ipaddress.IPv4Network, ...]]:
    """Split and check an allow-list: (domains, cidrs). Domains come back
    lowercased, a wildcard kept as "*.suffix". Raises AllowEntryError (a
    ValueError) naming the first bad entry."""
    entries = list(entries)
    if len(entries) > MAX_ALLOW_ENTRIES:
        raise AllowEntryError(
            None, "", f"{len(entries)} entries; at most {MAX_ALLOW_ENTRIES} are allowed"
        )
    domains: list[str] = []
    cidrs: list[ipaddress.IPv4Network] = []
    for index, raw in enumerate(entries):
        if not isinstance(raw, str):
            raise AllowEntryError(index, repr(raw), f"{raw!r} is not a string")
        entry = raw.strip()
        # "1.2.3.4", "10.0.0.0/8", "::1": an address; "1password.com": a name.
        if "/" in entry or ":" in entry or (entry[:1].isdigit() and _hostname(entry) is None):
            cidrs.append(_cidr(index, entry))
            continue
        wildcard = entry.startswith("*.")
        name = _hostname(entry[2:] if wildcard else entry)
        if name is None:
            if "*" in entry:
                reason = f'{raw!r}: a wildcard may only be a leading "*." before a domain'
            else:
                reason = f"{raw!r} is neither a hostname nor an IPv4 CIDR"
            raise AllowEntryError(index, raw, reason)
        domains.append(f"*.{name}" if wildcard else name)
    return tuple(dict.fromkeys(domains)), tuple(dict.fromkeys(cidrs))


@dataclass(frozen=True)
class Policy:
    """What a VM may reach. `egress=False`: nothing. `egress=True` and no
    `allow`: the internet, minus `DENIED_IPV4`. With `allow`: only those
    names (through the proxy and the DNS forwarder) and CIDRs.

    Constructing one validates `allow` (AllowEntryError) and normalises it,
    so two equal policies compare equal."""

    egress: bool
    allow: tuple[str, ...] = ()
    _names: frozenset[str] = field(init=False, repr=False, compare=False)
    _suffixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _cidrs: tuple[ipaddress.IPv4Network, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        domains, cidrs = parse_allow(self.allow)
        set_ = object.__setattr__  # frozen: the derived fields are set once, here
        set_(self, "allow", domains + tuple(str(c) for c in cidrs))
        set_(self, "_names", frozenset(d for d in domains if not d.startswith("*.")))
        set_(self, "_suffixes", tuple(d[1:] for d in domains if d.startswith("*.")))
        set_(self, "_cidrs", cidrs)


def name_allowed(policy: Policy, name: str) -> bool:
    """Whether the VM may resolve and connect to `name` (as DNS asks it, or
    as SNI/Host carry it). Any name when there is no allow-list."""
    if not policy.egress:
        return False
    if not policy.allow:
        return True
    name = name.lower().removesuffix(".")
    return name in policy._names or name.endswith(policy._suffixes)


def is_denied(ip: str | ipaddress.IPv4Address) -> bool:
    """Whether `ip` is in the always-denied table. Anything that is not an
    IPv4 address counts as denied: IPv6 is off in VMs."""
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        return True
    return any(addr in net for net, _ in DENIED_IPV4)


def cidr_allowed(policy: Policy, ip: str | ipaddress.IPv4Address) -> bool:
    """Whether one of the policy's own CIDRs holds `ip`."""
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    return policy.egress and any(addr in net for net in policy._cidrs)


def addr_allowed(policy: Policy, ip: str | ipaddress.IPv4Address) -> bool:
    """Whether the VM may connect to `ip` by address: never a denied range;
    with an allow-list only inside its CIDRs, without one anywhere else."""
    if not policy.egress or is_denied(ip):
        return False
    return cidr_allowed(policy, ip) if policy.allow else True
