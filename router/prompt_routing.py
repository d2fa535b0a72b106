"""One request's prompt as the router routes it on the nodes' prompt caches.

A :class:`PromptRoute` holds the prompt's fingerprint (made once per request), hands the roster
each node's prefill term for it (:mod:`router.prompt_prefixes`), notes where the prompt went (the
node holds its prefix from then on, as this router sees it; the metrics count its characters,
cached or not) and, when the answer's first token comes, teaches the node's prefill rate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from node_protocol.prompt_prefix import BLOCK_CHARS, Fingerprint, fingerprint, is_prompt_path
from router.nodes import Node
from router.prompt_prefixes import PrefixTerms, learn, note_routed
from router.records import RequestRecord
from router.roster import Roster

PREFIX_POLICIES = frozenset({"least_loaded"})  # the policies that weigh the prefill term

# (group, node, cached characters, uncached characters)
PromptChars = Callable[[str, str, int, int], None]


def has_free_slot(roster: Roster, row: int, now: float) -> bool:
    """Whether the row's node has a free slot for one more request, by this router's counts."""
    s = roster.standings[row]
    if s is None:
        return False
    rules = roster.rules
    load = s.load_at(roster.own[row], roster.read_at[row], now, rules.stale_after_s, rules.params)
    return load < s.slots


class PromptRoute:
    """The prompt of one request (see the module doc)."""

    __slots__ = ("_teacher", "fp")

    def __init__(self, fp: Fingerprint) -> None:
        self.fp = fp
        # The node the last pick chose with a free slot and the prompt characters it did not
        # hold: its first token teaches the router the node's prefill rate.
        self._teacher: tuple[Node, int] | None = None

    @classmethod
    def of(
        cls, parsed: dict[str, Any] | None, path: str, policy: str, body_size: int
    ) -> PromptRoute | None:
        """The route of a request's prompt, where ``policy`` weighs it and the path has one.
        ``body_size``: the request body's length in bytes, which bounds the prompt's length in
        characters (its JSON spells out every character of the prompt, and more)."""
        if body_size < BLOCK_CHARS or parsed is None or policy not in PREFIX_POLICIES:
            return None  # a body shorter than one block holds no prompt as long as one
        if not is_prompt_path(path):
            return None
        fp = fingerprint(parsed)
        # A prompt shorter than one block matches no cached block anywhere: every node would
        # get the same prefill, so the pick goes as without the term, at no cost.
        return cls(fp) if fp.chars >= BLOCK_CHARS else None

    def terms(self, roster: Roster) -> PrefixTerms | None:
        """Each node's prefill term for this prompt; None when no node's cache is known."""
        return roster.prompt_terms(self.fp)

    def routed(
        self, roster: Roster, row: int, terms: PrefixTerms | None, now: float,
        count: PromptChars, group: str,
    ) -> None:  # fmt: skip
        """The prompt goes to ``row`` (``terms``: what the pick weighed, if anything)."""
        node = roster.nodes[row]
        note_routed(node, roster.names[row], self.fp)
        held = 0 if terms is None else terms.held(row)
        uncached = self.fp.chars - held
        node.prompt_chars += self.fp.chars
        node.prompt_chars_cached += held
        self._teacher = (node, uncached) if has_free_slot(roster, row, now) else None
        count(group, node.name, held, uncached)

    def teach(self, record: RequestRecord) -> None:
        """The answer is in: learn the node's prefill rate from its first token, when the node
        took the request at once (a free slot, no failover) and the router timed it. The part
        of the prompt the node read is the engine's own count where its answer gave one (its
        prompt and cached tokens, as a share of the prompt's characters), else the router's
        estimate: an estimate that missed a cached prefix would teach a rate far too high."""
        sent, first = record.t_upstream_sent, record.t_first_token
        if self._teacher is None or record.attempts != 1 or sent is None or first is None:
            return
        node, uncached = self._teacher
        prompt, cached = record.prompt_tokens, record.cached_tokens
        if prompt and cached is not None and 0 <= cached <= prompt:
            uncached = round(self.fp.chars * (prompt - cached) / prompt)
        learn(node, uncached, first - sent)
