"""Prompt prefixes as chains of blocks: the engines' prompt caches and the routers' maps of them.

A prompt is a sequence of ``BLOCK_TOKENS``-token blocks, each named by a chain id: the id of a
block stands for its content *and* everything before it, so two prompts share a leading run of
ids exactly as long as they share a leading run of text (the idea of the router's prompt
fingerprint, where a block's hash covers the previous block's hash). Only whole blocks count:
the tail of a prompt shorter than a block is never cached.

:class:`PrefixCache` is an engine's prefix cache (vLLM's automatic prefix caching, SGLang's radix
cache): a bounded set of blocks, least recently used evicted first. A request finds cached the
longest leading run of its blocks present; blocks are touched tail first, so a chain's head is
the most recent of its blocks and a prefix shared by many prompts outlives their tails (as vLLM
frees a sequence's blocks). Blocks held by running requests are not pinned (the capacity is the
node's whole KV memory, so this matters only under pressure).

The same class is a node agent's *map* of its engine's cache: the blocks of the prompts it
passed to the engine, bounded like the engine's cache (it does not see the engine's own
evictions, nor the blocks of generated text); a report carries what changed in it since the
last one. :class:`PrefixView` is what one router replica knows of those maps: each node's map
as of its last report, plus the prompts the replica routed there since. A prefix-aware
scheduler asks it how much of a prompt each node holds (:meth:`PrefixView.cached_tokens`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence

import numpy as np

from bench.sim.workload import Floats

BLOCK_TOKENS = 128

Change = tuple[int, bool]  # a block, and whether it came (True) or went


def leading_run(blocks: Collection[int], chain: Sequence[int], n: int) -> int:
    """How many of the first ``n`` blocks of ``chain`` are in ``blocks``, without a gap."""
    i = 0
    while i < n and chain[i] in blocks:
        i += 1
    return i


class PrefixCache:
    """A least-recently-used set of chain blocks, at most ``capacity`` of them; ``logged``:
    it keeps the blocks that came and went since :meth:`changes` was last called."""

    __slots__ = ("blocks", "capacity", "log")

    def __init__(self, capacity_tokens: int, *, logged: bool = False) -> None:
        self.capacity = max(capacity_tokens // BLOCK_TOKENS, 0)
        self.blocks: OrderedDict[int, None] = OrderedDict()
        self.log: list[Change] | None = [] if logged else None

    def match(self, chain: Sequence[int], n: int) -> int:
        """Leading blocks of the first ``n`` of ``chain`` held now."""
        return leading_run(self.blocks, chain, n)

    def touch(self, chain: Sequence[int], n: int) -> None:
        """The first ``n`` blocks of ``chain`` were used: hold them, most recent first from the
        head, evicting the least recently used past the capacity."""
        blocks, log = self.blocks, self.log
        move = blocks.move_to_end
        for i in range(min(n, self.capacity) - 1, -1, -1):
            block = chain[i]
            if block in blocks:
                move(block)
            else:
                blocks[block] = None
                if log is not None:
                    log.append((block, True))
        while len(blocks) > self.capacity:
            gone = blocks.popitem(last=False)[0]
            if log is not None:
                log.append((gone, False))

    def changes(self) -> list[Change]:
        """The blocks that came and went since the last call, in order (requires ``logged``)."""
        assert self.log is not None
        out, self.log = self.log, []
        return out


class PrefixView:
    """One replica's map of which prompt blocks each node (row) holds: the agents' last reports
    plus what this replica routed since each report was taken."""

    def __init__(self, rows: int) -> None:
        self.reported: list[set[int]] = [set() for _ in range(rows)]
        self.reported_at = np.full(rows, -np.inf)
        self.routed: list[dict[int, float]] = [{} for _ in range(rows)]  # block -> routed at

    def take(
        self, rows: Sequence[int], changes: Sequence[Iterable[Change]], taken_at: float
    ) -> None:
        """Reports of what changed in these rows' maps, taken by their agents at ``taken_at``
        (each the change since the one before): what this replica routed before then is in
        them (the agent saw it pass)."""
        for row, changed in zip(rows, changes, strict=True):
            reported = self.reported[row]
            for block, came in changed:
                if came:
                    reported.add(block)
                else:
                    reported.discard(block)
            self.reported_at[row] = taken_at
            mine = self.routed[row]
            if mine:
                self.routed[row] = {b: t for b, t in mine.items() if t >= taken_at}

    def route(self, row: int, chain: Sequence[int], n: int, now: float) -> None:
        """This replica sent a prompt of ``n`` blocks of ``chain`` to ``row``."""
        mine = self.routed[row]
        for i in range(n):
            mine[chain[i]] = now

    def cached_tokens(self, chain: Sequence[int], n: int) -> Floats:
        """Prompt tokens of a prompt of ``n`` blocks of ``chain`` that each row holds, as far as
        this replica knows (a block counts if reported there or routed there since)."""
        out = np.zeros(len(self.reported))
        for row, (reported, mine) in enumerate(zip(self.reported, self.routed, strict=True)):
            i = 0
            while i < n and (chain[i] in reported or chain[i] in mine):
                i += 1
            out[row] = i * BLOCK_TOKENS
        return out
