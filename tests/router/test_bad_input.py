"""Bad input gets a clear OpenAI-style error with the right status, never a 500 or a hang."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from router.app import RunningRouter
from tests.fakes import FakeNode, register, running

CHAT = "/inference-cluster/v1/chat/completions"


async def _post(
    session: aiohttp.ClientSession, url: str, data: bytes | str
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json(), resp.headers


def _is_envelope(body: dict[str, Any]) -> bool:
    err = body.get("error")
    return isinstance(err, dict) and {"message", "type", "param", "code"} <= err.keys()


class TestRequestErrors:
    """Each malformed request is answered with its 4xx and the OpenAI error envelope."""

    @pytest.mark.parametrize(
        ("body", "status", "param"),
        [
            ("{not json", 400, None),
            ("", 400, None),
            ("[1, 2]", 400, None),
            ('{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
            ('{"model": 7, "messages": [{"role": "user", "content": "x"}]}', 400, "model"),
            ('{"model": "m-small"}', 400, "messages"),
            ('{"model": "m-small", "messages": []}', 400, "messages"),
            ('{"model": "m-small", "messages": [{}], "stream": "yes"}', 400, "stream"),
        ],
    )
    async def test_malformed_bodies_are_400(
        self,
        router: RunningRouter,
        session: aiohttp.ClientSession,
        body: str,
        status: int,
        param: str | None,
    ) -> None:
        """Broken JSON, a missing or mistyped model, or bad messages answer 400."""
        code, payload, _ = await _post(session, router.url + CHAT, body)
        assert code == status
        assert _is_envelope(payload)
        assert payload["error"]["param"] == param

    async def test_unknown_model_is_404(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A model no node of the group serves answers 404 model_not_found."""
        body = '{"model": "nope", "messages": [{"role": "user", "content": "x"}]}'
        code, payload, _ = await _post(session, router.url + CHAT, body)
        assert code == 404
        assert payload["error"]["code"] == "model_not_found"

    async def test_unknown_group_is_404(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A group the router does not know answers 404 group_not_found."""
        body = '{"model": "m", "messages": [{"role": "user", "content": "x"}]}'
        code, payload, _ = await _post(session, router.url + "/no-such/v1/chat/completions", body)
        assert code == 404
        assert payload["error"]["code"] == "group_not_found"

    async def test_body_over_limit_is_413(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A body past max_body_bytes answers 413 without reaching any node."""
        big = '{"model": "m", "messages": [{"role": "user", "content": "' + "x" * 70_000 + '"}]}'
        code, payload, _ = await _post(session, router.url + CHAT, big)
        assert code == 413
        assert _is_envelope(payload)

    async def test_unknown_path_and_wrong_method(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """Unknown paths answer 404 and wrong methods 405, both in the envelope."""
        async with session.get(router.url + "/inference-cluster/v1/nothing/here") as resp:
            assert resp.status == 404
            assert _is_envelope(await resp.json())
        async with session.get(router.url + CHAT) as resp:
            assert resp.status == 405
            assert _is_envelope(await resp.json())

    async def test_no_healthy_node_is_503_with_retry_after(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A known model whose only node is down answers 503 with Retry-After."""
        async with running(FakeNode("n1")) as node:
            await register(session, router.url, node, health="unhealthy")
        body = '{"model": "m-small", "messages": [{"role": "user", "content": "x"}]}'
        code, payload, headers = await _post(session, router.url + CHAT, body)
        assert code == 503
        assert _is_envelope(payload)
        assert int(headers["Retry-After"]) > 0

    async def test_all_nodes_failing_is_502_not_500(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """When every node answers 500 the client gets 502 upstream_error naming the cause."""
        async with running(FakeNode("n1", mode="error_500")) as node:
            await register(session, router.url, node)
            body = '{"model": "m-small", "messages": [{"role": "user", "content": "x"}]}'
            code, payload, _ = await _post(session, router.url + CHAT, body)
        assert code == 502
        assert payload["error"]["type"] == "upstream_error"
        assert "n1" in payload["error"]["message"]

    async def test_backend_4xx_without_envelope_is_wrapped(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A node's plain-text 400 reaches the client as a 400 in the OpenAI envelope."""
        async with running(FakeNode("n1", mode="bad_request")) as node:
            await register(session, router.url, node)
            body = '{"model": "m-small", "messages": [{"role": "user", "content": "x"}]}'
            code, payload, _ = await _post(session, router.url + CHAT, body)
        assert code == 400
        assert payload["error"]["message"] == "plain text problem"


class TestRegistrationErrors:
    """The server-group API rejects bad registrations and reports clearly."""

    async def test_bad_registration_is_400(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A registration without a baseUrl answers 400 naming the field."""
        url = router.url + "/api/server-groups/inference-cluster/nodes"
        async with session.post(url, json={"name": "x"}) as resp:
            assert resp.status == 400
            assert "baseUrl" in (await resp.json())["error"]["message"]

    async def test_report_for_unknown_node_is_404(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """A report for a node the router forgot answers 404, which tells the agent to
        re-register."""
        url = router.url + "/api/server-groups/inference-cluster/nodes/node-unknown/report"
        async with session.put(url, json={}) as resp:
            assert resp.status == 404
