"""Refuse webhook URLs that would make inferq call into its own network (SSRF).

A job's ``webhook`` is a URL chosen by whoever submits the job, and the sender runs inside
the operator's network. Left unchecked, ``http://169.254.169.254/latest/meta-data`` or
``http://127.0.0.1:6379/`` would have inferq send requests the caller could never send
itself. So:

* only ``http``/``https``, no ``user:password@``;
* the host is *resolved* (``socket.getaddrinfo``, A and AAAA) and the URL is refused if ANY
  address is loopback, private, link-local, shared (100.64/10), reserved, multicast,
  unspecified or otherwise not globally routable, or a cloud metadata address. Checking the
  resolved addresses -- never the spelling -- catches ``0x7f000001``, ``2130706433``,
  ``127.1``, ``0177.0.0.1`` and names that resolve to loopback alike;
* IPv6 forms that carry an IPv4 address (``::ffff:127.0.0.1``, ``::127.0.0.1``, 6to4,
  Teredo, NAT64 ``64:ff9b::/96``) are judged by the IPv4 address they reach;
* the operator can allow networks (``INFERQ_WEBHOOK_ALLOW_NETS``, e.g. ``127.0.0.1/32`` in
  tests). A metadata address is allowed only by a network that names it alone
  (``169.254.169.254/32``), never by a wide one such as ``169.254.0.0/16``.

The check runs at submit (a 422 naming ``webhook``) and again at send, where the sender
connects to the very address checked -- a DNS answer that changes in between (rebinding)
cannot redirect the request -- and never follows redirects.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from urllib.parse import urlsplit

from inferq.errors import ConfigError, InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud metadata endpoints: AWS/GCP/Azure/OpenStack (169.254.169.254), AWS over IPv6,
#: Alibaba (100.100.100.200), Azure's wire server (168.63.129.16 -- a public address!),
#: Oracle (192.0.0.192).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
        "192.0.0.192",
    )
)

#: 100.64.0.0/10 (carrier-grade NAT) is neither "private" nor "global" to ``ipaddress``.
_SHARED = ipaddress.ip_network("100.64.0.0/10")
#: NAT64 well-known prefix: 64:ff9b::a.b.c.d reaches a.b.c.d through a NAT64 gateway.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeWebhookURL(InvalidInput):
    """A webhook URL inferq refuses to call. ``errors`` names the field ``webhook``.

    ``retryable`` is True when the host did not resolve (DNS may come back), False when the
    URL or an address it resolves to is refused.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"webhook refused: {message}", [{"field": "webhook", "message": message}])
        self.retryable = retryable


@functools.lru_cache(maxsize=32)
def parse_allow_nets(allow_nets: str) -> tuple[IPNetwork, ...]:
    """The networks of a comma-separated CIDR list. ConfigError names a bad entry."""
    nets: list[IPNetwork] = []
    for part in allow_nets.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ConfigError(f"INFERQ_WEBHOOK_ALLOW_NETS: {part!r} is not a CIDR: {exc}") from exc
    return tuple(nets)


def effective_address(ip: IPAddress) -> IPAddress:
    """The address a connection to ``ip`` really reaches: the IPv4 one inside an IPv6
    form that embeds it (mapped, compatible, 6to4, Teredo client, NAT64), else ``ip``."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    value = int(ip)
    if ip in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    # Deprecated IPv4-compatible form ::a.b.c.d (but not :: and ::1, judged as IPv6).
    if value >> 32 == 0 and value > 1:
        return ipaddress.IPv4Address(value)
    return ip


def unsafe_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is refused as a webhook target, or None if it is a public address."""
    target = effective_address(ip)
    if target in METADATA_ADDRESSES:
        return "a cloud metadata address"
    checks = (
        ("loopback", target.is_loopback),
        ("unspecified", target.is_unspecified),
        ("link-local", target.is_link_local),
        ("multicast", target.is_multicast),
        ("shared (100.64.0.0/10)", isinstance(target, ipaddress.IPv4Address)
         and target in _SHARED),
        ("private", target.is_private),
        ("reserved", target.is_reserved),
        # Catch-all for special ranges the names above miss (documentation, benchmarking,
        # IETF protocol assignments ...): only globally routable addresses pass.
        ("not globally routable", not target.is_global),
    )
    for name, hit in checks:
        if hit:
            return f"a {name} address" if name != "unspecified" else "the unspecified address"
    return None


def _allowed(ip: IPAddress, nets: tuple[IPNetwork, ...]) -> bool:
    target = effective_address(ip)
    for net in nets:
        if target.version != net.version or target not in net:
            continue
        if target in METADATA_ADDRESSES and net.num_addresses != 1:
            continue  # a wide allowance never opens the metadata service
        return True
    return False


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (A and AAAA), in resolver order, without repeats.

    Numeric hosts go through the same call, so ``0x7f000001`` and ``127.1`` come back as
    ``127.0.0.1``. Raises UnsafeWebhookURL (retryable) if the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise UnsafeWebhookURL(f"host {host!r} does not resolve ({exc})", retryable=True) from exc
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise UnsafeWebhookURL(f"host {host!r} has no IPv4 or IPv6 address", retryable=True)
    return addresses


def check_webhook_url(url: str, allow_nets: str = "") -> list[IPAddress]:
    """The addresses ``url``'s host resolves to, all of them safe to call.

    Raises UnsafeWebhookURL (an InvalidInput whose ``errors`` name ``webhook``) when the URL
    is not plain ``http(s)://host[:port]/...``, when its host does not resolve, or when any
    address it resolves to is internal (see the module docstring) and not inside a network
    of ``allow_nets`` (comma-separated CIDRs). Blocks for as long as DNS takes: call it from
    a thread, not an event loop.
    """
    if not isinstance(url, str) or len(url) > 2048:
        raise UnsafeWebhookURL("must be an http(s) URL of at most 2048 characters")
    if any(c in url for c in "\r\n\t\x00 "):
        raise UnsafeWebhookURL("must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeWebhookURL(f"not a valid URL ({exc})") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise UnsafeWebhookURL("must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise UnsafeWebhookURL("must not carry a user name or password")
    host = parts.hostname
    if not host:
        raise UnsafeWebhookURL("must name a host")
    if port is None:
        port = 443 if parts.scheme.lower() == "https" else 80
    nets = parse_allow_nets(allow_nets)
    addresses = resolve(host, port)
    for ip in addresses:
        if _allowed(ip, nets):
            continue
        reason = unsafe_reason(ip)
        if reason is not None:
            shown = host if host == str(ip) else f"{host} ({ip})"
            raise UnsafeWebhookURL(f"{shown} is {reason}; webhooks must reach public addresses")
    return addresses
