"""Each model's expected answer length is learned from the answers relayed: the initial figure
until a few answers are in, then their recent mean, in quarter-octave steps."""

from __future__ import annotations

import pytest

from router.answer_lengths import MIN_ANSWERS, WINDOW, AnswerLengths, stepped


def test_a_model_is_expected_at_the_initial_figure_until_enough_answers() -> None:
    lengths = AnswerLengths(256.0)
    assert lengths.expected("m") == 256.0
    for _ in range(MIN_ANSWERS - 1):
        lengths.note("m", 24)
    assert lengths.expected("m") == 256.0
    lengths.note("m", 24)
    assert lengths.expected("m") == stepped(24.0)
    assert lengths.expected("other") == 256.0


def test_the_expectation_is_the_mean_not_the_median() -> None:
    """A queue's wait is the sum of the answers ahead: one long answer in four counts."""
    lengths = AnswerLengths(256.0)
    for i in range(4 * MIN_ANSWERS):
        lengths.note("m", 400 if i % 4 == 0 else 16)
    assert lengths.expected("m") == stepped((400 + 3 * 16) / 4)


def test_recent_answers_outweigh_old_ones() -> None:
    lengths = AnswerLengths(256.0)
    for _ in range(10 * WINDOW):
        lengths.note("m", 1000)
    for _ in range(6 * WINDOW):
        lengths.note("m", 20)
    assert lengths.expected("m") == pytest.approx(20.0, rel=0.2)


def test_answers_without_a_count_teach_nothing() -> None:
    lengths = AnswerLengths(256.0)
    for _ in range(2 * MIN_ANSWERS):
        lengths.note("embed", 0)
    assert lengths.expected("embed") == 256.0


def test_steps_are_quarter_octaves() -> None:
    assert stepped(16.0) == 16.0
    assert stepped(17.0) == 16.0
    assert stepped(19.5) == pytest.approx(2**4.25)
    assert stepped(0.0) == 1.0
    assert {stepped(22.6 + d / 10) for d in range(-10, 11)} == {2**4.5}


def test_models_beyond_the_bound_forget_the_least_recently_used() -> None:
    lengths = AnswerLengths(256.0, limit=2)
    for model in ("a", "b", "c"):
        for _ in range(MIN_ANSWERS):
            lengths.note(model, 32)
    assert lengths.expected("a") == 256.0
    assert lengths.expected("c") == 32.0
