"""Finding every router replica behind one DNS name (a Kubernetes headless Service).

The name is resolved every ``router_dns_interval_s``; each address becomes its own router URL
(``scheme://address:port``), so the agent registers with and reports to every replica, and stops
talking to addresses that vanished. Tests pass their own resolver instead of DNS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

log = logging.getLogger("node_agent.router_directory")

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def dns_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to now (IPv4 and IPv6)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _url_for(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"{scheme}://{host}:{port}"


class RouterDirectory:
    """The router URLs one DNS name stands for, as of the last lookup."""

    def __init__(self, url: str, resolver: Resolver = dns_resolver) -> None:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"router DNS URL {url!r} has no host name")
        self._scheme = parts.scheme or "http"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._scheme == "https" else 80)
        self._resolver = resolver

    async def urls(self) -> set[str] | None:
        """The replicas' URLs, or None when the lookup failed (keep the previous set)."""
        try:
            addresses = await self._resolver(self._host, self._port)
        except (OSError, ValueError) as exc:
            log.warning("cannot resolve router name %s: %s", self._host, exc)
            return None
        return {_url_for(self._scheme, a, self._port) for a in addresses}
