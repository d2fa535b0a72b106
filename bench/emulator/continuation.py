"""Continuing a text: the emulated model goes on with its own words.

The emulated model always writes the same words in the same order (:func:`.tokens.token_text`).
Given a context that ends with its first k words, it writes from the (k+1)-th on: an answer cut
after k tokens and sent back as the start of the assistant's turn (or a completions prompt that
ends with it) goes on exactly where it stopped, so a resumed stream can be checked against an
uninterrupted one. Each face decides whether a context is continued as its backend does
(a final assistant message is continued, or a new assistant turn starts).
"""

from __future__ import annotations

from typing import Any

from .tokens import WORDS, token_text

MAX_CONTINUED = 8192  # tokens: a longer run of the model's own words is not recognised
_RUN = "".join(token_text(i) for i in range(MAX_CONTINUED))
_ENDS = [0]  # _ENDS[k]: where the first k words end in _RUN
for _i in range(MAX_CONTINUED):
    _ENDS.append(_ENDS[-1] + len(token_text(_i)))


def continued_tokens(text: str) -> int:
    """How many of the model's words (from its first) ``text`` ends with: where the model goes
    on from. Zero for a text that ends any other way."""
    last = next((j for j in range(len(WORDS)) if text.endswith(token_text(j))), None)
    if last is None:
        return 0
    k = last + 1
    while k + len(WORDS) <= MAX_CONTINUED and _ENDS[k + len(WORDS)] <= len(text):
        k += len(WORDS)
    while k > 0:  # the longest run first
        if _ENDS[k] <= len(text) and text.endswith(_RUN[: _ENDS[k]]):
            return k
        k -= len(WORDS)
    return 0


def chat_continues(messages: Any, continues_final: bool) -> int:
    """The words a chat goes on from: those its final assistant message ends with when the
    backend continues that message (``continues_final``); none when a new turn starts."""
    if not continues_final or not isinstance(messages, list) or not messages:
        return 0
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") == "assistant":
        content = last.get("content")
        return continued_tokens(content) if isinstance(content, str) else 0
    return 0


def prompt_continues(prompt: Any) -> int:
    """The words a completions prompt (one text, or a list of one) goes on from."""
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return continued_tokens(prompt) if isinstance(prompt, str) else 0
