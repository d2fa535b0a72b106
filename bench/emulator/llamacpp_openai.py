"""llama-server's generation routes: OpenAI chat and completions, and its native ``/completion``.

The frames are llama-server's, field for field and in its order: compact JSON, ``data: `` events.
A chat stream opens with a role chunk (``content: null``), then one chunk per token, then a
finish chunk with an empty ``delta``; with ``stream_options.include_usage`` the ``usage`` and
``timings`` come in a last chunk with ``choices: []``, otherwise ``timings`` ride on the finish
chunk. A completions stream always puts ``usage`` and ``timings`` on its finish chunk. Both end
with ``data: [DONE]``; the native stream does not. An error once streaming has begun is a
``data: {"error": ...}`` event that ends the stream. Every answer names the loaded model
whatever the request asked for; ids are ``chatcmpl-`` and 32 letters or digits, completions
included. A streamed answer ends its connection (no ``Connection: close`` header says so); a
whole answer keeps it open. A chat whose last message is the assistant's continues it
(llama-server's assistant prefill, or ``continue_final_message``); a completions prompt is
continued (:mod:`.continuation`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .continuation import chat_continues, prompt_continues
from .errors import FaceError
from .job import Job
from .llamacpp_face import ERROR_TYPES, JSON_TYPE, LLAMA, Binding, LlamaBox, read_body, reply
from .llamacpp_metrics import generation_us, prompt_us
from .llamacpp_prompt import (
    Tokens,
    completion_prompts,
    continues_final,
    detokenize,
    invalid,
    prompt_tokens,
    render_chat,
    token_id,
)
from .llamacpp_props import generation_settings
from .streaming import SSE_DONE, StreamFormat, injected_fault, respond, sse

STREAM_HEADERS = {"X-Accel-Buffering": "no"}
ID_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True, slots=True)
class Ask:
    """What a generation request asks for."""

    prompt: Tokens
    text: str | None  # the prompt as text, when it came as text
    max_tokens: int | None
    stream: bool
    usage: bool
    reuse: bool
    continues: int = 0  # the model's words the answer goes on from


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise invalid(
            f"Field '{key}': [json.exception.type_error.302] type must be boolean, but is "
            f"{type(value).__name__.replace('str', 'string')}"
        )
    return value


def _max_tokens(body: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    """The output cap; -1 (no cap) is the emulator's default length; 0 still gives a token."""
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"Field '{key}': must be an integer")
        return None if value < 0 else max(1, value)
    return None


def _ask(body: dict[str, Any], prompt: Tokens, text: str | None, keys: tuple[str, ...]) -> Ask:
    options = body.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    return Ask(
        prompt,
        text,
        _max_tokens(body, keys),
        _flag(body, "stream", False),
        usage,
        _flag(body, "cache_prompt", True),
    )


def parse_chat(body: dict[str, Any]) -> Ask:
    if "messages" not in body:
        raise invalid("'messages' is required")
    messages = body["messages"]
    keys = ("max_completion_tokens", "max_tokens", "n_predict")
    going_on = continues_final(body)
    text = render_chat(messages, going_on)
    ask = _ask(body, prompt_tokens(text), text, keys)
    return dataclasses.replace(ask, continues=chat_continues(messages, going_on))


def parse_completion(body: dict[str, Any], keys: tuple[str, ...]) -> Ask:
    """One prompt (text or token ids); several prompts in one request are not emulated."""
    prompts = completion_prompts(body)
    if len(prompts) != 1:
        raise FaceError(501, "the emulator serves one prompt per request", "not_supported_error")
    raw = body["prompt"]
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
        raw = raw[0]
    ask = _ask(body, prompts[0], raw if isinstance(raw, str) else None, keys)
    return dataclasses.replace(ask, continues=prompt_continues(raw))


def _usage(job: Job) -> dict[str, Any]:
    return {
        "completion_tokens": job.generated,
        "prompt_tokens": job.prompt_tokens,
        "total_tokens": job.prompt_tokens + job.generated,
        "prompt_tokens_details": {"cached_tokens": job.cached_tokens},
    }


def timings(job: Job) -> dict[str, Any]:
    """llama-server's per-request ``timings``."""
    prompt_n = job.prompt_tokens - job.cached_tokens
    prompt_ms = prompt_us(job) / 1e3
    gen_ms = generation_us(job) / 1e3
    steps = max(0, job.generated - 1)
    return {
        "cache_n": job.cached_tokens,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": 1e3 / prompt_ms * prompt_n if prompt_ms > 0 else 0.0,
        "predicted_n": job.generated,
        "predicted_ms": gen_ms,
        "predicted_per_token_ms": gen_ms / steps if steps else 0.0,
        "predicted_per_second": 1e3 / gen_ms * steps if gen_ms > 0 else 0.0,
    }


def _stream_error(exc: FaceError) -> Iterable[bytes]:
    kind = exc.kind or ERROR_TYPES.get(exc.status, "server_error")
    return (sse({"error": {"code": exc.status, "message": exc.message, "type": kind}}),)


def _stream(
    token: Callable[[int, str, bool], bytes],
    tail: Callable[[], Iterable[bytes]],
    head: Callable[[], Iterable[bytes]] = tuple,
) -> StreamFormat:
    return StreamFormat(
        "text/event-stream", token, head, tail, error=_stream_error, headers=STREAM_HEADERS
    )


@dataclass(slots=True)
class OpenAIReply:
    """The frames of one OpenAI-style answer."""

    chat: bool
    model: str
    fingerprint: str
    rid: str
    created: int

    def _chat_chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """A chat stream event: ``id`` comes right after ``created``."""
        return {
            "choices": choices,
            "created": self.created,
            "id": self.rid,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "object": "chat.completion.chunk",
            **extra,
        }

    def _answer(
        self,
        choices: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        times: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A whole answer or a completions event: ``id`` comes after ``object`` and ``usage``."""
        out: dict[str, Any] = {
            "choices": choices,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "object": "text_completion" if not self.chat else "chat.completion",
        }
        if usage is not None:
            out["usage"] = usage
        out["id"] = self.rid
        if times is not None:
            out["timings"] = times
        return out

    def _choice(self, text: str | None, finish: str | None) -> dict[str, Any]:
        """A completions choice, or a chat delta (``text`` None: the empty finish delta)."""
        if not self.chat:
            return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}
        delta = {} if text is None else {"content": text}
        return {"finish_reason": finish, "index": 0, "delta": delta}

    def stream_format(self, job: Job, usage: bool) -> StreamFormat:
        def head() -> Iterable[bytes]:
            if self.chat:
                role = {"role": "assistant", "content": None}
                yield sse(self._chat_chunk([{"finish_reason": None, "index": 0, "delta": role}]))

        def token(_index: int, text: str, _last: bool) -> bytes:
            choices = [self._choice(text, None)]
            return sse(self._chat_chunk(choices) if self.chat else self._answer(choices))

        def tail() -> Iterable[bytes]:
            finish = [self._choice(None, job.finish_reason)]
            if not self.chat:
                yield sse(self._answer(finish, _usage(job), timings(job)))
            elif usage:
                yield sse(self._chat_chunk(finish))
                yield sse(self._chat_chunk([], usage=_usage(job), timings=timings(job)))
            else:
                yield sse(self._chat_chunk(finish, timings=timings(job)))
            yield SSE_DONE

        return _stream(token, tail, head)

    def body(self, job: Job, text: str) -> dict[str, Any]:
        if self.chat:
            message = {"role": "assistant", "content": text}
            choice = {"finish_reason": job.finish_reason, "index": 0, "message": message}
        else:
            choice = self._choice(text, job.finish_reason)
        return self._answer([choice], _usage(job), timings(job))


def _new_id() -> str:
    return "chatcmpl-" + "".join(secrets.choice(ID_ALPHABET) for _ in range(32))


@dataclass(slots=True)
class NativeReply:
    """The frames of the native ``/completion`` answer."""

    model: str
    ask: Ask
    binding: Binding

    def token(self, index: int, text: str, _last: bool) -> bytes:
        return sse(
            {
                "index": 0,
                "content": text,
                "tokens": [token_id(text)],
                "stop": False,
                "id_slot": -1,
                "tokens_predicted": index + 1,
                "tokens_evaluated": len(self.ask.prompt),
            }
        )

    def final(self, job: Job, content: str) -> dict[str, Any]:
        n_predict = -1 if self.ask.max_tokens is None else self.ask.max_tokens
        return {
            "index": 0,
            "content": content,
            "tokens": [],
            "id_slot": self.binding.slot,
            "stop": True,
            "model": self.model,
            "tokens_predicted": job.generated,
            "tokens_evaluated": job.prompt_tokens,
            "generation_settings": generation_settings(n_predict, self.ask.stream, full=True),
            "prompt": detokenize(self.ask.prompt),
            "has_new_line": False,
            "truncated": False,
            "stop_type": "limit" if job.finish_reason == "length" else "eos",
            "stopping_word": "",
            "tokens_cached": job.prompt_tokens + job.generated - 1,
            "timings": timings(job),
        }

    def stream_format(self, job: Job) -> StreamFormat:
        def tail() -> Iterable[bytes]:
            yield sse(self.final(job, ""))

        return _stream(self.token, tail)


async def _run(
    request: web.Request,
    ask: Ask,
    fmt_for: Callable[[Job, Binding], StreamFormat],
    full: Callable[[Job, Binding, str], Any],
) -> web.StreamResponse:
    box: LlamaBox = request.app[LLAMA]
    job = box.engine.admit(box.model.name, len(ask.prompt), ask.max_tokens, continues=ask.continues)
    async with job:
        binding = box.bind(job, ask.prompt, ask.text, ask.reuse, ask.stream)
        fmt = fmt_for(job, binding) if ask.stream else None
        resp = await respond(
            request, job, fmt, lambda text: reply(full(job, binding, text)), JSON_TYPE
        )
    if ask.stream and resp.prepared and request.transport is not None:
        # llama-server ends the connection after a stream, without saying so in a header.
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        request.transport.close()
    return resp


async def _openai(request: web.Request, chat: bool) -> web.StreamResponse:
    box = request.app[LLAMA]
    body = await read_body(request)
    if (faulted := await injected_fault(box.engine)) is not None:
        return faulted
    ask = parse_chat(body) if chat else parse_completion(body, ("max_tokens", "n_predict"))
    version = str(box.engine.config.version)
    answer = OpenAIReply(chat, box.model.name, version, _new_id(), int(time.time()))
    return await _run(
        request,
        ask,
        lambda job, _binding: answer.stream_format(job, ask.usage),
        lambda job, _binding, text: answer.body(job, text),
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, chat=False)


async def native_completion(request: web.Request) -> web.StreamResponse:
    box = request.app[LLAMA]
    body = await read_body(request)
    if (faulted := await injected_fault(box.engine)) is not None:
        return faulted
    ask = parse_completion(body, ("n_predict", "max_tokens"))
    name = box.model.name
    return await _run(
        request,
        ask,
        lambda job, binding: NativeReply(name, ask, binding).stream_format(job),
        lambda job, binding, text: NativeReply(name, ask, binding).final(job, text),
    )


def add_routes(app: web.Application) -> None:
    router = app.router
    for path in ("/v1/chat/completions", "/chat/completions"):
        router.add_post(path, chat_completions)
    router.add_post("/v1/completions", completions)
    for path in ("/completion", "/completions"):
        router.add_post(path, native_completion)
