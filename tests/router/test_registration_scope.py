"""Who may register without a token: only this machine, judged by the connection's own peer
address; other machines get 403 saying how to set the token, and the router says at start
which mode it is in."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from typing import Any

import aiohttp
import pytest

from router.app import serve
from router.auth import digest, is_local_peer
from tests.conftest import router_settings
from tests.fakes import report

TOKEN = "reg-token-abcdef"
NODES = "/api/server-groups/inference-cluster/nodes"


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, that a socket can bind to."""
    candidates: set[str] = set()
    with contextlib.suppress(OSError):
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        candidates.update(str(info[4][0]) for info in infos)
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # a UDP "connect" only picks the outgoing address
        candidates.add(str(probe.getsockname()[0]))
    for candidate in sorted(candidates):
        address = ipaddress.ip_address(candidate)
        if address.is_loopback or address.is_unspecified:
            continue
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET) as s:
            s.bind((candidate, 0))
            return candidate
    return None


OUTSIDE = _outside_address()
needs_outside = pytest.mark.skipif(
    OUTSIDE is None, reason="this machine has no non-loopback address to connect from"
)


def _registration(name: str) -> dict[str, Any]:
    return {"name": name, "baseUrl": "http://10.9.9.9:8090", "report": report(("m",))}


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),  # all of 127.0.0.0/8
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # IPv4 loopback on a dual-stack socket
        ("", True),  # a Unix socket
        ("10.0.0.7", False),
        ("192.0.2.2", False),
        ("::ffff:10.0.0.7", False),
        ("fe80::1%eth0", False),
        ("0.0.0.0", False),
        ("localhost", False),  # never a name: only an address the socket reports
        (None, False),  # unknown peer
    ],
)
def test_only_loopback_and_unix_peers_count_as_local(peer: str | None, local: bool) -> None:
    """The decision on a peer address: loopback in any spelling and Unix sockets are local."""
    assert is_local_peer(peer) is local


@needs_outside
async def test_registration_from_another_address_without_token_is_403_saying_how(
    session: aiohttp.ClientSession,
) -> None:
    """With no token configured, registering, reporting or deregistering over a connection from
    a non-loopback address is refused with 403 whose message names both settings; the same
    router accepts the registration from 127.0.0.1."""
    async with serve(router_settings(host="0.0.0.0")) as router:
        port = router.url.rsplit(":", 1)[1]
        outside, local = f"http://{OUTSIDE}:{port}", f"http://127.0.0.1:{port}"
        async with session.post(outside + NODES, json=_registration("far")) as resp:
            assert resp.status == 403
            error = (await resp.json())["error"]
        assert error["type"] == "permission_error"
        assert error["code"] == "registration_token_required"
        assert "ROUTER_REGISTRATION_TOKEN" in error["message"]
        assert "--router-token" in error["message"]
        async with session.post(local + NODES, json=_registration("near")) as resp:
            assert resp.status == 201
            node_id = (await resp.json())["nodeId"]
        async with session.put(f"{outside}{NODES}/{node_id}/report", json=report(("m",))) as resp:
            assert resp.status == 403
        async with session.delete(f"{outside}{NODES}/{node_id}") as resp:
            assert resp.status == 403
        async with session.get(f"{local}{NODES}/{node_id}") as resp:
            assert resp.status == 200  # still registered
        async with session.get(f"{local}/api/server-groups") as resp:
            groups = {g["name"]: g["nodes"] for g in (await resp.json())["groups"]}
        assert groups == {"inference-cluster": 1}


@needs_outside
async def test_with_a_token_another_address_registers_and_a_wrong_token_hears_how(
    session: aiohttp.ClientSession,
) -> None:
    """With a token configured, a non-loopback agent holding it registers (201); one without
    it gets 401 naming both settings."""
    settings = router_settings(host="0.0.0.0", registration_token_sha256=(digest(TOKEN),))
    async with serve(settings) as router:
        outside = f"http://{OUTSIDE}:{router.url.rsplit(':', 1)[1]}"
        async with session.post(outside + NODES, json=_registration("far")) as resp:
            assert resp.status == 401
            message = (await resp.json())["error"]["message"]
        assert "ROUTER_REGISTRATION_TOKEN" in message
        assert "--router-token" in message
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with session.post(
            outside + NODES, json=_registration("far"), headers=headers
        ) as resp:
            assert resp.status == 201


async def test_start_log_says_which_registration_mode(caplog: pytest.LogCaptureFixture) -> None:
    """At start the router logs that registration is loopback-only without a token, and that a
    token is required with one."""
    caplog.set_level(logging.INFO, logger="router")
    async with serve(router_settings()):
        pass
    async with serve(router_settings(registration_token_sha256=(digest(TOKEN),))):
        pass
    lines = [r.getMessage() for r in caplog.records if r.name == "router"]
    assert "agent registration: loopback only (no ROUTER_REGISTRATION_TOKEN)" in lines
    assert "agent registration: registration token required" in lines
