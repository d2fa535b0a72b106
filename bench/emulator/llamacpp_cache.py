"""llama-server's slots and prompt cache: which slot a request gets and how much it reuses.

Each slot keeps the tokens of its last prompt (and what it generated). A new request goes to
the idle slot whose tokens share the longest prefix with its prompt, as a share of the prompt,
above ``--slot-prompt-similarity`` (0.1); failing that, to the least recently used idle slot.
Before a slot's tokens are replaced by an unrelated prompt they are saved to a host-RAM prompt
cache (``--cache-ram``), and the most similar saved prompt is loaded into the slot instead, if
it beats what the slot holds. Every idle slot is also saved when a request starts
(``--cache-idle-slots``). Only the tokens after the common prefix are computed, and at least
the last prompt token always is.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .llamacpp_prompt import Tokens

if TYPE_CHECKING:
    from .job import Job

SLOT_PROMPT_SIMILARITY = 0.1  # --slot-prompt-similarity's default
SAVE_BELOW_KEEP = 0.5  # a similar slot that would keep less of its tokens saves them first
LOAD_MIN_KEEP = 0.25  # a saved prompt is not loaded if that would keep less of it
# --cache-ram is 8 GiB by default; at a 7-8B model's ~128 KiB of KV per token that holds
# about this many tokens.
DEFAULT_CACHE_TOKENS = 65536


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n  # pragma: no cover - the slice comparison found a difference


class PromptCache:
    """Prompts saved to host RAM, oldest first, bounded by their total tokens."""

    def __init__(self, limit_tokens: int) -> None:
        self.limit_tokens = limit_tokens
        self.entries: list[Tokens] = []

    @property
    def n_tokens(self) -> int:
        return sum(len(e) for e in self.entries)

    def save(self, tokens: Tokens) -> None:
        """Keep ``tokens`` unless a saved prompt already contains them; saved prompts that
        ``tokens`` contains go, and the oldest go while the total is over the bound."""
        if not tokens or len(tokens) > self.limit_tokens:
            return
        if any(common_prefix(e, tokens) == len(tokens) for e in self.entries):
            return
        self.entries = [e for e in self.entries if common_prefix(e, tokens) != len(e)]
        while self.entries and self.n_tokens + len(tokens) > self.limit_tokens:
            self.entries.pop(0)
        self.entries.append(tokens)

    def take_better(self, current: Tokens, prompt: Tokens) -> Tokens | None:
        """The saved prompt that serves ``prompt`` better than ``current`` (a larger share of
        both kept), taken out of the cache; None when none does."""
        lcp = common_prefix(current, prompt)
        keep_best = lcp / len(current) if current else -1.0
        sim_best = lcp / len(prompt)
        best: Tokens | None = None
        for entry in self.entries:
            shared = common_prefix(entry, prompt)
            keep, sim = shared / len(entry), shared / len(prompt)
            if keep >= LOAD_MIN_KEEP and keep > keep_best and sim > sim_best:
                keep_best, sim_best, best = keep, sim, entry
        if best is not None:
            self.entries.remove(best)
        return best


@dataclass(slots=True)
class Slot:
    """One slot: the tokens it holds and, while it works, the job and its prompt figures."""

    id: int
    n_ctx: int
    tokens: Tokens = ()
    text: str | None = None  # the prompt's text, when it was given as text
    job: Job | None = None
    task_id: int | None = None
    prompt_n: int = 0  # prompt tokens computed for the current task
    cache_n: int = 0  # prompt tokens reused for the current task
    n_predict: int = -1
    stream: bool = False
    last_used: float = field(default=-1.0)

    @property
    def busy(self) -> bool:
        return self.job is not None


class SlotTable:
    """The server's slots and its host-RAM prompt cache."""

    def __init__(self, count: int, n_ctx: int, cache_tokens: int = DEFAULT_CACHE_TOKENS) -> None:
        self.slots = [Slot(i, n_ctx) for i in range(count)]
        self.cache = PromptCache(cache_tokens)

    @property
    def busy(self) -> int:
        return sum(1 for s in self.slots if s.busy)

    def assign(self, job: Job, prompt: Tokens, reuse: bool) -> Slot:
        """Give ``job`` an idle slot (the engine's gate guarantees one is idle) and set
        ``job.cached_tokens``. ``reuse`` False (embeddings, ``cache_prompt: false``) computes
        the whole prompt and leaves the RAM cache alone."""
        slot = self._choose(prompt, reuse)
        cached = min(common_prefix(slot.tokens, prompt), len(prompt) - 1) if reuse else 0
        job.cached_tokens = max(0, cached)
        slot.job, slot.tokens = job, prompt
        slot.prompt_n, slot.cache_n = len(prompt) - job.cached_tokens, job.cached_tokens
        if reuse:
            for other in self.slots:
                if not other.busy:
                    self.cache.save(other.tokens)
        return slot

    def release(self, slot: Slot, tokens: Tokens) -> None:
        """The slot's job is over; the slot keeps ``tokens`` (its prompt and output)."""
        slot.job, slot.tokens = None, tokens
        slot.prompt_n = slot.cache_n = 0
        slot.last_used = time.monotonic()

    def _choose(self, prompt: Tokens, reuse: bool) -> Slot:
        idle = [s for s in self.slots if not s.busy]
        best: Slot | None = None
        sim_best = 0.0
        for slot in idle:
            if not slot.tokens:
                continue
            sim = common_prefix(slot.tokens, prompt) / len(prompt)
            if sim > sim_best and sim > SLOT_PROMPT_SIMILARITY:
                best, sim_best = slot, sim
        save = False
        if best is not None:
            save = sim_best * len(prompt) / len(best.tokens) < SAVE_BELOW_KEEP
        else:
            for slot in idle:  # least recently used; the last of equals, as llama-server
                if best is None or slot.last_used <= best.last_used:
                    best = slot
            save = True
        if best is None:
            raise RuntimeError("no idle slot: the engine's gate admitted too many jobs")
        if save and reuse:
            self.cache.save(best.tokens)
            loaded = self.cache.take_better(best.tokens, prompt)
            if loaded is not None:
                best.tokens = loaded
        return best
