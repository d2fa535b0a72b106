"""Router overhead, measured paired and interleaved against references run at the same time.

Paths to one fast emulated node: ``direct``, ``router`` (a static node, no agent),
``router+agent``, ``bare proxy`` (``bench/reference_proxy.py``) and ``nginx`` (when installed).
``loadgen`` (an aiohttp client in its own process) measures latency at concurrency 1, one
request per path per round in shuffled order; ``wrk`` (or ``loadgen`` without it) measures
throughput in short slices, paths interleaved round by round. ``suite`` runs it all and
``analysis`` turns it into added latency, throughput ratios and the targets.
"""
