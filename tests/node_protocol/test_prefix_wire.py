"""The prompt-cache summary in the load report: optional, bounded, and read back as sent."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_protocol.prompt_prefix import SCHEME, fingerprint, recorded_hashes
from node_protocol.wire import (
    MAX_PREFIX_HASHES,
    MAX_PREFIX_MODELS,
    LoadReport,
    ModelReport,
    PrefixSummary,
    WireError,
)

HASHES = st.frozensets(st.integers(min_value=0, max_value=2**64 - 1), max_size=600)


def report(**extra: Any) -> LoadReport:
    return LoadReport(
        seq=3,
        sent_at=1700000000.5,
        backend_kind="vllm",
        backend_health="ok",
        in_flight=2,
        models=(ModelReport(id="llama-3.1-8b", loaded=True, aliases=("llama",)),),
        **extra,
    )


def summary(hashes: frozenset[int] = frozenset({1, 2**64 - 1}), **extra: Any) -> PrefixSummary:
    fields: dict[str, Any] = {
        "model": "llama-3.1-8b",
        "scheme": SCHEME,
        "hashes": hashes,
        "capacity_chars": 4_000_000,
        "used_chars": 12_288,
        "engine_cached_ratio": 0.625,
    }
    fields.update(extra)
    return PrefixSummary(**fields)


class TestRoundTrip:
    """What the agent sends is what the router reads."""

    @given(HASHES, st.none() | st.floats(min_value=0, max_value=1))
    @settings(max_examples=100, deadline=None)
    def test_summary_round_trips_through_json(
        self, hashes: frozenset[int], ratio: float | None
    ) -> None:
        """Any set of 64-bit hashes and ratio survive to_json, JSON bytes and from_json."""
        sent = report(prefix_caches=(summary(hashes, engine_cached_ratio=ratio),))
        read = LoadReport.from_json(orjson.loads(orjson.dumps(sent.to_json())))
        assert read == sent

    def test_report_without_prefix_caches_still_parses(self) -> None:
        """An older agent's report (no prefixCaches key) reads as having no summaries."""
        body = report().to_json()
        del body["prefixCaches"]
        assert LoadReport.from_json(body).prefix_caches == ()

    def test_hashes_travel_as_compact_base64(self) -> None:
        """512 hashes take 8 bytes each before base64, not a JSON number each."""
        hashes = frozenset(range(10**18, 10**18 + 512))
        packed = summary(hashes).to_json()["hashes"]
        assert isinstance(packed, str)
        assert len(base64.b64decode(packed)) == 512 * 8

    def test_summaries_are_found_by_model_id_and_alias(self) -> None:
        """The router finds a model's summary under its id and every alias."""
        sent = summary()
        found = report(prefix_caches=(sent,)).prefix_caches_by_name()
        assert found == {"llama-3.1-8b": sent, "llama": sent}


class TestQuery:
    """A summary answers how much of a prompt the node likely holds."""

    def test_summary_covers_a_prompt_it_recorded(self) -> None:
        """A summary holding a prompt's recorded hashes covers the whole prompt."""
        fp = fingerprint({"messages": [{"role": "user", "content": "x" * 3000}]})
        held = summary(frozenset(recorded_hashes(fp)))
        assert held.prefix_chars(fp) == fp.chars

    def test_summary_of_another_scheme_covers_nothing(self) -> None:
        """Hashes made under another fingerprint scheme are not compared."""
        fp = fingerprint({"messages": [{"role": "user", "content": "x" * 3000}]})
        held = summary(frozenset(recorded_hashes(fp)), scheme="sha1-256-v0")
        assert held.prefix_chars(fp) == 0


class TestBounds:
    """A report's summaries are bounded and checked."""

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"hashes": "not base64!"}, "not base64"),
            ({"hashes": base64.b64encode(b"123").decode()}, "whole 8-byte"),
            (
                {"hashes": base64.b64encode(bytes(8 * (MAX_PREFIX_HASHES + 1))).decode()},
                "more than",
            ),
            ({"usedChars": -1}, "negative"),
            ({"engineCachedRatio": 1.5}, "engineCachedRatio"),
            ({"scheme": None}, "scheme"),
        ],
    )
    def test_a_bad_summary_is_refused(self, change: dict[str, Any], message: str) -> None:
        """Malformed, oversized or out-of-range summaries raise WireError naming the fault."""
        body = report(prefix_caches=(summary(),)).to_json()
        body["prefixCaches"][0].update(change)
        with pytest.raises(WireError, match=message):
            LoadReport.from_json(body)

    def test_too_many_models_are_refused(self) -> None:
        """More summaries than MAX_PREFIX_MODELS is not a report."""
        body = report().to_json()
        body["prefixCaches"] = [summary(model=f"m{i}").to_json() for i in range(65)]
        assert len(body["prefixCaches"]) > MAX_PREFIX_MODELS
        with pytest.raises(WireError, match="prefixCaches"):
            LoadReport.from_json(body)
