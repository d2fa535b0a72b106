"""Deterministic token text, prompt token counts and embedding vectors."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable

WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while",
    "emulated", "tokens", "arrive", "one", "at", "time",
)  # fmt: skip
EMBEDDING_DIM = 768


def token_text(index: int) -> str:
    """The ``index``-th output token: a space and a word from a fixed cycle."""
    return " " + WORDS[index % len(WORDS)]


def token_id(index: int) -> int:
    """A stable token id for the ``index``-th output token (Ollama's ``context`` array)."""
    return 1000 + index % len(WORDS)


def prompt_tokens(texts: Iterable[str]) -> int:
    """Prompt size the emulator charges: one token per four characters, rounded up."""
    return math.ceil(sum(len(t) for t in texts) / 4)


def embedding(text: str, dim: int = EMBEDDING_DIM) -> list[float]:
    """A unit-length vector that depends only on ``text``."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 6) for v in vec]
