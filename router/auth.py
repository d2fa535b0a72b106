"""Who may do what: client API keys bound to tenants, agent registration tokens, an admin token.

Secrets are kept only as SHA-256 digests (hashed at rest: config and key files hold digests) and
compared with :func:`hmac.compare_digest`. When no client keys are configured the client API is
open; when no admin token is configured the operator endpoints are open. When no registration
token is configured, agents may register, report and deregister only from this machine: the
connection's own peer address must be loopback (127.0.0.0/8, ::1) or a Unix socket. Forwarded
headers are never believed, so a reverse proxy on the same machine makes every agent local:
set a token there. Each of these is reported at start (:meth:`Authenticator.describe`). A client
key comes as ``Authorization: Bearer <key>`` or, as Anthropic's clients send it, ``x-api-key``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from router.errors import Forbidden, Unauthorized

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics", "/openapi.json", "/dashboard"})
GROUPS_API = "/api/server-groups"
TENANT = web.RequestKey("tenant", str)
ADMIN = web.RequestKey("admin", bool)


NEEDS_TOKEN = (
    "registering from another machine needs a token: set ROUTER_REGISTRATION_TOKEN on the "
    "router and the same value as --router-token on the agent"
)


def is_local_peer(peer: str | None) -> bool:
    """Whether a connection's peer address is this machine: loopback (IPv4, IPv6, or IPv4
    loopback mapped into IPv6) or a Unix socket (no address). Unknown (None) is not local."""
    if peer is None:
        return False
    if peer == "":
        return True  # a Unix socket: only this machine can reach it
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _client_key(request: web.Request) -> str | None:
    """A client's API key: ``Authorization: Bearer``, else Anthropic's ``x-api-key``."""
    bearer = _bearer(request)
    if bearer is not None:
        return bearer
    value = request.headers.get("x-api-key", "").strip()
    return value or None


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(frozen=True, slots=True)
class ApiKey:
    tenant: str
    sha256: str


def load_key_file(path: Path) -> tuple[ApiKey, ...]:
    """Lines ``tenant:sha256hex``; blank lines and ``#`` comments ignored."""
    keys = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tenant, _, hexdigest = line.partition(":")
        if not tenant or len(hexdigest) != 64:
            raise ValueError(f"{path}:{number}: expected 'tenant:<sha256 hex of the key>'")
        keys.append(ApiKey(tenant=tenant.strip(), sha256=hexdigest.strip().lower()))
    return tuple(keys)


def _matches(presented: str | None, digests: Iterable[str]) -> str | None:
    """The stored digest that the presented secret hashes to, compared in constant time."""
    if presented is None:
        return None
    found = None
    candidate = digest(presented)
    for stored in digests:
        if hmac.compare_digest(candidate, stored):
            found = stored
    return found


class HostAllowlist:
    """Hosts and CIDRs a node's ``baseUrl`` may point at; empty allows every host."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = []
        self._names = []
        for entry in entries:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._names.append(entry.lower())

    def __bool__(self) -> bool:
        return bool(self._networks or self._names)

    def allows(self, url: str) -> bool:
        if not self:
            return True
        host = (urlsplit(url).hostname or "").lower()
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any(
                host == name or (name.startswith("*.") and host.endswith(name[1:]))
                for name in self._names
            )
        return any(address in network for network in self._networks)


class Authenticator:
    def __init__(
        self,
        api_keys: Iterable[ApiKey],
        registration_digests: Iterable[str],
        admin_digest: str | None,
    ) -> None:
        self._tenant_by_digest = {k.sha256: k.tenant for k in api_keys}
        self._registration = tuple(registration_digests)
        self._admin = admin_digest

    @property
    def enabled(self) -> bool:
        """Whether any check is configured (client keys, registration or admin tokens)."""
        return bool(self._tenant_by_digest or self._registration or self._admin)

    @property
    def clients_open(self) -> bool:
        return not self._tenant_by_digest

    def client_tenant(self, request: web.Request) -> str | None:
        """The caller's tenant from its key when keys are on (the tenant header, if sent, must
        agree); None when keys are off."""
        if self.clients_open:
            return None  # the dispatcher reads (and checks) the tenant header itself
        claimed = request.headers.get("X-Octopus-Tenant-Id")
        token = _client_key(request)
        if token is None:
            raise Unauthorized(
                "this router needs an API key: send 'Authorization: Bearer <key>' "
                "(or 'x-api-key: <key>')"
            )
        stored = _matches(token, self._tenant_by_digest)
        if stored is None:
            raise Unauthorized("the API key is not valid", code="invalid_api_key")
        tenant = self._tenant_by_digest[stored]
        if claimed is not None and claimed != tenant:
            raise Forbidden("X-Octopus-Tenant-Id does not match the tenant of this API key")
        return tenant

    def agent(self, request: web.Request) -> str | None:
        """The digest of the registration token presented; None when tokens are off, and then
        only a local peer may act as an agent (403 for others, saying how to set a token)."""
        if not self._registration:
            if not is_local_peer(request.remote):
                raise Forbidden(NEEDS_TOKEN, code="registration_token_required")
            return None
        stored = _matches(_bearer(request), self._registration)
        if stored is None:
            raise Unauthorized(
                "registering a node needs the registration token: the agent's --router-token "
                "must match the router's ROUTER_REGISTRATION_TOKEN"
            )
        return stored

    def describe(self) -> list[str]:
        """What is open and what is checked, one line each, for the start-up log."""
        return [
            "client API: "
            + ("open (no API keys)" if self.clients_open else "API keys bound to tenants"),
            "agent registration: "
            + (
                "registration token required"
                if self._registration
                else "loopback only (no ROUTER_REGISTRATION_TOKEN)"
            ),
            "operator endpoints: " + ("admin token required" if self._admin else "open"),
        ]

    def is_admin(self, request: web.Request) -> bool:
        return self._admin is None or _matches(_bearer(request), (self._admin,)) is not None

    def agent_or_admin(self, request: web.Request) -> tuple[str | None, bool]:
        """(registration token digest, whether the caller holds the admin token) for a call an
        agent or an operator may make. An open operator surface (no admin token) does not
        stand in for the agent check."""
        if self._admin is not None and _matches(_bearer(request), (self._admin,)) is not None:
            return None, True
        return self.agent(request), False

    def admin(self, request: web.Request) -> None:
        if not self.is_admin(request):
            raise Unauthorized("this operation needs the admin token")


def classify(method: str, path: str) -> str:
    """The access class of a route: ``public``, ``client``, ``agent`` (registration, reports),
    ``admin`` or ``agent_or_admin``."""
    if path in PUBLIC_PATHS or path == "/api/dashboard":
        return "public"
    if not path.startswith(GROUPS_API):
        return "client"
    parts = path[len(GROUPS_API) :].strip("/").split("/")
    if method == "POST" and len(parts) == 2 and parts[1] == "nodes":
        return "agent"
    if method == "PUT" and len(parts) == 4 and parts[3] == "report":
        return "agent"
    if method == "DELETE" and len(parts) == 3:
        return "agent_or_admin"
    return "admin"


AUTH = web.AppKey("auth", Authenticator)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app[AUTH]
    kind = classify(request.method, request.path)
    if kind == "public":
        return await handler(request)
    if kind == "client":
        tenant = auth.client_tenant(request)
        if tenant is not None:
            request[TENANT] = tenant
    elif kind == "admin":
        auth.admin(request)
        request[ADMIN] = True
    # Agents' calls are checked by the groups API itself, which is there with or without this
    # middleware (registration is refused to other machines even when nothing is configured).
    return await handler(request)
