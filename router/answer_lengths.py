"""How long a model's answers run: the mean output tokens of the answers relayed, per model.

The score (:mod:`router.scoring`) turns the requests queued at a node into seconds at
``expected_tokens`` each. A fixed guess (256) overprices the wait for a model whose answers are
short (an agent's tool call is a few dozen tokens) and underprices it where they are long; and
the wait is what a prompt's cached prefix at a busy node is weighed against. So each router
learns the figure per model from the answers it relays: the mean, not the median, because a
queue's wait is the sum of the service times ahead. The learned figure moves in steps of a
quarter octave, so that a roster makes its kept scores anew when the mean moved by a step, not
at every answer. Pure: the caller notes answers and asks; no clock, no I/O.
"""

from __future__ import annotations

import math

from router.bounded import LruDict

MIN_ANSWERS = 8  # until this many answers are in, the initial figure stands
WINDOW = 64  # the mean is a running mean over about the last this many answers
STEPS_PER_OCTAVE = 4
MAX_MODELS = 4096  # models kept per router (the least recently used go first)


def stepped(tokens: float) -> float:
    """``tokens`` rounded to the nearest quarter octave (at least 1)."""
    steps = round(math.log2(max(tokens, 1.0)) * STEPS_PER_OCTAVE)
    return float(2.0 ** (steps / STEPS_PER_OCTAVE))


class AnswerLengths:
    """Each model's expected output tokens (see the module doc); ``initial`` stands for a model
    with fewer than ``MIN_ANSWERS`` answers noted."""

    __slots__ = ("_initial", "_kept")

    def __init__(self, initial: float, limit: int = MAX_MODELS) -> None:
        self._initial = initial
        # model -> (running mean, answers counted up to WINDOW, the mean stepped)
        self._kept: LruDict[str, tuple[float, int, float]] = LruDict(limit)

    def note(self, model: str, tokens: int) -> None:
        """A whole answer of ``tokens`` output tokens for ``model`` was relayed."""
        if tokens <= 0:  # no count (an embedding, a usage-less answer): nothing learned
            return
        mean, n, _ = self._kept.get(model) or (0.0, 0, self._initial)
        n = min(n + 1, WINDOW)
        mean += (tokens - mean) / n
        self._kept[model] = (mean, n, stepped(mean) if n >= MIN_ANSWERS else self._initial)

    def learned(self) -> list[tuple[str, float, int]]:
        """Each model kept, with its expected output tokens and the answers counted (up to
        ``WINDOW``), least recently used first."""
        return [(model, kept[2], kept[1]) for model, kept in self._kept.items()]

    def expected(self, model: str) -> float:
        """The output tokens a request for ``model`` is expected to decode."""
        kept = self._kept.get(model)
        return self._initial if kept is None else kept[2]
