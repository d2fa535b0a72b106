"""A prompt's fingerprint must cost at most 10 us at 4k characters and 60 us at 32k.

The router fingerprints every request with a prompt (from the body it already parsed), the
agent every request its engine takes; a node's summary is then asked how much of the prompt it
holds (a set lookup per ladder point). Run with the other micro-benchmarks::

    pytest bench/micro --benchmark-warmup=on --benchmark-disable-gc --benchmark-min-rounds=20 \\
        --benchmark-json=results/micro.json
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.micro import within_budget
from node_agent.prefix_index import PrefixIndex
from node_protocol.prompt_prefix import cached_prefix_chars, fingerprint, recorded_hashes

BUDGET_S = {4096: 10e-6, 32768: 60e-6}
QUERY_BUDGET_S = 5e-6
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "description": "Run a shell command in the workspace and return its output.",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string"}, "timeout_s": {"type": "number"}},
                "required": ["command"],
            },
        },
    }
    for i in range(4)
]


def agent_body(chars: int, variant: str = "") -> dict[str, Any]:
    """An agent's chat body of about ``chars`` characters: tools, a system prompt, turns."""
    turn = "Look at src/router/app.py and tell me where the routes are registered. "
    messages = [{"role": "system", "content": "You are a coding agent. Plan, then act. " * 12}]
    while sum(len(m["content"]) for m in messages) + 1200 < chars:
        messages.append({"role": "user", "content": turn * 3})
        messages.append({"role": "assistant", "content": "Reading the file. " * 10})
    messages.append({"role": "user", "content": "And now? " + variant})
    return {"model": "qwen2.5-coder:32b", "messages": messages, "tools": TOOLS, "stream": True}


def check(benchmark: Any, budget_s: float) -> None:
    within_budget(benchmark, budget_s)


class TestFingerprint:
    """The cost of fingerprinting a parsed body, and of asking a summary about it."""

    @pytest.mark.parametrize("chars", [4096, 32768])
    def test_fingerprint(self, benchmark: Any, chars: int) -> None:
        """Serialise and hash an agent's chat body of 4k or 32k characters."""
        body = agent_body(chars)
        fp = benchmark(fingerprint, body)
        assert abs(fp.chars - chars) < 2000
        check(benchmark, BUDGET_S[chars])

    @pytest.mark.parametrize("chars", [4096, 32768])
    def test_cached_prefix_chars(self, benchmark: Any, chars: int) -> None:
        """Ask a 512-hash summary how much of a prompt it holds (the prompt's prefix held)."""
        index = PrefixIndex(10**8)
        for n in range(40):
            index.record(fingerprint(agent_body(chars, variant=str(n))))
        held = index.recent(512)
        fp = fingerprint(agent_body(chars, variant="new"))
        covered = benchmark(cached_prefix_chars, held, fp)
        assert 0 < covered < fp.chars
        assert set(recorded_hashes(fp)) - held
        check(benchmark, QUERY_BUDGET_S)
