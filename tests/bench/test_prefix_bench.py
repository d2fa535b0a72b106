"""``python -m bench prefix``: its quick form end to end on real llama-servers behind the real
router, and the summary it builds from the turns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.llamacpp.paths import NotBuiltError, server_binary
from bench.prefix.client import Turn
from bench.prefix.report import add_ratios, summarize
from bench.prefix.workload import QUICK, Settings, conversations
from bench.records import HTTP_5XX, ClientRecord

IN_CI = os.environ.get("CI", "") not in ("", "0", "false")
NODES = ["llama-1", "llama-2", "llama-3"]
ROW_KEYS = {
    "policy", "runs", "requests", "failed", "errors", "prompt_tokens", "cached_tokens",
    "cached_share", "missing_cache_counts", "first_turn_ttft_p50_ms", "later_ttft_p50_ms",
    "later_ttft_p99_ms", "later_ttft_p50_ms_by_run", "later_stayed", "cached_turns",
    "cached_turn_ttft_p50_ms", "node_requests", "busiest_over_mean", "vs_round_robin",
}  # fmt: skip


def _built() -> None:
    try:
        server_binary()
    except NotBuiltError as exc:
        if IN_CI:
            pytest.fail(f"{exc}; CI is set, so this must not be skipped", pytrace=False)
        pytest.skip(str(exc))


@pytest.mark.slow
def test_the_quick_run_serves_every_turn_and_reports_each_policy(tmp_path: Path) -> None:
    """Two policies, each on a fresh fleet of three real llama-servers: every turn answered,
    the engines' cached-token counts read from every answer, the JSON written and printed, and
    the server flags asked for given to every server (here a log level each one logs)."""
    _built()
    started = time.perf_counter()
    argv = ["prefix", "--quick", "--json", "--server-flags", "-lv 4", "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    print(proc.stderr[-2000:], f"({time.perf_counter() - started:.1f} s)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report == json.loads((tmp_path / "prefix.json").read_text())
    assert [row["policy"] for row in report["policies"]] == ["round_robin", "least_loaded"]
    turns = QUICK.conversations * QUICK.turns
    assert report["cold_probe"]["prompt_tokens"] > 1000
    for row in report["policies"]:
        assert set(row) == ROW_KEYS
        assert (row["runs"], row["requests"], row["failed"]) == (1, turns, 0), row
        assert row["missing_cache_counts"] == 0
        # Every prompt opens with the same template tokens: some later prompt on the same
        # server finds them cached.
        assert 0 < row["cached_tokens"] < row["prompt_tokens"]
        assert sum(row["node_requests"].values()) == turns
        assert set(row["node_requests"]) == set(NODES)
        lines = (tmp_path / row["policy"] / "run-1" / "turns.jsonl").read_text().splitlines()
        assert len(lines) == turns
    assert report["policies"][0]["vs_round_robin"]["later_ttft_p50_ms"] == 1.0
    assert report["server_flags"] == ["-lv", "4"]
    logs = sorted(tmp_path.glob("*/run-1/llama-*.engine.log"))
    assert len(logs) == 2 * len(NODES)
    assert all("verbosity = 4" in log.read_text(errors="replace") for log in logs)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--policies", "round_robin,fastest"], "fastest"),  # a policy the router does not have
        (["--server-flags", "-a 'b"], "quotation"),  # server flags with an unclosed quote
    ],
    ids=["unknown-policy", "unparsed-server-flags"],
)
def test_bad_arguments_are_refused_before_anything_starts(
    tmp_path: Path, flags: list[str], said: str
) -> None:
    """Exit 2 saying what is wrong, no fleet started, nothing written."""
    argv = ["prefix", *flags, "--out", str(tmp_path / "out")]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert said in proc.stderr
    assert not (tmp_path / "out").exists()


def _turn(
    turn: int, node: str | None, ttft_s: float | None, cached: int | None, conversation: int = 0
) -> Turn:
    rec = ClientRecord("tiny", "url", 8, 0.0, 0.0, prompt_tokens=100, node=node)
    if ttft_s is None:
        rec.error = HTTP_5XX
    else:
        rec.t_first_token = ttft_s
    return Turn(conversation, 0, turn, rec, cached)


def test_the_summary_pools_runs_and_counts_only_served_turns() -> None:
    """Cached share and TTFTs from the answered turns only (a failed one counts as failed),
    the first turn apart from the later ones, the busiest node per run then averaged."""
    runs = [
        [_turn(1, "llama-1", 0.5, 10), _turn(2, "llama-1", 0.1, 90), _turn(3, None, None, None)],
        [_turn(1, "llama-2", 0.7, 0), _turn(2, "llama-3", 0.3, 50)],
    ]
    row = summarize("round_robin", runs, NODES)
    assert (row["requests"], row["failed"], row["errors"]) == (5, 1, {HTTP_5XX: 1})
    assert (row["prompt_tokens"], row["cached_tokens"], row["cached_share"]) == (400, 150, 0.375)
    assert row["first_turn_ttft_p50_ms"] == 600.0
    assert row["later_ttft_p50_ms_by_run"] == [100.0, 300.0]
    assert row["node_requests"] == {"llama-1": 2, "llama-2": 1, "llama-3": 1}
    # run 1: 2 of a mean 2/3 -> 3.0; run 2: 1 of a mean 2/3 -> 1.5
    assert row["busiest_over_mean"] == 2.25


def test_ratios_are_to_round_robin_and_absent_without_it() -> None:
    """Each policy's later-turn TTFT and cached share as a multiple of round robin's; none
    when round robin did not run."""
    rr = summarize("round_robin", [[_turn(2, "llama-1", 0.2, 50)]], NODES)
    ll = summarize("least_loaded", [[_turn(2, "llama-2", 0.1, 75)]], NODES)
    add_ratios([rr, ll])
    assert ll["vs_round_robin"] == {
        "later_ttft_p50_ms": 0.5,
        "later_ttft_p99_ms": 0.5,
        "cached_share": 1.5,
        "cached_turn_ttft_p50_ms": None,  # no later turn had 90% of its prompt cached
    }
    alone = summarize("least_loaded", [[_turn(2, "llama-2", 0.1, 75)]], NODES)
    add_ratios([alone])
    assert set(alone["vs_round_robin"].values()) == {None}


def test_cached_turns_and_turns_that_stayed_are_counted_per_conversation() -> None:
    """A later turn with 90% of its prompt cached is a cached turn (its median against round
    robin's later median is the floor of that ratio); a turn stays when its conversation's
    previous turn, in the same run, was served by the same node."""
    rr = summarize("round_robin", [[_turn(2, "llama-1", 0.2, 50)]], NODES)
    run = [
        _turn(1, "llama-1", 0.5, 0, conversation=1),
        _turn(2, "llama-1", 0.04, 95, conversation=1),  # stayed, cached
        _turn(3, "llama-2", 0.3, 30, conversation=1),  # moved
        _turn(1, "llama-2", 0.5, 0, conversation=2),
        _turn(2, "llama-2", 0.06, 90, conversation=2),  # stayed, cached
        _turn(3, None, None, None, conversation=2),  # failed: neither
        _turn(4, "llama-2", 0.2, 89, conversation=2),  # after a failure: not stayed, not cached
    ]
    ll = summarize("least_loaded", [run], NODES)
    add_ratios([rr, ll])
    assert (ll["later_stayed"], ll["cached_turns"], ll["cached_turn_ttft_p50_ms"]) == (2, 2, 50.0)
    assert ll["vs_round_robin"]["cached_turn_ttft_p50_ms"] == 0.25


def test_every_policy_replays_the_same_conversations() -> None:
    """One seed, one script: the same system prompts (a few, shared), messages and pauses."""
    s = Settings(conversations=6, turns=2, seed=7)
    first, again = conversations(s), conversations(s)
    assert first == again
    assert len({c.system for c in first}) == 4
    assert first != conversations(Settings(conversations=6, turns=2, seed=8))
    assert all(0 <= p <= s.max_think_s for c in first for p in c.pauses_s)
