"""Fetches an image a provider answered with as a URL: public addresses only, pinned, no redirects."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.openai_api import ProviderCallError, ProviderFailureKind

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses the name resolves to, as text.
Resolver = Callable[[str, int], Sequence[str]]

MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
_CHUNK_BYTES = 64 * 1024
# The well-known NAT64 prefix: its addresses reach the IPv4 address in their last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class DownloadPolicy:
    """Where image downloads may connect. Only public addresses, unless a network is allowed explicitly
    (STILLPOINT_IMAGE_DOWNLOAD_ALLOWED_NETWORKS: the tests' server on 127.0.0.1, a provider on a LAN)."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    max_bytes: int = MAX_DOWNLOAD_BYTES

    def permits(self, address: IPAddress) -> bool:
        """Whether a connection to `address` is allowed."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        # Compared version by version: ipaddress would match an IPv4 address against an IPv6 network's bits.
        if any(
            address.version == network.version and address in network for network in self.allowed_networks
        ):
            return True
        return is_public(address)


def is_public(address: IPAddress) -> bool:
    """False for private, loopback, link-local, reserved, unspecified, shared and multicast addresses, and for
    IPv6 addresses that carry one of those inside (IPv4-mapped, 6to4, Teredo, NAT64)."""
    if (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
        or address.is_multicast
        or not address.is_global
    ):
        return False
    if isinstance(address, ipaddress.IPv6Address):
        embedded = [address.ipv4_mapped, address.sixtofour, address.teredo[1] if address.teredo else None]
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return all(inner is None or is_public(inner) for inner in embedded)
    return True


def resolve(host: str, port: int) -> list[str]:
    """Every address the name resolves to (a literal address resolves to itself)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def download_image(
    url: str, timeout_seconds: float, policy: DownloadPolicy, *, resolver: Resolver = resolve
) -> bytes:
    """Blocking (run it in a thread): resolves the host once, refuses unless every address is permitted,
    connects to the checked address itself (so a second lookup cannot rebind the name to another), and
    answers a redirect with an error rather than following it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _rejected("the image provider returned a URL that is not HTTP(S)")
    if parts.username is not None or parts.password is not None:
        raise _rejected("the image provider returned a URL with credentials in it")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _rejected("the image provider returned a URL with an invalid port") from None
    host = parts.hostname
    try:
        addresses = [ipaddress.ip_address(address) for address in resolver(host, port)]
    except (OSError, ValueError):
        raise ProviderCallError(
            ProviderFailureKind.UNAVAILABLE, "the image URL's host could not be resolved"
        ) from None
    if not addresses:
        raise ProviderCallError(ProviderFailureKind.UNAVAILABLE, "the image URL's host could not be resolved")
    # Every address, not only the first: a name that also resolves to an internal address is not trusted.
    if not all(policy.permits(address) for address in addresses):
        raise _rejected(
            "the image URL points at a private, loopback, link-local or reserved address: not downloaded"
        )
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    connection = _pinned_connection(parts.scheme, host, port, addresses[0], timeout_seconds)
    try:
        return _fetch(connection, target, timeout_seconds, policy.max_bytes)
    except (OSError, http.client.HTTPException) as error:
        raise ProviderCallError(
            ProviderFailureKind.UNAVAILABLE, f"the image could not be downloaded ({type(error).__name__})"
        ) from None
    finally:
        connection.close()


def _fetch(
    connection: http.client.HTTPConnection, target: str, timeout_seconds: float, max_bytes: int
) -> bytes:
    deadline = time.monotonic() + timeout_seconds
    connection.request("GET", target, headers={"Accept": "image/png, image/jpeg, image/webp"})
    response = connection.getresponse()
    if 300 <= response.status < 400:
        raise _rejected(f"the image URL answered with a redirect ({response.status}), which is not followed")
    if response.status != 200:
        kind = ProviderFailureKind.UNAVAILABLE if response.status >= 500 else ProviderFailureKind.REJECTED
        raise ProviderCallError(kind, f"the image URL answered {response.status}")
    declared = response.getheader("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    received = bytearray()
    while chunk := response.read(_CHUNK_BYTES):
        received += chunk
        if len(received) > max_bytes:
            raise _too_large(max_bytes)
        # Each read has the socket's timeout; this bounds a server that drips bytes for ever.
        if time.monotonic() > deadline:
            raise ProviderCallError(
                ProviderFailureKind.TIMEOUT, f"the image download took longer than {timeout_seconds:g} s"
            )
    return bytes(received)


def _pinned_connection(
    scheme: str, host: str, port: int, address: IPAddress, timeout_seconds: float
) -> http.client.HTTPConnection:
    if scheme == "https":
        return _PinnedHTTPSConnection(host, port, str(address), timeout_seconds, ssl.create_default_context())
    return _PinnedHTTPConnection(host, port, str(address), timeout_seconds)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Speaks HTTP for `host` (the Host header) over a socket to the checked `address`."""

    def __init__(self, host: str, port: int, address: str, timeout_seconds: float) -> None:
        super().__init__(host, port, timeout=timeout_seconds)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to the checked `address`, with the certificate verified for `host` (SNI and hostname check)."""

    def __init__(
        self, host: str, port: int, address: str, timeout_seconds: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout_seconds, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        plain = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(plain, server_hostname=self.host)


def _rejected(message: str) -> ProviderCallError:
    return ProviderCallError(ProviderFailureKind.REJECTED, message)


def _too_large(max_bytes: int) -> ProviderCallError:
    return _rejected(f"the image provider returned an image over {max_bytes // (1024 * 1024)} MiB")
