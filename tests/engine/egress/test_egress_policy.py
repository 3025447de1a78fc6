"""Policy parsing and matching, and the denied table: the 422 cases the API
maps from AllowEntryError, and what each kind of entry lets through."""

from __future__ import annotations

import ipaddress

import pytest

from arker.engine.egress import (
    DENIED_IPV4,
    AllowEntryError,
    Policy,
    addr_allowed,
    is_denied,
    name_allowed,
    parse_allow,
)


def test_parse_splits_and_normalises() -> None:
    domains, cidrs = parse_allow(["Example.COM.", "*.example.org", "203.0.113.7", "10.1.0.0/16"])
    assert domains == ("example.com", "*.example.org")
    assert cidrs == (ipaddress.IPv4Network("203.0.113.7/32"), ipaddress.IPv4Network("10.1.0.0/16"))
    assert Policy(True, ("1password.com",)).allow == ("1password.com",)  # a name, not an address


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("10.0.0.0/33", "not a valid CIDR"),
        ("999.1.1.1", "not a valid CIDR"),
        ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
        ("exa_mple.com", "neither a hostname"),
        ("-bad.com", "neither a hostname"),
        ("a" * 64 + ".com", "neither a hostname"),
        (".".join(["a" * 60] * 5), "neither a hostname"),  # 304 characters
        ("", "neither a hostname"),
        ("foo.*.com", 'leading "*."'),
        ("*", 'leading "*."'),
        ("*example.com", 'leading "*."'),
        ("2001:db8::/32", "IPv6 is off in VMs"),
        ("::1", "IPv6 is off in VMs"),
    ],
)
def test_bad_entries_name_the_field(entry: str, says: str) -> None:
    with pytest.raises(AllowEntryError) as info:
        parse_allow(["ok.example", entry])
    assert str(info.value).startswith("network.allow[1]: ")
    assert says in str(info.value)
    assert info.value.index == 1
    assert isinstance(info.value, ValueError)


def test_at_most_256_entries() -> None:
    names = [f"h{i}.example" for i in range(257)]
    assert len(parse_allow(names[:256])[0]) == 256
    with pytest.raises(AllowEntryError, match=r"^network.allow: 257 entries; at most 256"):
        Policy(True, tuple(names))


def test_names_exact_and_wildcard() -> None:
    p = Policy(True, ("example.com", "*.example.org"))
    assert name_allowed(p, "example.com")
    assert name_allowed(p, "EXAMPLE.com.")
    assert not name_allowed(p, "www.example.com")
    assert name_allowed(p, "a.example.org")
    assert name_allowed(p, "a.b.example.org")
    assert not name_allowed(p, "example.org")  # the wildcard is strictly below
    assert not name_allowed(p, "badexample.org")
    assert not name_allowed(p, "example.org.evil.test")


def test_egress_off_and_open_egress() -> None:
    off = Policy(False, ("example.com",))
    assert not name_allowed(off, "example.com")
    assert not addr_allowed(off, "8.8.8.8")
    open_ = Policy(True)
    assert name_allowed(open_, "anything.test")
    assert addr_allowed(open_, "203.0.113.80")
    assert not addr_allowed(open_, "169.254.169.254")
    assert not addr_allowed(open_, "10.255.255.53")


def test_cidrs_never_open_a_denied_range() -> None:
    p = Policy(True, ("10.1.0.0/16", "198.51.100.0/24", "example.com"))
    assert not addr_allowed(p, "10.1.2.3")  # as the nftables rules drop it
    assert addr_allowed(p, "198.51.100.9")
    assert not addr_allowed(p, "203.0.113.80")  # an allow-list: only its CIDRs by address
    assert not name_allowed(Policy(True, ("10.1.0.0/16",)), "example.com")


def test_denied_table() -> None:
    for ip in ("10.0.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1", "169.254.169.254",
               "127.0.0.1", "0.1.2.3", "224.0.0.1", "240.0.0.1", "255.255.255.255",
               "192.0.0.8", "198.19.0.1", "::1", "not an address"):  # fmt: skip
        assert is_denied(ip), ip
    # The registries resolve into TEST-NET-3 here: the documentation ranges stay open.
    for ip in ("203.0.113.80", "198.51.100.1", "192.0.2.1", "1.1.1.1", "172.32.0.1"):
        assert not is_denied(ip), ip
    assert all(why for _, why in DENIED_IPV4)
