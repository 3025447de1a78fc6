"""VM egress in the engine's process: the policy and its tables (policy.py),
the VMs' DNS forwarder (dns.py). engine/net.py sets up the veths and the
nftables rules that send VM traffic here."""

from __future__ import annotations

from arker.engine.egress.dns import DnsForwarder, PolicyLookup, read_resolv_conf
from arker.engine.egress.policy import (
    DENIED_IPV4,
    MAX_ALLOW_ENTRIES,
    AllowEntryError,
    Policy,
    addr_allowed,
    cidr_allowed,
    is_denied,
    name_allowed,
    parse_allow,
)

__all__ = [
    "DENIED_IPV4",
    "MAX_ALLOW_ENTRIES",
    "AllowEntryError",
    "DnsForwarder",
    "Policy",
    "PolicyLookup",
    "addr_allowed",
    "cidr_allowed",
    "is_denied",
    "name_allowed",
    "parse_allow",
    "read_resolv_conf",
]
