"""How fast a node reads a prompt: characters of prompt prefilled per second, learned per node.

The scheduler's prefill term (:mod:`router.prompt_prefixes`) divides the part of a prompt a
node has not cached by this rate. Until a node has taught the router its rate, a default for
its backend kind stands in: the batched engines (vLLM, TGI, Triton) prefill far faster than the
single-stream ones (llama.cpp, Ollama, LM Studio). Each request this router routed to a node
with a free slot, answered without failover, teaches it: the uncached characters over the time
from sending to the first token (the node did not queue it, so that time is its prefill plus
one decode step). The estimate is a moving average of such samples, each bounded to a sane
range, so one odd answer moves it a little and never by orders of magnitude.
"""

from __future__ import annotations

import math

# Characters a second of prompt one request's prefill reads, by backend kind, until learned.
DEFAULT_CHARS_PER_S = {
    "vllm": 40_000.0,
    "tgi": 30_000.0,
    "triton": 30_000.0,
    "llamacpp": 8_000.0,
    "ollama": 8_000.0,
    "lmstudio": 8_000.0,
}
FALLBACK_CHARS_PER_S = 10_000.0
MIN_CHARS_PER_S = 500.0
MAX_CHARS_PER_S = 2_000_000.0
MIN_SAMPLE_CHARS = 2_048  # shorter prompts say more about the decode step than the prefill
ALPHA = 0.2  # weight of a new sample in the moving average


def default_rate(kind: str | None) -> float:
    """The prefill rate assumed for a node of backend ``kind`` before it taught one."""
    return DEFAULT_CHARS_PER_S.get(kind or "", FALLBACK_CHARS_PER_S)


def learned_rate(old: float | None, chars: int, seconds: float) -> float | None:
    """The rate after a sample of ``chars`` uncached prompt characters read in ``seconds``
    (``old``: the rate before, None when none was learned); None while nothing was learned.
    A sample too short to tell, or timed at zero or less, changes nothing."""
    if chars < MIN_SAMPLE_CHARS or not seconds > 0.0 or not math.isfinite(seconds):
        return old
    sample = min(max(chars / seconds, MIN_CHARS_PER_S), MAX_CHARS_PER_S)
    return sample if old is None else old + ALPHA * (sample - old)


class PeerRates:
    """The rates the nodes of each backend kind have taught, on average: the rate a node that
    has taught none yet stands in with (the kind's default while no peer taught one either).

    Measured against its peers' static default, the first node of a fleet to teach its rate
    would look faster or slower than all the others by however wrong the default is: were it
    faster, every new prompt on an idle fleet would go to it (its prefill term alone sets it
    apart by more than alike scores differ), and the rendezvous order that spreads new
    prompts over alike nodes would never come into play.
    """

    __slots__ = ("_count", "_sum")

    def __init__(self) -> None:
        self._sum: dict[str | None, float] = {}
        self._count: dict[str | None, int] = {}

    def add(self, kind: str | None, rate: float) -> None:
        self._sum[kind] = self._sum.get(kind, 0.0) + rate
        self._count[kind] = self._count.get(kind, 0) + 1

    def remove(self, kind: str | None, rate: float) -> None:
        left = self._count[kind] - 1
        self._count[kind] = left
        self._sum[kind] = self._sum[kind] - rate if left else 0.0

    def stand_in(self, kind: str | None) -> float:
        """The rate of a node of ``kind`` that has taught none."""
        count = self._count.get(kind, 0)
        return self._sum[kind] / count if count else default_rate(kind)
