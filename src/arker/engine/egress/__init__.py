"""VM egress in the engine's process: the policy and its tables (policy.py),
the VMs' DNS forwarder (dns.py), the SNI/Host proxy (proxy.py, parsing in
sniff.py), and the thread that runs both (services.py). engine/net.py sets up
the veths and the nftables rules that send VM traffic here."""

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
from arker.engine.egress.proxy import EgressProxy, Resolver, system_resolve
from arker.engine.egress.services import EgressPorts, EgressServices

__all__ = [
    "DENIED_IPV4",
    "MAX_ALLOW_ENTRIES",
    "AllowEntryError",
    "DnsForwarder",
    "EgressPorts",
    "EgressProxy",
    "EgressServices",
    "Policy",
    "PolicyLookup",
    "Resolver",
    "addr_allowed",
    "cidr_allowed",
    "is_denied",
    "name_allowed",
    "parse_allow",
    "read_resolv_conf",
    "system_resolve",
]
