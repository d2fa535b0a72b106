"""The agentic conversations ``python -m bench prefix`` replays, and the model it serves them on.

Each conversation belongs to one of a few *kinds* (like agents of the same kind) that share a
long system prompt; turn by turn it appends a user message, and after the answer the answer
itself, so each turn's prompt starts with the whole previous one. Between turns it thinks for a
drawn time. Everything comes from one seed: every policy replays the same user messages and
think times (the answers, the model's own, may differ).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bench.llamacpp.model import TinyModel

# Deep and narrow: prefill, which a cached prefix skips, dominates the first token of a long
# prompt on a CPU, while decoding stays quick (the README gives the cold first-token time).
MODEL = TinyModel(layers=7, width=128, heads=4, ffn=256, context=8192)
KINDS = 4  # system prompts, shared round the conversations
SYSTEM_WORDS = 300  # a system prompt of about 1,250 tokens in the tiny model's vocabulary
USER_WORDS = 10
PROBE_WORDS = 336  # about 1,400 tokens
WORDS = (
    "agent", "tool", "call", "result", "plan", "step", "file", "read", "write", "search",
    "code", "test", "build", "error", "fix", "check", "report", "user", "system", "task",
    "repo", "branch", "commit", "diff", "patch", "review", "note", "list", "run", "stop",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Settings:
    """One run's shape: the conversations, their turns, the think time and the answers."""

    conversations: int = 12
    turns: int = 5
    max_think_s: float = 2.0
    max_tokens: int = 24
    seed: int = 1

    def __post_init__(self) -> None:
        if self.conversations < 1 or self.turns < 1 or self.max_tokens < 1:
            raise ValueError("conversations, turns and max_tokens must be at least 1")
        if self.max_think_s < 0:
            raise ValueError("max_think_s must not be negative")


QUICK = Settings(conversations=4, turns=3, max_think_s=0.5, max_tokens=16)


@dataclass(frozen=True, slots=True)
class Conversation:
    """One conversation's script: its system prompt, a user message and a pause before each
    turn (the first pause staggers the conversations' starts)."""

    index: int
    kind: int
    system: str
    users: tuple[str, ...]
    pauses_s: tuple[float, ...]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def conversations(s: Settings) -> list[Conversation]:
    """The scripts of every conversation, drawn from ``s.seed``."""
    rng = random.Random(s.seed)
    systems = [f"You are agent kind {k}. " + _text(rng, SYSTEM_WORDS) for k in range(KINDS)]
    return [
        Conversation(
            index=i,
            kind=i % KINDS,
            system=systems[i % KINDS],
            users=tuple(_text(rng, USER_WORDS) for _ in range(s.turns)),
            pauses_s=tuple(rng.uniform(0.0, s.max_think_s) for _ in range(s.turns)),
        )
        for i in range(s.conversations)
    ]


def probe_prompt(seed: int, index: int) -> str:
    """A long system prompt no conversation (nor other probe) shares, for timing a cold first
    token."""
    return f"Cold probe {index}. " + _text(random.Random(f"probe-{seed}-{index}"), PROBE_WORDS)


def engine_flags(cache_ram_mib: int | None, more: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The servers' flags beyond the fleet's own: ``--cache-ram`` where one is asked for, then
    ``more`` as given."""
    cache = () if cache_ram_mib is None else ("--cache-ram", str(cache_ram_mib))
    return (*cache, *more)
