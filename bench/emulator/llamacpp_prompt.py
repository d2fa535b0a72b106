"""Prompts as the llama.cpp face sees them: rendered chat, tokens, token ids.

The prompt cache compares token sequences, so the face needs tokens, not just a count. A token
here is four characters of the rendered prompt (the emulator's usual one token per four
characters), after a BOS token, so two prompts share cached tokens as far as their text is the
same. Chat messages are rendered with a fixed template, as llama-server renders them with the
model's template before tokenizing; the template's tokens count toward ``prompt_tokens``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from .errors import FaceError
from .tokens import token_text

CHARS_PER_TOKEN = 4
BOS = "<s>"
EOS = "</s>"
N_VOCAB = 32000
SPECIAL_IDS = {BOS: 1, EOS: 2}
FIRST_TEXT_ID = 259  # after <unk>, <s>, </s> and the 256 byte pieces
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
PROMPT_SHAPE_MESSAGE = (
    '"prompt" elements must be a string, a list of tokens, a JSON object containing a prompt '
    "string, or a list of mixed strings & tokens."
)

Tokens = tuple[str, ...]


def invalid(message: str) -> FaceError:
    """llama-server's 400 ``invalid_request_error``."""
    return FaceError(400, message, "invalid_request_error")


def text_tokens(text: str) -> list[str]:
    """The text cut into tokens of four characters (the last may be shorter)."""
    return [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


def prompt_tokens(text: str) -> Tokens:
    """A prompt as the model reads it: BOS, then the text's tokens."""
    return (BOS, *text_tokens(text))


def token_id(token: str) -> int:
    """A stable id for a token, inside the vocabulary."""
    if token in SPECIAL_IDS:
        return SPECIAL_IDS[token]
    return FIRST_TEXT_ID + zlib.crc32(token.encode()) % (N_VOCAB - FIRST_TEXT_ID)


def _content_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    if content is None and message.get("role") != "assistant":
        raise invalid("All non-assistant messages must contain 'content'")
    return ""


def render_chat(messages: Any, continue_final: bool = False) -> str:
    """The chat as the template renders it, ending with the assistant's turn: a new one, or
    (``continue_final``) its final assistant message left open, as llama-server renders a chat
    it continues."""
    if not isinstance(messages, list):
        raise invalid("Expected 'messages' to be an array")
    parts = []
    for message in messages:
        if not isinstance(message, dict):
            raise invalid("Expected 'messages' to be an array of objects")
        parts.append(f"<|{message.get('role', 'user')}|>\n{_content_text(message)}\n")
    if continue_final:
        return "".join(parts)[:-1]  # the final message's end is left off
    return "".join(parts) + "<|assistant|>\n"


def continues_final(body: dict[str, Any]) -> bool:
    """Whether llama-server continues the chat's final assistant message: when asked
    (``continue_final_message``, which then needs ``add_generation_prompt: false``) or by itself
    (its assistant prefill, on by default)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return False
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages[-2:]]
    if body.get("continue_final_message") is True:
        if body.get("add_generation_prompt", True) is not False:
            raise invalid(
                "Cannot set both add_generation_prompt and continue_final_message to true."
            )
        return roles[-1] == "assistant"
    if roles[-1] != "assistant":
        return False
    if roles == ["assistant", "assistant"]:
        raise invalid("Cannot have 2 or more assistant messages at the end of the list.")
    return True


def _one_prompt(value: Any) -> Tokens:
    if isinstance(value, str):
        return prompt_tokens(value)
    if isinstance(value, list) and all(_is_int(v) for v in value):
        if not value:
            raise invalid('"prompt" must not be empty')
        return tuple(f"#{v}" for v in value)  # token ids are used as given: no BOS added
    raise invalid(PROMPT_SHAPE_MESSAGE)


def completion_prompts(body: dict[str, Any]) -> list[Tokens]:
    """The prompts of a completions body: one string or token list, or a list of them."""
    if "prompt" not in body:
        raise invalid("[json.exception.out_of_range.403] key 'prompt' not found")
    prompt = body["prompt"]
    if isinstance(prompt, list) and prompt and not all(_is_int(v) for v in prompt):
        return [_one_prompt(p) for p in prompt]
    return [_one_prompt(prompt)]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def detokenize(tokens: Sequence[str]) -> str:
    """The prompt text back from its tokens (``<s>`` shown, as llama-server shows it)."""
    return "".join(f"{t} " if t == BOS else t for t in tokens)


def tokens_after(prompt: Tokens, text: str | None, generated: int, first: int = 0) -> Tokens:
    """What a slot holds once its task is over: the prompt and the output (the model's words
    from ``first``) but its last token (not yet fed back). With the prompt's text known, the
    output continues that text, so a follow-up turn that repeats it finds it cached."""
    if generated == 0:
        return prompt
    if text is None:
        return prompt + ("\x00",) * (generated - 1)
    output = "".join(token_text(first + i) for i in range(generated))
    return prompt_tokens(text + output)[:-1]
