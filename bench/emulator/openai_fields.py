"""Reading the fields of OpenAI-style request bodies that the emulator acts on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .job import Job
from .tokens import prompt_tokens


class FieldError(ValueError):
    """A request field of the wrong shape; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def message_prompt_tokens(messages: Any) -> int:
    """Prompt tokens of a chat ``messages`` list (text parts only)."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise FieldError("messages", "messages must be a list of objects")
    texts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(
                part["text"]
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
    return prompt_tokens(texts)


def completion_prompt_tokens(prompt: Any) -> int:
    """Prompt tokens of a completions ``prompt``: text, texts, token ids or lists of them."""
    if isinstance(prompt, str):
        return prompt_tokens([prompt])
    if isinstance(prompt, list):
        if all(isinstance(p, str) for p in prompt):
            return prompt_tokens(prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return len(prompt)
        if all(isinstance(p, list) for p in prompt):
            return sum(len(p) for p in prompt)
    raise FieldError("prompt", "prompt must be a string, a list of strings or token ids")


def embedding_inputs(value: Any) -> list[str]:
    """The texts of an embeddings ``input`` (token-id inputs are rendered as text)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        return [v if isinstance(v, str) else str(v) for v in value]
    raise FieldError("input", "invalid input")


def optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(key, f"{key} must be an integer")
    return value


def wants_stream(body: dict[str, Any]) -> bool:
    value = body.get("stream", False)
    if value is not None and not isinstance(value, bool):
        raise FieldError("stream", "stream must be a boolean")
    return bool(value)


def wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def usage_for(prompt: int, completion: int) -> dict[str, int]:
    """OpenAI's ``usage``: prompt, completion and total tokens."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def usage_of(job: Job) -> dict[str, int]:
    return usage_for(job.prompt_tokens, job.generated)


@dataclass(frozen=True, slots=True)
class Generation:
    """What an OpenAI-style generation body asks for."""

    prompt_tokens: int
    max_tokens: int | None
    stream: bool
    usage: bool


def read_generation(
    body: dict[str, Any],
    chat: bool,
    text_prompt: bool = False,
    max_keys: tuple[str, ...] = ("max_tokens",),
) -> Generation:
    """Prompt size, output cap (the first of ``max_keys`` present), stream and usage flags;
    ``text_prompt``: a completions ``prompt`` must be one string. Raises :class:`FieldError`."""
    if chat:
        prompt = message_prompt_tokens(body.get("messages"))
    elif text_prompt and not isinstance(body.get("prompt"), str):
        raise FieldError("prompt", "prompt must be a string")
    else:
        prompt = completion_prompt_tokens(body.get("prompt"))
    max_tokens = None
    for key in max_keys:
        if (max_tokens := optional_int(body, key)) is not None:
            break
    return Generation(prompt, max_tokens, wants_stream(body), wants_usage(body))
