"""Agent traffic: a few dozen agents with long system prompts, running tool-calling sessions.

Agents come in groups that share one system prompt (``system_tokens``); each agent adds its own
tool definitions (``tool_tokens``). A session is one agent's task: a user message, then turns
of a tool call (a short answer), the tool's result appended to the conversation, the next call;
the last turn answers at more length. Each turn's prompt is the previous turn's prompt plus its
answer and the tool's result, so every prompt extends the one before it; the next turn comes
``think`` seconds (the tool running) after the previous answer ended. Sessions start at random
(Poisson), each for an agent drawn at random, so one agent may run several at once.

As chains of blocks (:mod:`bench.sim.prefix`): a conversation's chain is its group's system
prompt blocks, then its agent's blocks (the block that straddles system prompt and tools is the
agent's own), then blocks of its own; a block is named by everything before it, so chains of
one group share their leading ids, of one agent longer ones, and never anything after they part.

``load`` sizes the session rate: the work the sessions bring (decoded-token equivalents, as in
:mod:`bench.sim.workload`) as a share of the fleet's capacity, counting each turn's prefill of
its conversation's own text but not of its agent's shared prompt (system and tools). That is
about what a router that ignores prompts costs the fleet once the shared prompts are cached
everywhere; a router that keeps conversations together does less work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.sim.cluster import PREFILL_RATIO, NodeSpec, engines_for
from bench.sim.prefix import BLOCK_TOKENS
from bench.sim.workload import Floats, Ints, Requests, Turns


@dataclass(frozen=True, slots=True)
class Agents:
    """The agents and their sessions (token counts are bounds of uniform draws), all on one
    model, at ``load`` of its engines' capacity (see the module's docstring)."""

    model: str = "llama3.1:8b"
    load: float = 0.8
    agents: int = 36
    groups: int = 6
    system_tokens: tuple[int, int] = (2000, 8000)
    tool_tokens: tuple[int, int] = (300, 1200)
    turns: tuple[int, int] = (5, 15)
    user_median: float = 150.0
    call_median: float = 100.0  # a tool call's tokens
    answer_median: float = 350.0  # the last turn's answer
    result_median: float = 700.0  # a tool result's tokens
    think_median_s: float = 2.0
    max_think_s: float = 60.0

    def draw(
        self, nodes: Sequence[NodeSpec], requests: int, model_ids: dict[str, int], seed: int
    ) -> Requests:
        """About ``requests`` requests of the fleet of ``nodes`` at ``load``."""
        capacity = sum(
            e.capacity_units_s()
            for e in engines_for(nodes)
            if e.model == self.model and e.model in nodes[e.node].loaded
        )
        sessions = max(1, round(requests / (sum(self.turns) / 2)))
        return agentic_requests(self, sessions, capacity, model_ids[self.model], seed)


@dataclass(slots=True)
class _Sessions:
    """Every session's turns, flattened: one row per request, sessions one after another."""

    prompt: Floats
    output: Floats
    think: Floats
    turns: Ints  # per session
    agent: Ints  # per session
    shared: Ints  # per session: tokens of its agent's system prompt and tools

    @property
    def first(self) -> Ints:
        """Per session, its first request's row."""
        return np.concatenate(([0], np.cumsum(self.turns)[:-1])).astype(np.int64)


def _draw_sessions(
    a: Agents, count: int, system: Ints, tools: Ints, rng: np.random.Generator
) -> _Sessions:
    agent = rng.integers(0, a.agents, count)
    shared = system[agent % a.groups] + tools[agent]
    turns = rng.integers(a.turns[0], a.turns[1] + 1, count)
    n = int(turns.sum())
    first = np.concatenate(([0], np.cumsum(turns)[:-1]))
    last = np.zeros(n, dtype=bool)
    last[first + turns - 1] = True

    def tokens(median: float, sigma: float, cap: float, size: int) -> Floats:
        drawn = rng.lognormal(np.log(median), sigma, size)
        return np.round(np.clip(drawn, 1.0, cap)).astype(np.float64)

    output = np.where(
        last, tokens(a.answer_median, 0.6, 4096, n), tokens(a.call_median, 0.6, 1024, n)
    )
    result = np.where(last, 0.0, tokens(a.result_median, 0.9, 8000, n))
    think = np.clip(rng.lognormal(np.log(a.think_median_s), 1.0, n), 0.1, a.max_think_s)
    think[first] = 0.0
    grown = np.concatenate(([0.0], np.cumsum(output + result)[:-1]))  # text added before a turn
    start = (shared + tokens(a.user_median, 0.8, 2000, count)).astype(np.float64)
    prompt = np.repeat(start, turns) + grown - np.repeat(grown[first], turns)
    return _Sessions(prompt, output, think, turns, agent, shared)


def _chains(a: Agents, s: _Sessions, system: Ints, tools: Ints) -> list[list[int]]:
    """Each session's chain ids: its group's, then its agent's, then its own, long enough for
    its last prompt and answer."""
    ids = iter(range(1 << 62))
    groups = [[next(ids) for _ in range(int(n) // BLOCK_TOKENS)] for n in system]
    agents = []
    for agent, n in enumerate(tools):
        group = groups[agent % a.groups]
        whole = (int(system[agent % a.groups]) + int(n)) // BLOCK_TOKENS
        agents.append(group + [next(ids) for _ in range(whole - len(group))])
    last = np.cumsum(s.turns) - 1
    total = (s.prompt[last] + s.output[last]) // BLOCK_TOKENS
    chains = []
    for agent, blocks in zip(s.agent.tolist(), total.tolist(), strict=True):
        own = agents[agent]
        chains.append(own + [next(ids) for _ in range(int(blocks) - len(own))])
    return chains


def session_work(s: _Sessions) -> Floats:
    """Each request's work (decoded-token equivalents) when its agent's shared prompt is cached
    and nothing of its conversation's own text is."""
    shared = np.repeat(s.shared, s.turns)
    return s.output + (s.prompt - shared) / PREFILL_RATIO


def agentic_requests(
    a: Agents, sessions: int, capacity_units_s: float, model: int, seed: int
) -> Requests:
    """``sessions`` sessions starting at random at the rate that puts the fleet (of
    ``capacity_units_s`` at full batch) at ``a.load`` (see the module's docstring)."""
    rng = np.random.default_rng(seed)
    system = rng.integers(a.system_tokens[0], a.system_tokens[1] + 1, a.groups)
    tools = rng.integers(a.tool_tokens[0], a.tool_tokens[1] + 1, a.agents)
    s = _draw_sessions(a, sessions, system, tools, rng)
    rate = a.load * capacity_units_s / (float(session_work(s).sum()) / sessions)
    starts = np.cumsum(rng.exponential(1.0 / rate, sessions))
    n = len(s.prompt)
    first = s.first
    arrival = np.full(n, np.nan)
    arrival[first] = starts
    after = np.arange(n, dtype=np.int64) - 1
    after[first] = -1
    conv = np.repeat(np.arange(sessions, dtype=np.int64), s.turns)
    turns = Turns(
        conv=conv,
        blocks=(s.prompt // BLOCK_TOKENS).astype(np.int64),
        kept=((s.prompt + s.output) // BLOCK_TOKENS).astype(np.int64),
        after=after,
        think=s.think,
        chains=_chains(a, s, system, tools),
    )
    return Requests(
        arrival=arrival,
        model=np.full(n, model, dtype=np.int64),
        tenant=np.zeros(n, dtype=np.int64),
        session=conv,
        prompt=s.prompt,
        output=s.output,
        turns=turns,
    )
