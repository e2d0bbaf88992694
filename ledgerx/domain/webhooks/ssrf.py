"""The SSRF guard: a tenant's URL must not make our servers reach our own network.

Outside development (`OUTBOUND_WEBHOOK_ALLOW_PRIVATE` false) an endpoint URL is refused when its
host is, or resolves to, anything but a public unicast address: loopback, private (RFC 1918, ULA),
shared (100.64/10), link-local (169.254/16 and fe80::/10, where cloud metadata services live),
unspecified, multicast, reserved and documentation ranges; IPv4 addresses inside IPv6 (mapped
`::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`, Teredo) are judged as the IPv4 address
they carry. Only http and https.

The check runs twice: when the URL is saved (`check_url`), and on every connection the delivery
worker opens (`connections.py`): DNS can change after creation, so the worker resolves the name
itself, refuses if any address is not allowed, and connects to the address it checked (no second
lookup a rebinding DNS server could answer differently). TLS still verifies the host name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit

from ledgerx.domain.errors import BadInput

MAX_URL_LENGTH = 2048
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Host names that name the machine itself or a cloud metadata service whatever DNS says.
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "metadata.google.internal", "metadata")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def refusal(ip: Address) -> str | None:
    """Why an address may not be reached (None: a public unicast address)."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        why = refusal(inner)
        return None if why is None else f"{why} (inside {ip})"
    if ip.is_unspecified:
        return f"{ip} is the unspecified address"
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address (cloud metadata lives there)"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if ip.is_private:
        return f"{ip} is a private address"
    if ip.is_reserved or not ip.is_global:
        return f"{ip} is not a public address"
    return None


def _bad(message: str, reason: str) -> BadInput:
    return BadInput(message, field="url", reason=reason)


def parse_url(url: str) -> SplitResult:
    """The URL's parts when it is an absolute http(s) URL with a host; BAD_USER_INPUT on `url`
    (reason INVALID_URL) otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise _bad("url is required", "INVALID_URL")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise _bad(f"url is longer than {MAX_URL_LENGTH} characters", "INVALID_URL")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise _bad("url contains spaces or control characters", "INVALID_URL")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a malformed port
    except ValueError:
        raise _bad("url is not a valid URL", "INVALID_URL") from None
    if parts.scheme not in ("http", "https"):
        raise _bad("url must start with http:// or https://", "INVALID_URL")
    if not parts.hostname:
        raise _bad("url has no host", "INVALID_URL")
    if port == 0:
        raise _bad("url has no valid port", "INVALID_URL")
    if parts.fragment:
        raise _bad("url may not have a #fragment", "INVALID_URL")
    return parts


def literal_address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def name_refusal(host: str) -> str | None:
    h = host.lower().rstrip(".")
    if h in _LOCAL_NAMES or h.endswith((".localhost", ".internal", ".local")):
        return f"{host} names a local or internal host"
    return None


async def resolve(host: str, port: int) -> list[Address]:
    """Every address the host resolves to (an IP literal resolves to itself)."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[Address] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = literal_address(str(sockaddr[0]))
        if ip is not None and ip not in found:
            found.append(ip)
    return found


def first_refusal(addresses: Iterable[Address]) -> str | None:
    for ip in addresses:
        why = refusal(ip)
        if why is not None:
            return why
    return None


async def check_url(url: str, *, allow_private: bool) -> str:
    """The URL to store, or BAD_USER_INPUT on `url`: INVALID_URL for a malformed one, and unless
    `allow_private`, PRIVATE_ADDRESS for a host that is or resolves to a refused address (or does
    not resolve: there is nothing to check)."""
    parts = parse_url(url)
    if allow_private:
        return url.strip()
    host = parts.hostname or ""
    why = name_refusal(host)
    if why is None:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            why = first_refusal(await resolve(host, port))
        except OSError:
            raise _bad(f"the host {host} does not resolve", "UNRESOLVABLE_HOST") from None
    if why is not None:
        raise _bad(f"url may not point to this network: {why}", "PRIVATE_ADDRESS")
    return url.strip()
