"""A prompt's fingerprint: a chain of block hashes over the prompt as the engine will see it.

Router and agent compute it alike, from a request body already parsed, on every surface:
OpenAI chat (``messages``, ``tools``) and completions (``prompt``), Ollama ``/api/chat`` and
``/api/generate`` (``system``, ``prompt``), Triton's generate (``text_input``), TGI
(``inputs``), Anthropic messages (``system``, ``messages``, ``tools``) and OpenAI responses
(``instructions``, ``input``). Two requests whose prompts share a prefix share leading blocks,
so a node that served one likely holds the other's prefix in its prompt cache.

The text is a canonical serialisation of the parsed values, in the order a chat template puts
them: the tools first, then the system prompt (a ``system`` or ``instructions`` field is the
first, system-role message), then each message in order as its role and its content's text
(text parts joined; any other part, tool calls and images as compact JSON). JSON formatting of
the body never matters; the same messages on two surfaces give the same text. A conversation
extended by more messages serialises to a text that starts with the shorter one's.

The text is cut into blocks of :data:`BLOCK_CHARS` characters from its start, so a block's
bounds never depend on what follows it, and block ``i``'s hash is XXH3-64 of its UTF-8 bytes
seeded with block ``i - 1``'s hash: it identifies the whole prefix up to the end of block ``i``.
No tokenizer: a block is a span of characters, and a node's cache is reckoned in characters.

:func:`cached_prefix_chars` answers how much of a prompt a set of held hashes covers. The sets
are kept at :func:`ladder` positions only (every block up to the 15th, then ever sparser, never
more than an eighth of the prefix apart) plus the last block of each prompt, so a summary of a
few hundred hashes describes many long conversations at once.
"""

from __future__ import annotations

import bisect
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import orjson
from xxhash import xxh3_64_intdigest

# 512 characters is about 128 tokens: coarse enough that a 32k-character prompt is 64 hashes
# (cheap to compute, small to report), fine enough that what a match misses at its end is
# a sliver of any prompt long enough for its prefill to matter.
BLOCK_CHARS = 512
# What a block hash means: the hashing, the block size and the serialisation. A summary made
# under another scheme is not comparable and is ignored.
SCHEME = f"xxh3-{BLOCK_CHARS}-v1"
LADDER_BITS = 4  # a ladder position p has p + 1 with at most this many significant bits
# Paths whose bodies carry a prompt (the agent's and the engines' paths alike).
PROMPT_PATH_ENDS = (
    "/chat/completions",
    "/completions",
    "/api/chat",
    "/api/generate",
    "/generate",
    "/generate_stream",
    "/messages",
    "/responses",
    "/infer",
)

_MESSAGE = "\x1e"  # starts each message (ASCII record separator)
_ROLE_END = "\x1f"  # ends its role (ASCII unit separator)
_EXTRA = "\x1d"  # starts a message's tool calls or images (ASCII group separator)
_SYSTEM_FIELDS = ("system", "instructions")
_RAW_FIELDS = ("prompt", "text_input", "inputs")
_UNWRITABLE = "\x00"


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A prompt's chained block hashes (one per started block) and its length in characters."""

    blocks: tuple[int, ...]
    chars: int


def is_prompt_path(path: str) -> bool:
    """Whether a request to ``path`` carries a prompt an engine caches (not embeddings, not
    Triton's tensor ``/v2/models/{m}/infer``)."""
    path = path.partition("?")[0].rstrip("/")
    if path.startswith("/v2/"):
        return path.endswith(("/generate", "/generate_stream"))
    return path.endswith(PROMPT_PATH_ENDS)


def fingerprint(body: dict[str, Any]) -> Fingerprint:
    """The fingerprint of a parsed request body (empty when it holds no prompt)."""
    return fingerprint_text(prompt_text(body))


def fingerprint_text(text: str) -> Fingerprint:
    """Cut ``text`` into blocks from its start and chain their hashes."""
    step = BLOCK_CHARS
    blocks: list[int] = []
    add = blocks.append
    digest = xxh3_64_intdigest
    seed = 0
    if text.isascii():  # one byte a character: encode once, hash slices of the bytes
        raw = text.encode()
        for start in range(0, len(raw), step):
            seed = digest(raw[start : start + step], seed)
            add(seed)
    else:
        for start in range(0, len(text), step):
            seed = digest(text[start : start + step].encode("utf-8", "surrogatepass"), seed)
            add(seed)
    return Fingerprint(tuple(blocks), len(text))


def prompt_text(body: dict[str, Any]) -> str:
    """The canonical text of the prompt in a parsed body, as described above."""
    parts: list[str] = []
    tools = body.get("tools")
    if tools:
        parts += (_MESSAGE, "tools", _ROLE_END, _json(tools))
    for key in _SYSTEM_FIELDS:
        system = body.get(key)
        if system:
            _add_message(parts, "system", system)
    messages = body.get("messages")
    if type(messages) is list:
        _add_messages(parts, messages)
    given = body.get("input")  # OpenAI responses: a string, or a list of items
    if type(given) is str:
        _add_message(parts, "user", given)
    elif type(given) is list:
        for item in given:
            _add_item(parts, item)
    for key in _RAW_FIELDS:
        raw = body.get(key)
        if raw is not None:
            _add_raw(parts, raw)
    return "".join(parts)


def _add_messages(parts: list[str], messages: list[Any]) -> None:
    """Each message in order; one with a role and a string content only, on a short path
    (this runs per message of every request)."""
    add = parts.extend
    for item in messages:
        if type(item) is dict:
            role = item.get("role")
            content = item.get("content")
            if (
                type(content) is str
                and type(role) is str
                and "tool_calls" not in item
                and "images" not in item
            ):
                add((_MESSAGE, role, _ROLE_END, content))
                continue
        _add_item(parts, item)


def _add_item(parts: list[str], item: Any) -> None:
    """A chat message (or a responses item): role, content, then tool calls and images."""
    if type(item) is not dict:
        _add_message(parts, "", item)
        return
    role = item.get("role")
    if type(role) is not str:  # a responses item without a role: a call, a call's output
        kind = item.get("type")
        _add_message(parts, kind if type(kind) is str else "", _json(item))
        return
    _add_message(parts, role, item.get("content"))
    for key in ("tool_calls", "images"):
        extra = item.get(key)
        if extra:
            parts += (_EXTRA, _json(extra))


def _add_message(parts: list[str], role: str, content: Any) -> None:
    parts += (_MESSAGE, role, _ROLE_END)
    if type(content) is str:
        parts.append(content)
    elif type(content) is list:  # parts: the text ones as their text, others as JSON
        for part in content:
            text = part.get("text") if type(part) is dict else part
            parts.append(text if type(text) is str else _json(part))
    elif content is not None:
        parts.append(_json(content))


def _add_raw(parts: list[str], raw: Any) -> None:
    """A raw prompt: a string, or a list (of strings, or of token ids) in order."""
    parts += (_MESSAGE, _ROLE_END)
    if type(raw) is str:
        parts.append(raw)
    elif type(raw) is list and all(type(piece) is str for piece in raw):
        parts.append(_MESSAGE.join(raw))
    else:
        parts.append(_json(raw))


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # nested too deep to write (or not JSON at all): a marker stands in
        return _UNWRITABLE


def on_ladder(position: int) -> bool:
    """Whether block ``position`` (from 0) is one of the sparse points a held set records."""
    n = position + 1
    shift = n.bit_length() - LADDER_BITS
    return shift <= 0 or n & ((1 << shift) - 1) == 0


# Every ladder position below 2**32 blocks (far beyond any body a server accepts).
_LADDER = tuple(
    (m << shift) - 1
    for shift in range(32 - LADDER_BITS + 1)
    for m in range(1 if shift == 0 else 1 << (LADDER_BITS - 1), 1 << LADDER_BITS)
)


def ladder(blocks: int) -> tuple[int, ...]:
    """The ladder positions below ``blocks``, ascending."""
    return _LADDER[: bisect.bisect_left(_LADDER, blocks)]


def recorded_points(fp: Fingerprint) -> list[tuple[int, int]]:
    """``(block position, characters up to its end)`` of each point a held set records for
    this prompt: its ladder positions, then its last block."""
    last = len(fp.blocks) - 1
    if last < 0:
        return []
    points = [(p, (p + 1) * BLOCK_CHARS) for p in ladder(last)]
    points.append((last, fp.chars))
    return points


def cached_prefix_chars(held: Container[int], fp: Fingerprint) -> int:
    """How many leading characters of the prompt ``held`` covers: all of them when it holds
    the prompt's last block (the same prompt again), else up to the last of the prompt's
    ladder points held before the first that is not. A set lookup per point."""
    blocks = fp.blocks
    last = len(blocks) - 1
    if last < 0:
        return 0
    if blocks[last] in held:
        return fp.chars
    covered = 0
    for position in _LADDER:
        if position >= last or blocks[position] not in held:
            break
        covered = position + 1
    return covered * BLOCK_CHARS


def recorded_hashes(fp: Fingerprint) -> list[int]:
    """The hashes a held set takes for this prompt (a router adds those of what it routed)."""
    return [fp.blocks[p] for p, _ in recorded_points(fp)]
