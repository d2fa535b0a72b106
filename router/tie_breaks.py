"""How a decision tells exact ties apart: a jitter drawn ahead a block at a time, and the few
smallest of the jittered scores found without sorting their indices.

Every ``least_loaded`` decision multiplies each open row's score by a factor ``1 + TIE * u``,
``u`` uniform in [0, 1) and one draw per row, so that exact ties fall at random
(:mod:`router.scheduling`). Asked of numpy one decision at a time, those factors cost more than
the rest of a 16-row choice: the generator's call, the conversion to Python floats and the
three float operations per row came to 19k of the choice's 32k instructions. :class:`TieDraws`
draws and computes them a block at a time; decisions take them in order, so each gets the
factors the generator would have given it alone, bit for bit. Other uses of the generator (the
``random`` and two-choice policies) first put it where the decisions' draws end
(:meth:`TieDraws.generator`), so they see the stream as before too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router.scoring import FloatArray

TIE = 1e-9  # relative jitter: breaks exact ties at random, never reorders distinct scores

# The first block after the generator was used otherwise, and the largest: a router whose
# groups mix policies draws little ahead; one that only decides least_loaded, 4,096 draws.
FIRST_BLOCK = 64
MAX_BLOCK = 4096


class TieDraws:
    """The factors ``1 + TIE * u`` of a generator's stream, in order (see the module doc)."""

    __slots__ = ("_array", "_block", "_list", "_pos", "_rng", "_start")

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._start: dict[str, Any] | None = None  # the generator's state where the block began
        self._array: FloatArray = np.empty(0)
        self._list: list[float] | None = None  # the block as Python floats, made when asked
        self._pos = 0  # factors of the block taken
        self._block = FIRST_BLOCK

    def factors(self, n: int) -> list[float]:
        """The next ``n`` factors, as Python floats."""
        pos = self._take(n)
        if self._list is None:
            self._list = self._array.tolist()
        return self._list[pos : pos + n]

    def factor_array(self, n: int) -> FloatArray:
        """The next ``n`` factors, as an array (a view of the block: not to be written)."""
        pos = self._take(n)
        return self._array[pos : pos + n]

    def skip(self, n: int) -> None:
        """Pass over ``n`` draws (a choice of one row draws its one, to keep in step)."""
        self._take(n)

    def _take(self, n: int) -> int:
        """Where in the block the next ``n`` factors start (a new block if they are not in it)."""
        if self._pos + n > self._array.size:
            self._refill(n)
        pos = self._pos
        self._pos = pos + n
        return pos

    def generator(self) -> np.random.Generator:
        """The generator, put where the factors taken end, for any other draw."""
        self._settle()
        self._block = FIRST_BLOCK
        return self._rng

    def _settle(self) -> None:
        """Put the generator where the factors taken end: the block's start, advanced by the
        draws taken. PCG64's advance also drops the half of a 64-bit draw it may hold for its
        next 32-bit one (an ``integers`` call's), which the draws of doubles never touch: it
        is put back as it was."""
        start = self._start
        if start is None:
            return
        bits = self._rng.bit_generator
        bits.state = start
        bits.advance(self._pos)  # type: ignore[attr-defined]  # PCG64's, not every generator's
        state = bits.state
        state["has_uint32"], state["uinteger"] = start["has_uint32"], start["uinteger"]
        bits.state = state
        self._start, self._array, self._list, self._pos = None, np.empty(0), None, 0

    def _refill(self, n: int) -> None:
        self._settle()
        self._start = dict(self._rng.bit_generator.state)
        u = self._rng.random(max(self._block, n))
        u *= TIE  # the same two operations, in the same order, as 1.0 + TIE * u per draw
        u += 1.0
        self._array = u
        self._block = min(2 * self._block, MAX_BLOCK)


def smallest(values: list[float], limit: int) -> list[int]:
    """The positions of the ``limit`` smallest values, smallest first, equal values in the
    order they come: ``sorted(range(len(values)), key=values.__getitem__)[:limit]``, for less
    (the values are sorted alone, which compares them the same way, then found)."""
    total = sum(values)
    if total != total:  # a NaN (or inf - inf): no order to find values by
        return sorted(range(len(values)), key=values.__getitem__)[:limit]
    found: list[int] = []
    last, j = None, -1
    for v in sorted(values)[:limit]:
        j = values.index(v, j + 1 if v == last else 0)
        found.append(j)
        last = v
    return found
