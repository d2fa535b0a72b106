"""The prefill term: how long each candidate node would spend reading the part of a prompt it
has not cached.

A node's prompt cache is known from two sources: the summary its agent last reported for the
model (:class:`node_protocol.wire.PrefixSummary`: from the prompts the agent saw pass, checked
against the engine's own cached-token counts where it gives them), and the prompts this router
sent there since that report (:func:`note_routed`; a report replaces them, as it saw them pass).
The uncached characters over the node's prefill rate (:mod:`router.prefill_rates`) are the
seconds :func:`router.scoring.score` adds to the node's time to serve.

Router replicas do not share what they routed, so for a prompt every node scores alike on
(a new conversation on an idle fleet), each would pick its own node at random and the
conversation's later turns would find its prefix on one node only by luck. A
:class:`Rendezvous` gives each node a weight from the prompt's leading block instead: scores
within :data:`router.scheduling.ALIKE` of each other are ordered by it, the same in every
replica. The per-request work over a roster is :class:`router.prompt_index.PromptIndex`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from node_protocol.prompt_prefix import Fingerprint, cached_prefix_chars, recorded_hashes
from router.candidates import HashArray
from router.nodes import Node
from router.prefill_rates import default_rate, learned_rate
from router.scoring import FloatArray

IndexArray = npt.NDArray[np.intp]

MAX_ROUTED_HASHES = 8192  # per node and model between two reports: past it, start afresh


def chars_per_s(node: Node) -> float:
    """The node's prefill rate: learned, or its backend kind's default."""
    if node.prefill_chars_per_s is not None:
        return node.prefill_chars_per_s
    return default_rate(None if node.report is None else node.report.backend_kind)


def learn(node: Node, uncached_chars: int, seconds: float) -> None:
    """A request this router sent to ``node`` with a free slot read ``uncached_chars`` of
    prompt it had not cached and gave its first token ``seconds`` after it was sent."""
    old = node.prefill_chars_per_s
    node.prefill_chars_per_s = learned_rate(old, uncached_chars, seconds)
    if node.prefill_chars_per_s != old:
        node.prefill_rate_changed()


def cached_chars(node: Node, name: str, fp: Fingerprint) -> int | None:
    """How much of the prompt ``node`` likely holds for model ``name``; None when the router
    knows nothing of that cache (no summary, nothing routed there since)."""
    summary = node.prefix_caches.get(name)
    routed = node.routed_prefixes.get(name)
    if summary is None and routed is None:
        return None
    held = 0 if summary is None else summary.prefix_chars(fp)
    if routed is not None and held < fp.chars:
        held = max(held, cached_prefix_chars(routed, fp))
    return held


# Not frozen: both are made for every request with a prompt, and a frozen one takes twice as
# long to make (its fields are set through object.__setattr__).
@dataclass(slots=True)
class Rendezvous:
    """A prompt's order among alike scores: each node's weight in [0, 1) from its
    :func:`router.candidates.node_hashes` hash and the prompt's leading block, the same in
    every router replica (splitmix64's finaliser of the two xored).

    Rows known to hold more of the prompt than others (``ahead``: row -> rank, 0 holding the
    most, of ``ranks`` in all, the last for the rows holding the least) come first among alike
    scores: each rank takes its own slice of [0, 1), the rendezvous weight orders the rows
    within one. Otherwise a saving of prefill smaller than the alike margin would lose to the
    rendezvous order, and a conversation would leave the node this router sent it to."""

    key: int
    ahead: dict[int, int] | None = None
    ranks: int = 1

    def weight(self, node_hash: int, row: int = -1) -> float:
        """One node's weight (``row``: its row, for its rank)."""
        x = node_hash ^ self.key
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
        w = ((x ^ (x >> 31)) >> 11) / _UNIT
        if self.ahead is None:
            return w
        return (self.ahead.get(row, self.ranks - 1) + w) / self.ranks

    def weights(self, node_hashes: HashArray, rows: IndexArray | None = None) -> FloatArray:
        """The weights of many nodes at once (equal to :meth:`weight`'s)."""
        x = node_hashes ^ np.uint64(self.key)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
        w = (x >> np.uint64(11)).astype(np.float64) / _UNIT
        if self.ahead is None or rows is None:
            return w
        get, last = self.ahead.get, self.ranks - 1
        rank = np.array([get(row, last) for row in rows.tolist()], dtype=np.float64)
        return (rank + w) / self.ranks

    @classmethod
    def of(cls, fp: Fingerprint, more: dict[int, int] | None = None) -> Rendezvous:
        """The prompt's order; ``more``: the rows holding more of it than the rest, with how
        many characters."""
        key = fp.blocks[0] if fp.blocks else 0
        if not more:
            return cls(key)
        depths = sorted(set(more.values()), reverse=True)
        rank = {chars: i for i, chars in enumerate(depths)}
        return cls(key, {row: rank[chars] for row, chars in more.items()}, len(depths) + 1)


_MASK = (1 << 64) - 1
_UNIT = float(1 << 53)


@dataclass(slots=True)
class PrefixTerms:
    """One prompt over a roster's rows: the seconds each would spend on its uncached part, the
    characters every row holds (``base``) and those of the rows that hold more (``more``), and
    the prompt's rendezvous order among alike scores."""

    prefill_s: Sequence[float] | FloatArray
    base: int
    more: dict[int, int]
    ties: Rendezvous

    def held(self, row: int) -> int:
        """The prompt characters the row's node likely holds."""
        return self.more.get(row, self.base)


def note_routed(node: Node, name: str, fp: Fingerprint) -> None:
    """This router sent the prompt to ``node`` for model ``name``: until the next report, the
    node holds its prefix (bounded: at the limit the routed set starts afresh)."""
    if not fp.blocks:
        return
    hashes = recorded_hashes(fp)
    routed = node.routed_prefixes.get(name)
    if routed is None:
        routed = node.routed_prefixes[name] = set()
    elif len(routed) >= MAX_ROUTED_HASHES:
        routed.clear()
        routed.update(hashes)
        node.prompts_changed()
        return
    routed.update(hashes)
    node.prompts_routed(name, hashes)
