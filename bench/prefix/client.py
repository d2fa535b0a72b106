"""The closed-loop client: every conversation at once, each turn streamed through the router.

A turn's time to first token is measured here, at the client; its prompt and cached-prompt
token counts are the engine's own, from the usage the stream ends with
(``prompt_tokens_details.cached_tokens``); the node that served it from ``X-Inference-Node``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from bench.records import ClientRecord
from bench.stream_client import stream_into

from .workload import Conversation, Settings

REQUEST_TIMEOUT_S = 120.0
MODEL_NAME = "tiny"


@dataclass(slots=True)
class Turn:
    """One request of one conversation, as measured."""

    conversation: int
    kind: int
    turn: int  # from 1
    record: ClientRecord
    cached_tokens: int | None = None
    answer: str = ""

    def summary(self) -> dict[str, Any]:
        rec = self.record
        return {
            "conversation": self.conversation,
            "kind": self.kind,
            "turn": self.turn,
            "node": rec.node,
            "ttft_ms": None if rec.ttft_s is None else round(rec.ttft_s * 1000, 2),
            "prompt_tokens": rec.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "error": rec.error,
            "detail": rec.detail,
        }


def _read_event(turn: Turn, data: str) -> None:
    """What the tally does not keep: the answer's text and the cached prompt tokens."""
    if data == "[DONE]":
        return
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if not isinstance(obj, dict):
        return
    for choice in obj.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            turn.answer += delta["content"]
    usage = obj.get("usage")
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        turn.cached_tokens = details["cached_tokens"]


async def stream_turn(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]], turn: Turn
) -> None:
    """Send one streamed chat request and read its answer into ``turn``."""
    rec = turn.record
    body = {
        "model": MODEL_NAME,
        "messages": messages,
        "max_tokens": rec.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    await stream_into(session, url, body, rec, lambda data: _read_event(turn, data))


async def converse(
    session: aiohttp.ClientSession, url: str, conv: Conversation, s: Settings
) -> list[Turn]:
    """Every turn of one conversation: pause, ask, append the answer to the history."""
    messages = [{"role": "system", "content": conv.system}]
    turns: list[Turn] = []
    for number, (user, pause) in enumerate(zip(conv.users, conv.pauses_s, strict=True), 1):
        await asyncio.sleep(pause)
        messages.append({"role": "user", "content": user})
        rec = ClientRecord(MODEL_NAME, url, s.max_tokens, time.time(), time.perf_counter())
        turn = Turn(conv.index, conv.kind, number, rec)
        await stream_turn(session, url, messages, turn)
        messages.append({"role": "assistant", "content": turn.answer})
        turns.append(turn)
    return turns


async def drive(base_url: str, convs: list[Conversation], s: Settings) -> list[Turn]:
    """Every conversation at once against ``base_url`` (an OpenAI ``…/v1``)."""
    url = f"{base_url}/chat/completions"
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        done = await asyncio.gather(*(converse(session, url, c, s) for c in convs))
    return [turn for turns in done for turn in turns]
