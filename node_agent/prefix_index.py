"""One model's prompt cache on this node, as the agent estimates it from the prompts it relays.

The agent sees every request that reaches its node, from every router replica, so it can keep
what the engine's prompt cache likely holds without asking the engine: an LRU of prefix hashes
(:mod:`node_protocol.prompt_prefix`), sized in characters like the engine's cache is in
tokens. Each recorded point of a prompt (its ladder positions and its last block) is one entry
that accounts for the characters since the previous point; a prompt's entries are touched
from its end back to its start, so its leading entries are the most recent and the tail of
a prefix is evicted before its head, as engines do (vLLM frees a request's blocks tail first).

Correction from the engine's own counts. When an answer says how many prompt tokens the
engine took from its cache, that share of the prompt's characters is compared with what the
index held when the request arrived. The engine holding far less than the index (it evicted a
prefix the index still has) means the index is bigger than the engine's cache: its capacity is
scaled down (by :data:`SHRINK`, at most to :data:`MIN_SCALE` of the estimate) and the least
recent entries go. The engine holding far more (the index had let go what the engine kept)
scales it back up (by :data:`GROW`, at most to :data:`MAX_SCALE`). A match within a block, or
within a quarter of the prediction, confirms it. Nothing else is evicted on a miss: the
engine has just computed the whole prompt again, so it does hold it now.
"""

from __future__ import annotations

from collections import OrderedDict

from node_protocol.prompt_prefix import (
    BLOCK_CHARS,
    Fingerprint,
    cached_prefix_chars,
    recorded_points,
)

SHRINK = 0.75
GROW = 1.25
MIN_SCALE = 1 / 16
MAX_SCALE = 4.0
TOLERANCE = 0.25  # of the prediction: a smaller gap is noise (templates, token rounding)


class PrefixIndex:
    """An LRU of prompt-prefix hashes bounded by an estimate of the engine's cache, in chars."""

    __slots__ = ("_entries", "estimate_chars", "scale", "used_chars")

    def __init__(self, estimate_chars: int) -> None:
        # hash -> characters it accounts for; least recently used first
        self._entries: OrderedDict[int, int] = OrderedDict()
        self.estimate_chars = max(BLOCK_CHARS, estimate_chars)
        self.scale = 1.0
        self.used_chars = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._entries

    @property
    def capacity_chars(self) -> int:
        """What the index holds at most: the estimate as corrected by the engine's counts."""
        return max(BLOCK_CHARS, int(self.estimate_chars * self.scale))

    def held_chars(self, fp: Fingerprint) -> int:
        """How many leading characters of the prompt the index says the engine holds."""
        return cached_prefix_chars(self._entries, fp)

    def record(self, fp: Fingerprint) -> None:
        """The prompt reached the engine: it holds all of it now (the least recent may go)."""
        entries = self._entries
        points = recorded_points(fp)
        previous = [0] + [end for _, end in points[:-1]]
        for (position, end), start in zip(reversed(points), reversed(previous), strict=True):
            block_hash = fp.blocks[position]
            if block_hash in entries:
                entries.move_to_end(block_hash)
            else:
                entries[block_hash] = end - start
                self.used_chars += end - start
        self._fit()

    def resize(self, estimate_chars: int) -> None:
        """A new estimate of the engine's cache (from its reported capacity)."""
        self.estimate_chars = max(BLOCK_CHARS, estimate_chars)
        self._fit()

    def correct(self, predicted_chars: int, engine_chars: int) -> None:
        """The engine says it took ``engine_chars`` of a prompt from its cache where the index
        predicted ``predicted_chars``: scale the capacity as the module docstring says."""
        slack = max(BLOCK_CHARS, int(predicted_chars * TOLERANCE))
        if engine_chars + slack < predicted_chars:
            self.scale = max(MIN_SCALE, self.scale * SHRINK)
            self._fit()
        elif engine_chars > predicted_chars + slack:
            self.scale = min(MAX_SCALE, self.scale * GROW)

    def recent(self, limit: int) -> frozenset[int]:
        """The ``limit`` most recently used hashes."""
        entries = self._entries
        if len(entries) <= limit:
            return frozenset(entries)
        found: list[int] = []
        for block_hash in reversed(entries):
            found.append(block_hash)
            if len(found) >= limit:
                break
        return frozenset(found)

    def _fit(self) -> None:
        entries = self._entries
        capacity = self.capacity_chars
        while self.used_chars > capacity and entries:
            _, chars = entries.popitem(last=False)
            self.used_chars -= chars
