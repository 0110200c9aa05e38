"""The IANA address registries the SSRF guard reads, as data: which blocks are globally reachable.

Transcribed from the IPv4 and IPv6 Special-Purpose Address Registries
(https://www.iana.org/assignments/iana-ipv4-special-registry, .../iana-ipv6-special-registry) as
they stood in 2025, every entry, with its name, its RFC and its "Globally Reachable" column; plus
the two facts the guard takes from the IPv4 and IPv6 Address Space registries, which the
special-purpose ones leave out. A new registry entry needs a row here and one in
tests/test_urlguard.py, whose table must match this one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SpecialPurposeBlock:
    """One registry entry. ``globally_reachable`` is its "Globally Reachable" column, None where
    the registry says N/A (the deprecated entries and the 6to4 and Teredo tunnels). The guard
    refuses more than the False ones: :func:`fluxhost.urlguard.is_public_address` says which."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    name: str
    rfc: str
    globally_reachable: bool | None


def _table(*rows: tuple[str, str, str, bool | None]) -> tuple[SpecialPurposeBlock, ...]:
    return tuple(SpecialPurposeBlock(ipaddress.ip_network(block), name, rfc, reachable)
                 for block, name, rfc, reachable in rows)


IPV4_SPECIAL_PURPOSE = _table(
    ("0.0.0.0/8", '"This network"', "RFC 791, section 3.2", False),
    ("0.0.0.0/32", '"This host on this network"', "RFC 1122, section 3.2.1.3", False),
    ("10.0.0.0/8", "Private-Use", "RFC 1918", False),
    ("100.64.0.0/10", "Shared Address Space", "RFC 6598", False),
    ("127.0.0.0/8", "Loopback", "RFC 1122, section 3.2.1.3", False),
    ("169.254.0.0/16", "Link Local", "RFC 3927", False),
    ("172.16.0.0/12", "Private-Use", "RFC 1918", False),
    ("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890, section 2.1", False),
    ("192.0.0.0/29", "IPv4 Service Continuity Prefix", "RFC 7335", False),
    ("192.0.0.8/32", "IPv4 dummy address", "RFC 7600", False),
    ("192.0.0.9/32", "Port Control Protocol Anycast", "RFC 7723", True),
    ("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", "RFC 8155", True),
    ("192.0.0.170/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050 section 2.2", False),  # one entry,
    ("192.0.0.171/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050 section 2.2", False),  # two blocks
    ("192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737", False),
    ("192.31.196.0/24", "AS112-v4", "RFC 7535", True),
    ("192.52.193.0/24", "AMT", "RFC 7450", True),
    ("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", "RFC 7526", None),
    ("192.88.99.2/32", "6a44-relay anycast address", "RFC 6751", False),
    ("192.168.0.0/16", "Private-Use", "RFC 1918", False),
    ("192.175.48.0/24", "Direct Delegation AS112 Service", "RFC 7534", True),
    ("198.18.0.0/15", "Benchmarking", "RFC 2544", False),
    ("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737", False),
    ("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737", False),
    ("240.0.0.0/4", "Reserved", "RFC 1112, section 4", False),
    ("255.255.255.255/32", "Limited Broadcast", "RFC 8190, RFC 919 section 7", False),
)

IPV6_SPECIAL_PURPOSE = _table(
    ("::1/128", "Loopback Address", "RFC 4291", False),
    ("::/128", "Unspecified Address", "RFC 4291", False),
    ("::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291", False),
    ("64:ff9b::/96", "IPv4-IPv6 Translation (NAT64 well-known prefix)", "RFC 6052", True),
    ("64:ff9b:1::/48", "IPv4-IPv6 Translation (local use)", "RFC 8215", False),
    ("100::/64", "Discard-Only Address Block", "RFC 6666", False),
    ("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780", False),
    ("2001::/23", "IETF Protocol Assignments", "RFC 2928", False),
    ("2001::/32", "TEREDO", "RFC 4380, RFC 8190", None),
    ("2001:1::1/128", "Port Control Protocol Anycast", "RFC 7723", True),
    ("2001:1::2/128", "Traversal Using Relays around NAT Anycast", "RFC 8155", True),
    ("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", "RFC 9665", True),
    ("2001:2::/48", "Benchmarking", "RFC 5180, errata 1752", False),
    ("2001:3::/32", "AMT", "RFC 7450", True),
    ("2001:4:112::/48", "AS112-v6", "RFC 7535", True),
    ("2001:10::/28", "Deprecated (previously ORCHID)", "RFC 4843", None),
    ("2001:20::/28", "ORCHIDv2", "RFC 7343", True),
    ("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374", True),
    ("2001:db8::/32", "Documentation", "RFC 3849", False),
    ("2002::/16", "6to4", "RFC 3056", None),
    ("2620:4f:8000::/48", "Direct Delegation AS112 Service", "RFC 7534", True),
    ("3fff::/20", "Documentation", "RFC 9637", False),
    ("5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602", False),
    ("fc00::/7", "Unique-Local", "RFC 4193, RFC 8190", False),
    ("fe80::/10", "Link-Local Unicast", "RFC 4291", False),
)

# From the IPv4 Address Space registry: group addresses (RFC 5771), never one host to call.
IPV4_MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")
# From the IPv6 Address Space registry: the one block IANA allocates global unicast from (RFC 4291,
# section 2.4); the rest is multicast, link- or site-local, or reserved by the IETF.
IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def special_purpose_block(address: Address) -> SpecialPurposeBlock | None:
    """The registry entry holding ``address`` with the longest prefix, or None. The longest one
    decides, as the registries say: 192.0.0.9/32 is reachable inside the unreachable 192.0.0.0/24."""
    table = IPV4_SPECIAL_PURPOSE if address.version == 4 else IPV6_SPECIAL_PURPOSE
    holding = [entry for entry in table if address in entry.network]
    return max(holding, key=lambda entry: entry.network.prefixlen, default=None)
