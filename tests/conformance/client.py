"""A client's view of the fleet: requests through the router, streams read event by event."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.sse import SseDecoder

CORRELATION = "X-Octopus-Correlation-Id"
NODE = "X-Inference-Node"


def chat(model: str, max_tokens: int, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say something about the sea."}],
    }
    return body | extra


def completion(model: str, max_tokens: int, *, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "stream": stream, "prompt": "The sea is"}


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Stream:
    """What one streamed answer carried."""

    status: int
    node: str | None
    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    def _choices(self) -> list[dict[str, Any]]:
        return [c for e in self.events for c in e.get("choices") or () if isinstance(c, dict)]

    @property
    def pieces(self) -> list[str]:
        """The non-empty text of every content event."""
        texts = []
        for choice in self._choices():
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if text:
                texts.append(str(text))
        return texts

    @property
    def finish_reasons(self) -> list[str]:
        return [str(c["finish_reason"]) for c in self._choices() if c.get("finish_reason")]

    @property
    def usage(self) -> dict[str, Any] | None:
        found = [e["usage"] for e in self.events if isinstance(e.get("usage"), dict)]
        return found[-1] if found else None

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.events if isinstance(e.get("error"), dict)]

    @property
    def served(self) -> bool:
        """A whole answer: content, a finish reason, ``[DONE]`` and no error."""
        return bool(self.pieces) and bool(self.finish_reasons) and self.done and not self.errors


class StreamReader:
    """Reads one streamed answer in steps: up to the first content, then to the end."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self._decoder = SseDecoder()
        self.stream = Stream(resp.status, resp.headers.get(NODE))

    async def _read(self, *, until_content: bool) -> Stream:
        out = self.stream
        async for line in self._resp.content:
            data = self._decoder.feed_line(line)
            if data is None:
                continue
            if data.strip() == "[DONE]":
                out.done = True
                continue
            out.events.append(orjson.loads(data))
            if until_content and out.pieces:
                break
        return out

    async def first_content(self) -> Stream:
        return await self._read(until_content=True)

    async def to_end(self) -> Stream:
        return await self._read(until_content=False)


async def stream(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], correlation_id: str | None = None
) -> Stream:
    """POST a streamed request and read the whole answer (an error answer's body as its one
    event)."""
    headers = {CORRELATION: correlation_id or new_id()}
    async with http.post(url, json=body, headers=headers) as resp:
        if resp.status != 200:
            return Stream(resp.status, resp.headers.get(NODE), [await resp.json()])
        return await StreamReader(resp).to_end()
