"""The guard against server-side request forgery, for every URL a client makes the server call.

A self-hosted server sits inside someone's network: a URL a key holder supplies (a callback, and
later an input image) must not reach loopback, private, link-local, multicast or reserved
addresses unless the operator allow-lists them. Checked when the URL is given and again before
each connection, since DNS answers can change in between; and the connection goes to the address
that was checked (:class:`PinnedUrl`), so a second DNS answer (rebinding) never gets a say.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

MAX_URL_LENGTH = 2083
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(ValueError):
    """A URL the server will not call; ``str(error)`` says why, as a predicate of the URL ("host x
    cannot be resolved"): each door names the input its own way."""


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


def _is_public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class PinnedUrl:
    """A URL that passed the guard, with the address its host resolved to then."""

    url: str
    address: Address

    def request(self) -> dict[str, Any]:
        """httpx request arguments that reach the checked address: the URL with that address for
        its host, the name kept for the Host header and for TLS (SNI and the certificate check)."""
        original = httpx.URL(self.url)
        host_header = original.host if original.port is None else f"{original.host}:{original.port}"
        return {"url": original.copy_with(host=str(self.address)), "headers": {"host": host_header},
                "extensions": {"sni_hostname": original.host}}


def check_public_url(url: str, allowlist: Allowlist) -> PinnedUrl:
    """Refuse a URL that is not http(s), too long, unresolvable, or resolves to a non-public
    address the allowlist does not admit. Returns the URL pinned to the first address found, which
    a connection should use."""
    refusal = f"must be an http or https URL of at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise UrlRefused(refusal) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL_LENGTH:
        raise UrlRefused(refusal)
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        raise UrlRefused(f"host {host} cannot be resolved") from None
    addresses = [ipaddress.ip_address(sockaddr[0].split("%")[0]) for *_, sockaddr in found]
    for address in addresses:
        if not _is_public(address) and not allowlist.admits(host, address):
            raise UrlRefused(
                f"points to a non-public address ({address}); "
                "the server admits such hosts only through FLUXHOST_CALLBACK_ALLOWLIST"
            )
    return PinnedUrl(url, addresses[0])
