"""The instruction-count benchmark reads callgrind's dumps and forms its ratios right."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.instructions import ratios, totals

# The head and tail of a dump callgrind_control --dump wrote (the body's cost lines elided):
# the summary at the top says 0, the totals at the end hold the count.
DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
cmd:  python -m router --config router.toml
part: 1

desc: Trigger: dump

positions: line
events: Ir
summary: 0


fn=(1178) sock_initobj
11 126
0 2670

totals: 183821844
"""


def test_a_dump_on_request_is_read_by_its_totals_not_its_zero_summary(tmp_path: Path) -> None:
    dump = tmp_path / "router.callgrind.1"
    dump.write_text(DUMP)
    assert totals(dump) == 183_821_844


def test_a_dump_with_only_a_summary_is_read_by_it(tmp_path: Path) -> None:
    dump = tmp_path / "router.callgrind"
    dump.write_text(DUMP.replace("summary: 0", "summary: 5000").replace("totals: 183821844", ""))
    assert totals(dump) == 5000


def test_a_file_without_counts_is_refused(tmp_path: Path) -> None:
    dump = tmp_path / "empty"
    dump.write_text("# callgrind format\nversion: 1\n")
    with pytest.raises(ValueError, match="no totals"):
        totals(dump)


def test_ratios_are_16_nodes_over_1_and_router_over_baseline() -> None:
    counts = {
        "router": {"short 1 node": 700.0, "short 16 nodes": 770.0,
                   "stream16 1 node": 960.0, "stream16 16 nodes": 1040.0},
        "baseline": {"short 1 node": 630.0, "short 16 nodes": 1400.0,
                     "stream16 1 node": 690.0, "stream16 16 nodes": 1380.0},
    }  # fmt: skip
    got = ratios(counts)
    assert got["router: short 16 nodes / 1 node"] == 1.1
    assert got["baseline: stream16 16 nodes / 1 node"] == 2.0
    assert got["router / baseline: short 16 nodes"] == 0.55
    assert got["router / baseline: stream16 1 node"] == pytest.approx(960 / 690, abs=1e-3)
