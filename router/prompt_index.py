"""Which of a roster's nodes hold each prompt-prefix hash: the prefill term at the cost of a few
lookups per request, whatever the size of the fleet.

Asking every node's summary about every prompt costs a few set lookups per node and request.
A :class:`PromptIndex` turns the question round: it keeps, per roster, an inverted index from
block hash to the rows whose node holds it (the agent's last summary for the row's model name
plus what this router routed there since, :mod:`router.prompt_prefixes`), made again for a row
only after the node tells it something changed (a report, a routed prompt: both far rarer per
node than decisions at high load). A decision then looks up the prompt's ladder points
(:func:`node_protocol.prompt_prefix.ladder`) and its last block: a handful of lookups. A row
holds the prompt up to the deepest of these points it holds (a block hash stands for its whole
prefix); a point every row holds is a part every node has cached, counted once for all.

Rows that hold none of it prefill the whole prompt: one constant per request over each row's
prefill rate, kept here as its inverse and updated when a rate is learned. A row whose node has
taught no rate yet stands in with what its peers of the same backend kind taught
(:class:`router.prefill_rates.PeerRates`), so that on a fleet of alike nodes a node's first
lesson does not set it apart from the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from node_protocol.prompt_prefix import BLOCK_CHARS, SCHEME, Fingerprint, ladder
from router.nodes import Node
from router.prefill_rates import PeerRates
from router.prompt_prefixes import chars_per_s
from router.scoring import FloatArray

_Rows = int | set[int]  # one row, or several (most hashes are held by one node)


class PromptIndex:
    """The prompt caches of a roster's nodes, indexed by block hash (see the module doc).
    ``names[i]``: the name row ``i``'s node serves the model under."""

    __slots__ = ("_dirty", "_held", "_inverse", "_inverse_col", "_known", "_names", "_nodes",
                 "_peers", "_rows", "_taught", "_untaught")  # fmt: skip

    def __init__(self, nodes: Sequence[Node], names: Sequence[str], columns: bool) -> None:
        self._nodes, self._names = nodes, names
        n = len(nodes)
        self._rows: dict[int, _Rows] = {}  # block hash -> the rows holding it
        self._held: list[frozenset[int] | set[int]] = [frozenset()] * n  # indexed, per row
        self._known: set[int] = set()  # rows with a cache signal (a summary, routed prompts)
        self._inverse = [1.0 / chars_per_s(node) for node in nodes]  # seconds per character
        self._inverse_col = np.array(self._inverse) if columns else None
        self._peers = PeerRates()
        self._taught: list[tuple[str | None, float] | None] = [None] * n  # (kind, rate) counted
        self._untaught: set[int] = set(range(n))  # rows whose node taught no rate
        self._dirty = set(range(n))  # rows to index again

    def changed(self, row: int) -> None:
        """The row's summary changed, or what was routed there was dropped."""
        self._dirty.add(row)

    def routed(self, row: int, name: str, hashes: Iterable[int]) -> None:
        """This router sent a prompt to the row's node for model ``name``: these hashes are
        held there from now on."""
        if row in self._dirty or name != self._names[row]:
            return
        kept = self._held[row]
        held = kept if isinstance(kept, set) else set(kept)  # not the summary's own set
        self._held[row] = held
        for h in hashes:
            if h not in held:
                held.add(h)
                self._add(h, row)
        self._known.add(row)

    def rate_changed(self, row: int) -> None:
        """The row's node learned a new prefill rate."""
        self._recount(row)
        self._stand_in()

    def _recount(self, row: int) -> None:
        """Count the row's node's taught rate (if any) among its kind's, and use it."""
        node = self._nodes[row]
        old = self._taught[row]
        if old is not None:
            self._peers.remove(*old)
        rate = node.prefill_chars_per_s
        if rate is None:
            self._taught[row] = None
            self._untaught.add(row)
            return
        kind = None if node.report is None else node.report.backend_kind
        self._peers.add(kind, rate)
        self._taught[row] = (kind, rate)
        self._untaught.discard(row)
        self._set_inverse(row, 1.0 / rate)

    def _stand_in(self) -> None:
        """The rows whose node taught no rate take their peers' (:class:`PeerRates`)."""
        for row in self._untaught:
            report = self._nodes[row].report
            rate = self._peers.stand_in(None if report is None else report.backend_kind)
            self._set_inverse(row, 1.0 / rate)

    def _set_inverse(self, row: int, inverse: float) -> None:
        self._inverse[row] = inverse
        if self._inverse_col is not None:
            self._inverse_col[row] = inverse

    def held(self, fp: Fingerprint) -> tuple[int, dict[int, int]] | None:
        """How much of the prompt the rows hold: what every row holds, and the rows that hold
        more with how much; None when no row has a cache signal."""
        if self._dirty:
            self._sync()
        blocks = fp.blocks
        if not self._known or not blocks:
            return None
        get, n = self._rows.get, len(self._nodes)
        last = len(blocks) - 1
        base = 0
        # the points some rows hold, shallow first, as (rows, characters up to the deepest
        # of a run of points the same rows hold)
        levels: list[tuple[_Rows, int]] = []
        before: _Rows | None = None
        deepest = 0  # the deepest point ``before`` holds so far
        for position in ladder(last):
            rows = get(blocks[position])
            if rows is None:
                break
            if rows == before:
                deepest = position
            elif n == (1 if isinstance(rows, int) else len(rows)):
                base = (position + 1) * BLOCK_CHARS
            else:
                if before is not None:
                    levels.append((before, (deepest + 1) * BLOCK_CHARS))
                before, deepest = rows, position
        if before is not None:
            levels.append((before, (deepest + 1) * BLOCK_CHARS))
        rows = get(blocks[last])
        if rows is not None:
            if n == (1 if isinstance(rows, int) else len(rows)):
                return fp.chars, {}
            levels.append((rows, fp.chars))
        more: dict[int, int] = {}
        for rows, chars in reversed(levels):  # deepest first: a row holds its deepest point
            if chars <= base:
                break
            if isinstance(rows, int):
                if rows not in more:
                    more[rows] = chars
            elif not rows <= more.keys():  # the common case: rows already seen deeper
                for row in rows - more.keys():
                    more[row] = chars
        return base, more

    def prefill_s(self, chars: int, base: int, more: dict[int, int]) -> list[float] | FloatArray:
        """Per row, the seconds its node would spend on the ``chars`` of prompt it does not
        hold (``base``, ``more``: from :meth:`held`)."""
        inverse = self._inverse
        if self._inverse_col is not None:
            col = (chars - base) * self._inverse_col
            for row, held in more.items():
                col[row] = (chars - held) * inverse[row]
            return col
        uncached = chars - base
        seconds = [uncached * x for x in inverse]
        for row, held in more.items():
            seconds[row] = (chars - held) * inverse[row]
        return seconds

    def _sync(self) -> None:
        """Index again the rows whose node changed."""
        for row in self._dirty:
            node, name = self._nodes[row], self._names[row]
            summary = node.prefix_caches.get(name)
            routed = node.routed_prefixes.get(name)
            new: frozenset[int] | set[int] = frozenset()
            if summary is not None and summary.scheme == SCHEME:
                new = summary.hashes
            if routed:
                new = new | routed
            if summary is None and routed is None:
                self._known.discard(row)
            else:
                self._known.add(row)
            old = self._held[row]
            if old is not new and old != new:
                for h in old - new:
                    self._remove(h, row)
                for h in new - old:
                    self._add(h, row)
            self._held[row] = new
            self._recount(row)
        self._stand_in()
        self._dirty.clear()

    def _add(self, h: int, row: int) -> None:
        rows = self._rows.get(h)
        if rows is None:
            self._rows[h] = row
        elif isinstance(rows, int):
            if rows != row:
                self._rows[h] = {rows, row}
        else:
            rows.add(row)

    def _remove(self, h: int, row: int) -> None:
        rows = self._rows.get(h)
        if rows is None:
            return
        if isinstance(rows, int):
            if rows == row:
                del self._rows[h]
            return
        rows.discard(row)
        if len(rows) == 1:
            self._rows[h] = next(iter(rows))
