"""``POST /infer`` in both shapes Octopus uses.

- A chat-completions body (Octopus's inference node): relayed to ``/v1/chat/completions`` as is,
  streamed or not (on Triton, translated to its generate extension like that route).
- ``{"prompt": str, "maxTokens"?: int, "model"?: str}``: one non-streamed generation with
  ``max_tokens`` (default 512), answered ``{"text", "tokensUsed", "model"}``. The model defaults
  to the first loaded one the node reports (TGI: left out, meaning its base model). It goes to
  the backend's chat completions, or to Triton's generate extension (Triton's HTTP port has no
  OpenAI API). ``tokensUsed`` is the answer's ``usage.total_tokens`` (prompt and output; the
  output count when that is all there is), null when the backend does not count (Triton).

A backend's error answer is passed through with its status and body, as on the other routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from node_protocol.wire import LoadReport

from .appkeys import BACKEND, PROXY, REPORTER
from .errors import BackendBadAnswer, BadRequest
from .triton_openai import serve_openai

CHAT_PATH = "/v1/chat/completions"
DEFAULT_MAX_TOKENS = 512


@dataclass(frozen=True, slots=True)
class PromptRequest:
    """The ``{prompt, maxTokens}`` shape, validated."""

    prompt: str
    max_tokens: int
    model: str | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> PromptRequest:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("'prompt' must be a non-empty string")
        max_tokens = body.get("maxTokens", DEFAULT_MAX_TOKENS)
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest("'maxTokens' must be a positive integer")
        model = body.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise BadRequest("'model' must be a non-empty string")
        return cls(prompt=prompt, max_tokens=max_tokens, model=model)


def prompt_shape(raw: bytes) -> dict[str, Any] | None:
    """The decoded body when it is the prompt shape; None for a chat body (or not JSON)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, dict) and "prompt" in body and "messages" not in body:
        return body
    return None


def default_model(report: LoadReport) -> str | None:
    """The first loaded model the node reports, else the first it has at all."""
    loaded = [m.id for m in report.models if m.loaded]
    if loaded:
        return loaded[0]
    return report.models[0].id if report.models else None


def chat_body(ask: PromptRequest, model: str | None) -> bytes:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": ask.prompt}],
        "max_tokens": ask.max_tokens,
        "stream": False,
    }
    if model is not None:
        body["model"] = model
    return orjson.dumps(body)


def chat_answer(raw: bytes, model: str | None) -> dict[str, Any]:
    """``{text, tokensUsed, model}`` from a chat completion."""
    try:
        body = orjson.loads(raw)
        message = body["choices"][0]["message"]
        text = message.get("content") or ""
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise BackendBadAnswer("the backend's chat completion has no message") from exc
    usage = body.get("usage")
    tokens = None
    if isinstance(usage, dict):
        tokens = usage.get("total_tokens") or usage.get("completion_tokens")
    return {
        "text": text if isinstance(text, str) else "",
        "tokensUsed": tokens if isinstance(tokens, int) else None,
        "model": body.get("model") if isinstance(body.get("model"), str) else model,
    }


def generate_body(ask: PromptRequest) -> bytes:
    """Triton's generate extension: ``max_tokens`` as a request parameter (vLLM backend)."""
    return orjson.dumps({"text_input": ask.prompt, "parameters": {"max_tokens": ask.max_tokens}})


def generate_answer(raw: bytes, model: str) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
        text = body["text_output"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise BackendBadAnswer("the backend's generate answer has no text_output") from exc
    name = body.get("model_name")
    return {
        "text": text if isinstance(text, str) else "",
        "tokensUsed": None,
        "model": name if isinstance(name, str) else model,
    }


async def infer(request: web.Request) -> web.StreamResponse:
    """``POST /infer``: relay a chat body, or answer the prompt shape."""
    raw = await request.read()
    shaped = prompt_shape(raw)
    proxy = request.app[PROXY]
    if shaped is None:
        return await serve_openai(request, CHAT_PATH)
    ask = PromptRequest.from_json(shaped)
    model = ask.model or default_model(await request.app[REPORTER].current())
    kind = await request.app[BACKEND].resolved_kind()
    if kind == "triton":
        if model is None:
            raise BadRequest("'model' is required: the node reports no model")
        path = f"/v2/models/{quote(model, safe='')}/generate"
        exchange = await proxy.exchange(request, path, generate_body(ask))
        if exchange.status != 200:
            return _passed_on(exchange.status, exchange.content_type, exchange.body)
        return web.json_response(generate_answer(exchange.body, model), dumps=_dumps)
    # TGI takes any other ``model`` for a LoRA adapter id: leave it out for the base model.
    sent_model = None if kind == "tgi" and ask.model is None else model
    exchange = await proxy.exchange(request, CHAT_PATH, chat_body(ask, sent_model))
    if exchange.status != 200:
        return _passed_on(exchange.status, exchange.content_type, exchange.body)
    return web.json_response(chat_answer(exchange.body, model), dumps=_dumps)


def _passed_on(status: int, content_type: str, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": content_type})


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
