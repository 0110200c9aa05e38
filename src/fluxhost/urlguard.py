"""The guard against server-side request forgery, for every URL a client makes the server call.

A self-hosted server sits inside someone's network: a URL a key holder supplies (a callback, and
later an input image) must not reach loopback, private, link-local, multicast, reserved or other
special-purpose addresses (:func:`is_public_address`) unless the operator allow-lists them.
Checked when the URL is given and again before each connection, since DNS answers can change in
between; and the connection goes to the address that was checked (:class:`PinnedUrl`), so a second
DNS answer (rebinding) never gets a say.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from fluxhost.address_registry import IPV4_MULTICAST, IPV6_GLOBAL_UNICAST, Address, special_purpose_block

MAX_URL_LENGTH = 2083
NAT64_WELL_KNOWN_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


class UrlRefused(ValueError):
    """A URL the server will not call; ``str(error)`` says why, as a predicate of the URL ("host x
    cannot be resolved"): each door names the input its own way."""


class UrlLookupFailed(UrlRefused):
    """A host name DNS could not answer for just now (``EAI_AGAIN``): the same URL may pass later."""


@dataclass(frozen=True)
class Allowlist:
    """Hosts and networks the server may call although they are not public."""

    hosts: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        """Comma-separated host names and CIDR ranges (a bare address is a one-address range)."""
        hosts, networks = set(), []
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def admits(self, host: str, address: Address) -> bool:
        return host.lower().rstrip(".") in self.hosts or any(address in network for network in self.networks)


def is_public_address(address: Address) -> bool:
    """Whether the server may call ``address`` without the allowlist, by the IANA registries
    (:mod:`fluxhost.address_registry`) rather than Python's ``is_global``, which called 192.0.0.8,
    the NAT64 and 6to4 prefixes, ``::a.b.c.d`` and ``fec0::/10`` public.

    An address in no special-purpose entry is public if it is unicast: outside IPv4 multicast
    (224.0.0.0/4), and for IPv6 inside 2000::/3, the one block IANA allocates global unicast from;
    that refuses the deprecated IPv4-compatible ``::a.b.c.d`` (RFC 4291) and site-local fec0::/10
    (RFC 3879), multicast ff00::/8 and the space the IETF keeps reserved.

    An address in a special-purpose entry is refused, even where the entry's "Globally Reachable"
    column says True, with one exception below. Those entries are anycast service addresses (PCP,
    TURN, DNS-SD registration, AMT, AS112), which the nearest instance answers, often a router or
    server of the very network this server sits in, and identifiers that locate nothing (ORCHIDv2,
    drone tags); no callback or image host lives at one. Where the column says N/A, the 6to4
    (2002::/16) and Teredo (2001::/32) tunnels are refused whole rather than decoded: a packet to
    them goes on to an IPv4 address through relays this server cannot see. The local-use NAT64
    prefix 64:ff9b:1::/48 may hold its IPv4 address at several places (RFC 6052, section 2.2), so
    it is refused whole too.

    The IPv4 address inside decides twice: an IPv4-mapped address (::ffff:0:0/96) is judged as the
    IPv4 address it maps, since a connection to it goes there; and one in the NAT64 well-known
    prefix (64:ff9b::/96) is public when its last 32 bits are, as the translator forwards to them.
    That prefix is not refused whole: a server on an IPv6-only network reaches every IPv4-only host
    through it (DNS64 answers with it).
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    entry = special_purpose_block(address)
    if entry is None:
        return address not in IPV4_MULTICAST if address.version == 4 else address in IPV6_GLOBAL_UNICAST
    if entry.network == NAT64_WELL_KNOWN_PREFIX:
        return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    return False


@dataclass(frozen=True)
class PinnedUrl:
    """A URL that passed the guard, with the address its host resolved to then."""

    url: str
    address: Address

    def request(self) -> dict[str, Any]:
        """httpx request arguments that reach the checked address: the URL with that address for
        its host, the name kept for the Host header and for TLS (SNI and the certificate check)."""
        original = httpx.URL(self.url)
        # as the URL would send them: an international name in its ASCII form, an IPv6 one in brackets
        return {"url": original.copy_with(host=str(self.address)),
                "headers": {"host": original.netloc.decode("ascii")},
                "extensions": {"sni_hostname": original.raw_host.decode("ascii")}}


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The certificate checks every outgoing request shares. Building them reads the system's
    certificates (40-75 ms here): a client made per callback or fetch passes this one instead
    of building its own. An ``SSLContext`` may serve many connections and threads at once."""
    return httpx.create_ssl_context()


def check_public_url(url: str, allowlist: Allowlist) -> PinnedUrl:
    """Refuse a URL that is not http(s), too long, unresolvable, or resolves to a non-public
    address the allowlist does not admit. Returns the URL pinned to the first address found, which
    a connection should use."""
    refusal = f"must be an http or https URL of at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        httpx.URL(url)  # what a request to it is built from: control characters and the like refused
    except (ValueError, httpx.InvalidURL):  # e.g. an unclosed IPv6 bracket
        raise UrlRefused(refusal) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL_LENGTH:
        raise UrlRefused(refusal)
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as error:
        if isinstance(error, socket.gaierror) and error.errno == socket.EAI_AGAIN:
            raise UrlLookupFailed(f"host {host} cannot be resolved just now") from None
        raise UrlRefused(f"host {host} cannot be resolved") from None
    addresses = [ipaddress.ip_address(sockaddr[0].split("%")[0]) for *_, sockaddr in found]
    for address in addresses:
        if not is_public_address(address) and not allowlist.admits(host, address):
            raise UrlRefused(
                f"points to a non-public address ({address}); "
                "the server admits such hosts only through FLUXHOST_CALLBACK_ALLOWLIST"
            )
    return PinnedUrl(url, addresses[0])
