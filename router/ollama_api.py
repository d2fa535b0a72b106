"""The Ollama native API on a group, so an Ollama client can use the group URL as its host.

``POST /{group}/api/chat|generate|embed`` route like any request, but only to nodes whose
backend is Ollama (the agent passes the native paths through); ``GET /{group}/api/tags`` and
``/api/ps`` are the unions of what those nodes answer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from router.dispatch import DISPATCHER, Target
from router.openai_api import check_model, load_object
from router.registry import ROUTABLE, Group, Node, Registry

OLLAMA = frozenset({"ollama"})
FANOUT_TIMEOUT = aiohttp.ClientTimeout(total=5)


def _ollama_target(path: str) -> Any:
    def build(body: bytes) -> Target:
        parsed = load_object(body)
        # Ollama streams unless told not to; /api/embed never streams.
        stream = path != "/api/embed" and parsed.get("stream") is not False
        return Target(path, check_model(parsed), body, kinds=OLLAMA, stream=stream, parsed=parsed)

    return build


class OllamaApi:
    def __init__(self, registry: Registry, session_key: web.AppKey[aiohttp.ClientSession]) -> None:
        self._registry = registry
        self._session_key = session_key

    def routes(self) -> list[web.RouteDef]:
        table: list[web.RouteDef] = []
        for prefix in ("/{group}", ""):
            for op in ("chat", "generate", "embed"):
                table.append(web.post(f"{prefix}/api/{op}", self._handler(f"/api/{op}")))
            table.append(web.get(f"{prefix}/api/tags", self.tags))
            table.append(web.get(f"{prefix}/api/ps", self.ps))
            table.append(web.get(f"{prefix}/api/version", self.version))
        return table

    def _handler(self, path: str) -> Any:
        build = _ollama_target(path)

        async def handle(request: web.Request) -> web.StreamResponse:
            return await request.app[DISPATCHER].dispatch(request, path, build)

        return handle

    def _nodes(self, group: Group) -> list[Node]:
        threshold = self._registry.threshold
        return [
            n
            for n in group.nodes.values()
            if n.state(threshold) in ROUTABLE
            and n.report is not None
            and n.report.backend_kind == "ollama"
        ]

    async def _fan_out(self, request: web.Request, path: str) -> list[dict[str, Any]]:
        group = request.app[DISPATCHER].group_of(request)
        session = request.app[self._session_key]

        async def one(node: Node) -> dict[str, Any] | None:
            try:
                async with session.get(node.base_url + path, timeout=FANOUT_TIMEOUT) as resp:
                    if resp.status != 200:
                        return None
                    answer = orjson.loads(await resp.read())
                    return answer if isinstance(answer, dict) else None
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
                return None

        answers = await asyncio.gather(*(one(n) for n in self._nodes(group)))
        return [a for a in answers if a is not None]

    async def _union(self, request: web.Request, path: str) -> web.Response:
        seen: dict[str, dict[str, Any]] = {}
        for answer in await self._fan_out(request, path):
            for model in answer.get("models") or []:
                if isinstance(model, dict) and isinstance(model.get("name"), str):
                    seen.setdefault(model["name"], model)
        body = {"models": [seen[k] for k in sorted(seen)]}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def tags(self, request: web.Request) -> web.Response:
        """Every model any Ollama node of the group has downloaded."""
        return await self._union(request, "/api/tags")

    async def ps(self, request: web.Request) -> web.Response:
        """Every model loaded on some Ollama node of the group."""
        return await self._union(request, "/api/ps")

    async def version(self, request: web.Request) -> web.Response:
        """The lowest version among the group's Ollama nodes (what every node supports)."""
        versions = [a["version"] for a in await self._fan_out(request, "/api/version")
                    if isinstance(a.get("version"), str)]  # fmt: skip
        version = min(versions, key=_version_key) if versions else "0.0.0"
        return web.Response(
            body=orjson.dumps({"version": version}), content_type="application/json"
        )


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("-")[0].split("."):
        parts.append(int(piece) if piece.isdigit() else 0)
    return tuple(parts)
