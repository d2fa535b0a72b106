"""The jitter drawn ahead is the generator's stream, and the few smallest are found as a sort
of positions finds them."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from router.tie_breaks import FIRST_BLOCK, MAX_BLOCK, TIE, TieDraws, smallest

SIZES = [1, 3, 16, 1, FIRST_BLOCK, 5, MAX_BLOCK + 7, 2, 12]


def test_factors_are_the_generators_draws_one_decision_at_a_time() -> None:
    draws, alone = TieDraws(np.random.default_rng(5)), np.random.default_rng(5)
    for n in SIZES * 3:  # across block refills, one larger than a block
        expected = (1.0 + TIE * alone.random(n)).tolist()
        assert draws.factors(n) == expected


def test_arrays_lists_and_skips_take_from_one_stream() -> None:
    draws, alone = TieDraws(np.random.default_rng(6)), np.random.default_rng(6)
    for i, n in enumerate(SIZES * 3):
        expected = 1.0 + TIE * alone.random(n)
        if i % 3 == 0:
            assert draws.factors(n) == expected.tolist()
        elif i % 3 == 1:
            assert np.array_equal(draws.factor_array(n), expected)
        else:
            draws.skip(n)


def test_other_draws_after_factors_see_the_stream_as_before() -> None:
    """The two-choice and random policies draw integers and permutations between decisions:
    each sees what the generator alone would give, the 32-bit half it may hold included."""
    draws, alone = TieDraws(np.random.default_rng(7)), np.random.default_rng(7)
    for n in SIZES * 2:
        assert draws.factors(n) == (1.0 + TIE * alone.random(n)).tolist()
        mine = draws.generator().integers(0, 10, size=3).tolist()
        assert mine == alone.integers(0, 10, size=3).tolist()
        assert draws.generator().permutation(n).tolist() == alone.permutation(n).tolist()
    assert draws.generator().random(4).tolist() == alone.random(4).tolist()


def test_a_settled_stream_changed_by_one_draw_is_caught() -> None:
    """The comparison above can fail: one draw more and every later value differs."""
    draws, alone = TieDraws(np.random.default_rng(8)), np.random.default_rng(8)
    draws.factors(5)
    alone.random(6)
    assert draws.generator().random(3).tolist() != alone.random(3).tolist()


values = st.lists(
    st.one_of(
        st.sampled_from([0.0, -0.0, 1.0, 2.0, math.inf, math.nan]),
        st.floats(min_value=0.0, max_value=10.0),
    ),
    max_size=24,
)


@given(values, st.integers(min_value=0, max_value=26))
def test_smallest_are_the_positions_a_stable_sort_puts_first(vs: list[float], limit: int) -> None:
    assert smallest(vs, limit) == sorted(range(len(vs)), key=vs.__getitem__)[:limit]
