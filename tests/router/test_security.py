"""Authentication and registration safety: keys bound to tenants, agent and admin tokens,
the baseUrl allowlist, and no secret in the logs."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest

from router.app import RunningRouter, serve
from router.auth import ApiKey, digest
from tests.conftest import router_settings
from tests.fakes import FakeNode, report, running

ACME_KEY = "sk-acme-0123456789"
AGENT_TOKEN = "reg-token-abcdef"
OTHER_AGENT_TOKEN = "reg-token-zzzzzz"
ADMIN_TOKEN = "admin-token-987654"
NODES = "/api/server-groups/inference-cluster/nodes"
CHAT = "/inference-cluster/v1/chat/completions"
BODY = {"model": "m-small", "messages": [{"role": "user", "content": "x"}]}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _registration(node: FakeNode) -> dict[str, Any]:
    return {"name": node.name, "baseUrl": node.url, "report": report(node.models)}


@pytest.fixture
async def secured() -> Any:
    settings = router_settings(
        api_keys=(ApiKey("acme", digest(ACME_KEY)),),
        registration_token_sha256=(digest(AGENT_TOKEN), digest(OTHER_AGENT_TOKEN)),
        admin_token_sha256=digest(ADMIN_TOKEN),
        registration_allowlist=("127.0.0.0/8",),
    )
    async with serve(settings) as router:
        yield router


class TestClientKeys:
    """Client keys decide the tenant; a key cannot pose as another tenant."""

    async def test_missing_and_wrong_key_are_401(
        self, secured: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """No key or an unknown key answers 401 in the envelope."""
        async with session.post(secured.url + CHAT, json=BODY) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["type"] == "authentication_error"
        async with session.post(secured.url + CHAT, json=BODY, headers=_bearer("nope")) as resp:
            assert resp.status == 401

    async def test_wrong_tenant_is_403_and_tenant_comes_from_key(
        self, secured: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A key for acme claiming another tenant gets 403; without a claim the node sees acme."""
        async with running(FakeNode("n")) as node:
            headers = _bearer(AGENT_TOKEN)
            async with session.post(
                secured.url + NODES, json=_registration(node), headers=headers
            ) as r:
                assert r.status == 201
            claim = {**_bearer(ACME_KEY), "X-Octopus-Tenant-Id": "globex"}
            async with session.post(secured.url + CHAT, json=BODY, headers=claim) as resp:
                assert resp.status == 403
                assert (await resp.json())["error"]["type"] == "permission_error"
            async with session.post(
                secured.url + CHAT, json=BODY, headers=_bearer(ACME_KEY)
            ) as resp:
                assert resp.status == 200
        assert node.seen[-1]["headers"]["X-Octopus-Tenant-Id"] == "acme"


class TestAgentsAndAdmins:
    """Only agents with a token register; nobody takes over another's node; operators need
    the admin token."""

    async def test_unauthenticated_registration_is_401(
        self, secured: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """Registering without the registration token answers 401."""
        async with (
            running(FakeNode("n")) as node,
            session.post(secured.url + NODES, json=_registration(node)) as resp,
        ):
            assert resp.status == 401

    async def test_base_url_outside_allowlist_is_403(
        self, secured: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A node pointing outside the allowed CIDRs is refused with 403."""
        body = {"name": "rogue", "baseUrl": "http://203.0.113.9:8090"}
        async with session.post(secured.url + NODES, json=body, headers=_bearer(AGENT_TOKEN)) as r:
            assert r.status == 403

    async def test_other_token_cannot_take_over_a_node(
        self, secured: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """Re-registering or reporting for a node with a different token answers 403."""
        async with running(FakeNode("n")) as node:
            async with session.post(
                secured.url + NODES, json=_registration(node), headers=_bearer(AGENT_TOKEN)
            ) as r:
                node_id = (await r.json())["nodeId"]
            async with session.post(
                secured.url + NODES, json=_registration(node), headers=_bearer(OTHER_AGENT_TOKEN)
            ) as r:
                assert r.status == 403
            async with session.put(
                f"{secured.url}{NODES}/{node_id}/report",
                json=report(node.models),
                headers=_bearer(OTHER_AGENT_TOKEN),
            ) as r:
                assert r.status == 403

    async def test_admin_endpoints_need_the_admin_token(
        self, secured: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """Views and drain answer 401 without the admin token and work with it."""
        async with running(FakeNode("n")) as node:
            async with session.post(
                secured.url + NODES, json=_registration(node), headers=_bearer(AGENT_TOKEN)
            ) as r:
                node_id = (await r.json())["nodeId"]
            async with session.get(secured.url + NODES) as r:
                assert r.status == 401
            async with session.post(f"{secured.url}{NODES}/{node_id}/drain") as r:
                assert r.status == 401
            async with session.post(
                f"{secured.url}{NODES}/{node_id}/drain", headers=_bearer(ADMIN_TOKEN)
            ) as r:
                assert r.status == 200
            async with session.get(secured.url + NODES, headers=_bearer(ADMIN_TOKEN)) as r:
                assert r.status == 200


class TestSecretsStayOut:
    """No secret appears in the router's logs, whatever the outcome."""

    async def test_no_secret_in_logs(
        self,
        secured: RunningRouter,
        session: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Keys and tokens, right or wrong, never reach a log line."""
        caplog.set_level(logging.DEBUG)
        async with running(FakeNode("n")) as node:
            await session.post(
                secured.url + NODES, json=_registration(node), headers=_bearer(AGENT_TOKEN)
            )
            for token in (ACME_KEY, AGENT_TOKEN, ADMIN_TOKEN, "sk-wrong-secret"):
                async with session.post(secured.url + CHAT, json=BODY, headers=_bearer(token)):
                    pass
        text = caplog.text
        for secret in (ACME_KEY, AGENT_TOKEN, ADMIN_TOKEN, "sk-wrong-secret"):
            assert secret not in text
        assert "node n registered" in text


def test_settings_reject_plain_secrets() -> None:
    """A secret that is not a SHA-256 digest in settings fails at start."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="SHA-256"):
        router_settings(admin_token_sha256="plain-admin-token")
