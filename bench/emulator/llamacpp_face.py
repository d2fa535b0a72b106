"""llama.cpp's ``llama-server``, as the emulator speaks it (one model, ``--parallel`` slots).

Every answer says ``Server: llama.cpp``. While the model loads, every route answers 503
``Loading model``. Errors are ``{"error": {"code", "message", "type"}}`` and close the
connection; unknown routes and wrong methods are 404 ``File Not Found``. Requests beyond the
slots wait (``requests_deferred``); the ``model`` field is not checked. Each slot keeps its last
prompt, a request goes to the slot with the most similar one and only the rest is computed
(:mod:`.llamacpp_cache`). The server answers as if started with ``--metrics --embeddings
--pooling mean``. Generation routes live in :mod:`.llamacpp_openai`.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .appkeys import CONFIG
from .engine import Engine
from .errors import FaceError
from .job import Job
from .llamacpp_cache import Slot, SlotTable
from .llamacpp_metrics import CONTENT_TYPE, LlamaStats
from .llamacpp_prompt import Tokens, invalid, prompt_tokens, text_tokens, token_id, tokens_after
from .llamacpp_props import generation_settings, media_marker, models, props
from .request_body import json_object
from .streaming import injected_fault, json_response
from .tokens import embedding

JSON_TYPE = "application/json; charset=utf-8"
LOADING = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
NOT_FOUND = {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    501: "not_supported_error",
    503: "unavailable_error",
}
EMBEDDING_DIM = 4096


class LlamaError(FaceError):
    """An error in llama-server's envelope; ``extra`` fields follow ``type``."""

    def __init__(self, status: int, message: str, kind: str | None = None, **extra: Any) -> None:
        super().__init__(status, message, kind)
        self.extra = extra


def reply(obj: Any, status: int = 200) -> web.Response:
    resp = json_response(obj, status, JSON_TYPE)
    if status >= 400:
        resp.force_close()  # llama-server closes the connection after an error
    return resp


def _render(exc: FaceError) -> web.Response:
    kind = exc.kind or ERROR_TYPES.get(exc.status, "server_error")
    extra = exc.extra if isinstance(exc, LlamaError) else {}
    body = {"code": exc.status, "message": exc.message, "type": kind, **extra}
    return reply({"error": body}, exc.status)


@dataclass(slots=True)
class Binding:
    """The slot a request got (-1 until it has one)."""

    slot: int = -1


class LlamaBox:
    """What llama-server keeps beside the engine: slots and prompt cache, counters, whether
    the model is loaded yet, task ids."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.model = next(iter(engine.models.values()))
        self.n_slots = self.model.gate.capacity
        self.n_ctx_slot = max(1, engine.config.context_length // self.n_slots)
        self.slots = SlotTable(self.n_slots, self.n_ctx_slot)
        self.stats = LlamaStats()
        self.ready = False
        self.marker = media_marker()
        self._task_ids = itertools.count()
        self._bound: dict[Job, Slot] = {}
        engine.listeners.append(self._closed)

    @property
    def deferred(self) -> int:
        return self.model.waiting

    def loaded(self) -> None:
        self.ready = True

    def bind(
        self, job: Job, prompt: Tokens, text: str | None, reuse: bool, stream: bool
    ) -> Binding:
        """Have ``job`` take a slot when the engine gives it one, and count its prompt."""
        binding = Binding()

        def take(job: Job) -> None:
            if len(prompt) >= self.n_ctx_slot:
                raise LlamaError(
                    400,
                    f"request ({len(prompt)} tokens) exceeds the available context size "
                    f"({self.n_ctx_slot} tokens), try increasing it",
                    "exceed_context_size_error",
                    n_prompt_tokens=len(prompt),
                    n_ctx=self.n_ctx_slot,
                )
            slot = self.slots.assign(job, prompt, reuse)
            slot.text, slot.stream, slot.task_id = text, stream, next(self._task_ids)
            slot.n_predict = job.output_tokens
            self._bound[job] = slot
            binding.slot = slot.id
            self.stats.slot_taken(job)

        job.on_slot = take
        job.on_first_token = lambda job: self.stats.prompt_read(job, self.slots.busy)
        return binding

    def _closed(self, job: Job) -> None:
        slot = self._bound.pop(job, None)
        if slot is not None:
            if job.first_token_at is None and job.done:  # a prompt-only job (embeddings)
                self.stats.prompt_read(job, self.slots.busy)
            self.stats.finished(job)
            held = tokens_after(slot.tokens, slot.text, job.generated, job.first)
            self.slots.release(slot, held)

    def slot_json(self, slot: Slot) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": slot.id,
            "n_ctx": slot.n_ctx,
            "speculative": False,
            "is_processing": slot.busy,
        }
        if slot.task_id is None:
            return out
        job = slot.job
        decoded = 0 if job is None else job.generated
        remain = -1 if job is None else job.output_tokens - decoded
        return out | {
            "id_task": slot.task_id,
            "n_prompt_tokens": len(slot.tokens) + decoded,
            "n_prompt_tokens_processed": slot.prompt_n,
            "n_prompt_tokens_cache": slot.cache_n,
            "params": generation_settings(slot.n_predict, slot.stream),
            "next_token": [
                {
                    "has_next_token": job is not None,
                    "has_new_line": False,
                    "n_remain": remain,
                    "n_decoded": decoded,
                }
            ],
        }


LLAMA = web.AppKey("emulator.llamacpp", LlamaBox)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Loading answers, llama-server's error envelope and its 404 for anything unknown."""
    if not request.app[LLAMA].ready and not request.path.startswith("/_emulator/"):
        return reply(LOADING, 503)
    try:
        return await handler(request)
    except FaceError as exc:
        return _render(exc)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        return reply(NOT_FOUND, 404)


async def _server_headers(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "llama.cpp"
    response.headers.setdefault("Access-Control-Allow-Origin", "")


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON body; what nlohmann::json cannot parse is llama-server's 500."""

    def syntax(_raw: bytes, exc: Exception) -> FaceError:
        return FaceError(500, f"[json.exception.parse_error.101] parse error: {exc}")

    def not_object(_raw: bytes) -> FaceError:
        return invalid("[json.exception.type_error.306] cannot use value() with array")

    return await json_object(request, syntax, not_object)


async def health(_request: web.Request) -> web.Response:
    return reply({"status": "ok"})


async def get_props(request: web.Request) -> web.Response:
    box, config = request.app[LLAMA], request.app[CONFIG]
    return reply(
        props(box.model.spec, box.n_slots, box.n_ctx_slot, str(config.version), box.marker)
    )


async def get_slots(request: web.Request) -> web.Response:
    box = request.app[LLAMA]
    return reply([box.slot_json(slot) for slot in box.slots.slots])


async def get_models(request: web.Request) -> web.Response:
    box, config = request.app[LLAMA], request.app[CONFIG]
    return reply(models(box.model.spec, box.n_ctx_slot, config.context_length))


async def get_metrics(request: web.Request) -> web.Response:
    box = request.app[LLAMA]
    body = box.stats.render(box.slots.busy, box.deferred)
    headers = {
        "Content-Type": CONTENT_TYPE,
        "Process-Start-Time-Unix": str(int(box.engine.started_unix)),
    }
    return web.Response(body=body, headers=headers)


async def tokenize(request: web.Request) -> web.Response:
    body = await read_body(request)
    content = body.get("content", "")
    if not isinstance(content, str):
        raise invalid('"content" must be a string')
    tokens = list(prompt_tokens(content)) if body.get("add_special") else text_tokens(content)
    if body.get("with_pieces"):
        return reply({"tokens": [{"id": token_id(t), "piece": t} for t in tokens]})
    return reply({"tokens": [token_id(t) for t in tokens]})


def _embedding_inputs(body: dict[str, Any]) -> list[str]:
    value = body.get("input", body.get("content"))
    if value is None:
        raise invalid('"input" or "content" must be provided')
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise invalid('"input" must be a string or an array of strings')


async def _embed_one(box: LlamaBox, text: str) -> int:
    """Run one input through a slot (prefill only); returns its prompt tokens."""
    prompt = prompt_tokens(text)
    job = box.engine.admit(box.model.name, len(prompt), 0)
    async with job:
        box.bind(job, prompt, text, reuse=False, stream=False)
        await job.run_to_end()
    return len(prompt)


async def embeddings(request: web.Request) -> web.Response:
    box = request.app[LLAMA]
    body = await read_body(request)
    if (faulted := await injected_fault(box.engine)) is not None:
        return faulted
    texts = _embedding_inputs(body)
    used = await asyncio.gather(*(_embed_one(box, t) for t in texts))
    model = body.get("model")
    data = [
        {"embedding": embedding(text, EMBEDDING_DIM), "index": i, "object": "embedding"}
        for i, text in enumerate(texts)
    ]
    return reply(
        {
            "model": model if isinstance(model, str) else box.model.name,
            "object": "list",
            "usage": {"prompt_tokens": sum(used), "total_tokens": sum(used)},
            "data": data,
        }
    )


def attach(app: web.Application, engine: Engine) -> None:
    """The server's state beside the engine; the model is ready after its load time."""
    box = LlamaBox(engine)
    app[LLAMA] = box
    delay = box.model.spec.cls.load_s * engine.config.load_time_scale
    asyncio.get_running_loop().call_later(delay, box.loaded)


def add_routes(app: web.Application) -> None:
    app.on_response_prepare.append(_server_headers)
    router = app.router
    for path in ("/health", "/v1/health"):
        router.add_get(path, health, allow_head=False)
    router.add_get("/props", get_props, allow_head=False)
    router.add_get("/slots", get_slots, allow_head=False)
    router.add_get("/metrics", get_metrics, allow_head=False)
    for path in ("/models", "/v1/models"):
        router.add_get(path, get_models, allow_head=False)
    router.add_post("/tokenize", tokenize)
    router.add_post("/v1/embeddings", embeddings)
