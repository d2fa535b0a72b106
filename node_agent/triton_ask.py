"""An OpenAI chat or completions request as Triton's generate extension takes it, and the tally
of its answer (tokens, finish reason): the translation's request side and its counting. The
rules are in :mod:`node_agent.triton_openai`'s docstring."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from .errors import BackendBadAnswer, BadRequest, json_object

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


def estimate_tokens(text: str) -> int:
    """Tokens in a text when nobody counted them: one per four characters, rounded up."""
    return math.ceil(len(text) / 4)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _content_text(content: Any, index: int) -> str:
    if content is None:  # an assistant turn with tool calls only
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise BadRequest(f"messages[{index}]: Triton's generate takes text parts only")
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest(f"messages[{index}]: a text part needs a string 'text'")
            texts.append(text)
        return "".join(texts)
    raise BadRequest(f"messages[{index}].content must be a string or a list of text parts")


def chat_prompt(messages: Any) -> str:
    """The role-tagged join: ``{role}: {content}`` per message, then ``assistant:``."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    lines = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string 'role'")
        lines.append(f"{message['role']}: {_content_text(message.get('content'), i)}")
    lines.append("assistant:")
    return "\n".join(lines)


def completion_prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string (or a list of one string) on Triton")
    return prompt


def _one_stop(stop: Any) -> str | None:
    if isinstance(stop, list) and len(stop) <= 1:
        stop = stop[0] if stop else None
    if stop is None or isinstance(stop, str):
        return stop or None
    raise BadRequest("'stop': Triton's generate parameters are scalars, so one stop string")


@dataclass(frozen=True, slots=True)
class Ask:
    """One OpenAI request, translated: what goes to Triton and how the answer is shaped."""

    chat: bool
    model: str
    prompt: str
    parameters: dict[str, Any]
    max_tokens: int | None
    stream: bool
    include_usage: bool

    @classmethod
    def from_body(cls, raw: bytes, *, chat: bool) -> Ask:
        body = json_object(raw)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' must be a non-empty string")
        if body.get("n") not in (None, 1):
            raise BadRequest("'n' must be 1: Triton's generate answers one choice")
        if chat:
            prompt = chat_prompt(body.get("messages"))
        else:
            prompt = completion_prompt(body.get("prompt"))
        stream = body.get("stream") is True
        max_tokens = body.get("max_completion_tokens") if chat else None
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
            raise BadRequest("'max_tokens' must be a positive integer")
        parameters: dict[str, Any] = {"stream": stream, "exclude_input_in_output": True}
        if max_tokens is not None:
            parameters["max_tokens"] = max_tokens
        for key in ("temperature", "top_p"):
            value = body.get(key)
            if value is not None:
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise BadRequest(f"'{key}' must be a number")
                parameters[key] = value
        stop = _one_stop(body.get("stop"))
        if stop is not None:
            parameters["stop"] = stop
        options = body.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        include_usage = stream and usage
        return cls(chat, model, prompt, parameters, max_tokens, stream, include_usage)

    @property
    def path(self) -> str:
        action = "generate_stream" if self.stream else "generate"
        return f"/v2/models/{quote(self.model, safe='')}/{action}"

    def body(self) -> bytes:
        return orjson.dumps({"text_input": self.prompt, "parameters": self.parameters})


def _count(value: Any) -> int | None:
    """A count output of Triton's: a number, or a one-element list of one."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if _is_int(value) and value >= 0 else None


@dataclass(slots=True)
class Tally:
    """What the answer said about itself (Triton's optional outputs) and what was counted."""

    pieces: int = 0
    chars: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish: str | None = None

    def note(self, response: dict[str, Any]) -> str:
        """Take in one Triton response; returns its text."""
        text = response.get("text_output")
        if isinstance(text, list) and all(isinstance(t, str) for t in text):
            text = "".join(text)
        if not isinstance(text, str):
            raise BackendBadAnswer("Triton's answer has no text_output")
        if text:
            self.pieces += 1
            self.chars += len(text)
        if (inputs := _count(response.get("num_input_tokens"))) is not None:
            self.input_tokens = inputs
        if (outputs := _count(response.get("num_output_tokens"))) is not None:
            self.output_tokens = (self.output_tokens or 0) + outputs  # per response when streamed
        reason = response.get("finish_reason")
        if isinstance(reason, list) and len(reason) == 1:
            reason = reason[0]
        if isinstance(reason, str) and reason:
            self.finish = reason if reason in FINISH_REASONS else "stop"
        return text

    def settle(self, ask: Ask, *, streamed: bool) -> tuple[dict[str, int], str]:
        """The answer's ``usage`` and ``finish_reason``."""
        prompt = self.input_tokens
        if prompt is None:
            prompt = estimate_tokens(ask.prompt)
        completion = self.output_tokens
        if completion is None and streamed:
            completion = self.pieces
        elif completion is None:  # an estimate: never more than the model was allowed
            completion = math.ceil(self.chars / 4)
            if ask.max_tokens is not None:
                completion = min(completion, ask.max_tokens)
        finish = self.finish
        if finish is None:
            reached = ask.max_tokens is not None and completion >= ask.max_tokens
            finish = "length" if reached else "stop"
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return usage, finish
