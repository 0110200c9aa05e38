"""The SSRF guard's address decision against every entry of the IANA special-purpose registries,
and the addresses Python's ``is_global`` let through. Literal addresses only: nothing is resolved
over the network and nothing is connected to."""

import ipaddress

import pytest

from fluxhost.address_registry import IPV4_SPECIAL_PURPOSE, IPV6_SPECIAL_PURPOSE
from fluxhost.urlguard import Allowlist, UrlRefused, check_public_url, is_public_address

# Every entry of the IPv4 and IPv6 Special-Purpose Address Registries with its "Globally
# Reachable" column (None where it says N/A), written out apart from fluxhost.address_registry so
# that each copy checks the other.
REGISTRY = [
    ("0.0.0.0/8", False),
    ("0.0.0.0/32", False),
    ("10.0.0.0/8", False),
    ("100.64.0.0/10", False),
    ("127.0.0.0/8", False),
    ("169.254.0.0/16", False),
    ("172.16.0.0/12", False),
    ("192.0.0.0/24", False),
    ("192.0.0.0/29", False),
    ("192.0.0.8/32", False),
    ("192.0.0.9/32", True),
    ("192.0.0.10/32", True),
    ("192.0.0.170/32", False),
    ("192.0.0.171/32", False),
    ("192.0.2.0/24", False),
    ("192.31.196.0/24", True),
    ("192.52.193.0/24", True),
    ("192.88.99.0/24", None),
    ("192.88.99.2/32", False),
    ("192.168.0.0/16", False),
    ("192.175.48.0/24", True),
    ("198.18.0.0/15", False),
    ("198.51.100.0/24", False),
    ("203.0.113.0/24", False),
    ("240.0.0.0/4", False),
    ("255.255.255.255/32", False),
    ("::1/128", False),
    ("::/128", False),
    ("::ffff:0:0/96", False),
    ("64:ff9b::/96", True),
    ("64:ff9b:1::/48", False),
    ("100::/64", False),
    ("100:0:0:1::/64", False),
    ("2001::/23", False),
    ("2001::/32", None),
    ("2001:1::1/128", True),
    ("2001:1::2/128", True),
    ("2001:1::3/128", True),
    ("2001:2::/48", False),
    ("2001:3::/32", True),
    ("2001:4:112::/48", True),
    ("2001:10::/28", None),
    ("2001:20::/28", True),
    ("2001:30::/28", True),
    ("2001:db8::/32", False),
    ("2002::/16", None),
    ("2620:4f:8000::/48", True),
    ("3fff::/20", False),
    ("5f00::/16", False),
    ("fc00::/7", False),
    ("fe80::/10", False),
]

# The registry's False and N/A entries are refused; of its True ones only the NAT64 well-known
# prefix is admitted, where the IPv4 address in its last 32 bits is public (the others are anycast
# services and identifiers). An IPv4-mapped address is judged as the IPv4 address it maps.
ADMITTED_ENTRIES = {"64:ff9b::/96"}
EMBEDDED_IPV4_DECIDES = {
    "64:ff9b::": False,  # NAT64 of 0.0.0.0, not a public IPv4 address
    "::ffff:8000:0": True,  # IPv4-mapped 128.0.0.0, a public one: the connection goes there
}


def first_and_middle(block: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    network = ipaddress.ip_network(block)
    return [network.network_address, network.network_address + network.num_addresses // 2]


ENTRY_CASES = [
    pytest.param(address, EMBEDDED_IPV4_DECIDES.get(str(address), reachable is True and block in ADMITTED_ENTRIES),
                 id=f"{block} {address}")
    for block, reachable in REGISTRY
    for address in first_and_middle(block)
]

# What ipaddress.is_global called public: each row is a hole the guard had, or a decision about one.
GAPS = [
    ("192.0.0.8", False),  # IPv4 dummy address, inside 192.0.0.0/24 but outside its /29
    ("192.0.0.128", False),  # IETF protocol assignments
    ("192.88.99.1", False),  # deprecated 6to4 relay anycast
    ("192.0.0.9", False),  # PCP anycast: globally reachable, answered by the nearest (local) server
    ("192.175.48.1", False),  # AS112 anycast
    ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
    ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
    ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8: how an IPv6-only server with DNS64 reaches it
    ("64:ff9b:1::1", False),  # local-use NAT64
    ("64:ff9b:1:a00:1::", False),
    ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
    ("2002:808:808::1", False),  # 6to4 of 8.8.8.8: tunnels are refused whole
    ("2001:0:808:808::1", False),  # Teredo, server 8.8.8.8
    ("::10.0.0.1", False),  # deprecated IPv4-compatible
    ("::8.8.8.8", False),
    ("fec0::1", False),  # deprecated site-local
    ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
    ("::ffff:192.0.0.8", False),
    ("100:0:0:1::1", False),  # dummy IPv6 prefix
    ("3fff::1", False),  # documentation, 2024
    ("5f00::1", False),  # SRv6 SIDs, outside 2000::/3
    ("4000::1", False),  # reserved by the IETF, outside 2000::/3
    ("224.0.0.251", False),  # multicast
    ("239.255.255.250", False),
    ("ff0e::1", False),  # global-scope multicast
    ("ff02::1", False),
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2001:4860:4860::8888", "::ffff:8.8.8.8",
          "64:ff9b::101:101"]


def literal_url(address: str) -> str:
    return f"http://[{address}]/hook" if ":" in address else f"http://{address}/hook"


def test_the_registry_tables_hold_every_entry_with_its_column():
    held = [(str(entry.network), entry.globally_reachable) for entry in IPV4_SPECIAL_PURPOSE + IPV6_SPECIAL_PURPOSE]
    assert held == REGISTRY


@pytest.mark.parametrize("address, admitted", ENTRY_CASES)
def test_an_address_in_a_registry_entry_is_refused_unless_it_is_nat64_of_a_public_one(address, admitted):
    assert is_public_address(address) is admitted


@pytest.mark.parametrize("address, admitted", GAPS + [(address, True) for address in PUBLIC])
def test_the_guard_decides_what_is_global_got_wrong(address, admitted):
    assert is_public_address(ipaddress.ip_address(address)) is admitted
    if admitted:
        assert check_public_url(literal_url(address), Allowlist.parse("")).address == ipaddress.ip_address(address)
    else:
        with pytest.raises(UrlRefused, match=r"non-public address \(.*FLUXHOST_CALLBACK_ALLOWLIST"):
            check_public_url(literal_url(address), Allowlist.parse(""))


@pytest.mark.parametrize("address, allowed", [("192.0.0.8", "192.0.0.0/24"), ("fec0::1", "fec0::/10"),
                                              ("64:ff9b::a00:1", "64:ff9b::/96"), ("2002:a00:1::1", "2002::/16")])
def test_the_allowlist_still_admits_what_the_registries_refuse(address, allowed):
    check_public_url(literal_url(address), Allowlist.parse(allowed))
