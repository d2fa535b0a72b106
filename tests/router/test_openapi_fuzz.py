"""The OpenAPI description stays true to the routes, and fuzzed bodies never cause a 5xx."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.app import RunningRouter, make_app
from tests.conftest import router_settings
from tests.fakes import FakeNode, register, running

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    ["model", "messages", "stream", "n", "max_tokens", "max_completion_tokens", "prompt",
     "maxTokens", "stream_options", "temperature", "tools", "input", "system", "tool_choice"]
)  # fmt: skip
BODIES = st.dictionaries(FIELDS, JSON | st.just("m-small"), max_size=6) | JSON
PATHS = st.sampled_from(
    [
        "/inference-cluster/v1/chat/completions",
        "/inference-cluster/v1/completions",
        "/inference-cluster/v1/embeddings",
        "/inference-cluster/infer",
        "/inference-cluster/v1/messages",
        "/inference-cluster/v1/responses",
        "/inference-cluster/api/chat",
        "/inference-cluster/v2/models/m-small/generate",
        "/api/server-groups/inference-cluster/nodes",
    ]
)


class TestOpenApi:
    """/openapi.json lists exactly the routes the router serves."""

    async def test_spec_matches_routes(
        self, router: RunningRouter, session: aiohttp.ClientSession
    ) -> None:
        """Every served (method, path) is documented and every documented one is served."""
        async with session.get(router.url + "/openapi.json") as resp:
            spec = await resp.json()
        documented = {
            (method.upper(), path) for path, ops in spec["paths"].items() for method in ops
        }
        served = set()
        for route in make_app(router_settings()).router.routes():
            if route.method == "HEAD":
                continue
            info = route.resource.get_info() if route.resource else {}
            served.add((route.method, info.get("path") or info.get("formatter")))
        assert documented == served
        assert spec["openapi"].startswith("3.")


class TestFuzz:
    """Random JSON to every body-taking endpoint gets a 2xx or a 4xx envelope, never a 5xx."""

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(path=PATHS, body=BODIES)
    async def test_no_5xx(
        self, router: RunningRouter, session: aiohttp.ClientSession, path: str, body: Any
    ) -> None:
        """Whatever the body, the answer is below 500 and errors are in the surface's
        envelope."""
        async with running(FakeNode("n")) as node:
            await register(session, router.url, node)
            async with session.post(router.url + path, data=json.dumps(body)) as resp:
                status = resp.status
                payload = await resp.read()
        assert status < 500, payload
        if status >= 400 and path.endswith("/v1/messages"):
            error = orjson.loads(payload)
            assert error["type"] == "error"
            assert set(error["error"]) == {"type", "message"}
        elif status >= 400:
            assert set(orjson.loads(payload)["error"]) >= {"message", "type", "param", "code"}
