"""The Locust user against a real emulated node: SSE parsing, records, open loop, faults,
and distributed mode (a master and two workers on loopback). Locust runs in subprocesses."""

from __future__ import annotations

from pathlib import Path
from statistics import median

import aiohttp

from bench.emulator.app import RunningEmulator
from bench.loadrun import LocustPlan, empty_records_folder, run_locust
from bench.metrics import load_records
from bench.records import CUT
from tests.bench.conftest import MAX_TOKENS, TOK_S, TTFT_S


def _plan(emulator: RunningEmulator, scenario: Path, records: Path, **kw: object) -> LocustPlan:
    base: dict[str, object] = {
        "host": f"{emulator.url}/v1",
        "scenario": scenario,
        "records": records,
        "users": 2,
        "spawn_rate": 2,
        "duration_s": 3,
        "log": records.parent / "locust.log",
    }
    base.update(kw)
    return LocustPlan(**base)  # type: ignore[arg-type]


class TestLocustUser:
    """Each streamed request leaves a record whose timings match the node's settings."""

    async def test_closed_loop_records(
        self, emulator: RunningEmulator, scenario_file: Path, tmp_path: Path
    ) -> None:
        """TTFT and the last token follow the node's settings (never sooner than the node makes
        them; the medians near them), tokens from usage, headers before the first token, no
        errors. How close the harness gets to the node's figures is the calibration benchmark's
        business. On a busy machine TTFT and the last token only come later; TPOT may even
        shrink (a first token read late, the rest read at once), so it has no lower bound."""
        # 5 s, not 3: on a busy machine Locust's start took most of a 3 s run (2 records).
        plan = _plan(emulator, scenario_file, tmp_path / "rec", duration_s=5)
        result = await run_locust(plan, progress=False)
        assert result.returncodes == (0,)
        records = load_records(tmp_path / "rec")
        assert len(records) >= 5
        rate = TOK_S / (1 + 0.06)  # two streams at once, 7B batch decay
        for rec in records:
            assert rec.error is None, rec.detail
            assert rec.status == 200
            assert (rec.completion_tokens, rec.tokens_from) == (MAX_TOKENS, "usage")
            assert len(rec.token_times) == MAX_TOKENS
            assert rec.ttft_s is not None
            assert rec.ttft_s >= 0.9 * TTFT_S
            assert rec.tpot_s is not None
            assert rec.t_last_token is not None
            assert rec.t_last_token - rec.t_send >= 0.9 * TTFT_S + 0.8 * (MAX_TOKENS - 1) / TOK_S
            assert rec.t_headers is not None
            assert rec.t_first_token is not None
            assert rec.t_headers <= rec.t_first_token  # vLLM sends headers before tokens
        assert median([r.ttft_s for r in records]) < 4 * TTFT_S
        assert median([r.tpot_s for r in records]) < 4 / rate

    async def test_open_loop_logs_dispatch_lag(
        self, emulator: RunningEmulator, scenario_file: Path, tmp_path: Path
    ) -> None:
        """Poisson arrivals at the asked rate, each record carrying its dispatch lag."""
        plan = _plan(emulator, scenario_file, tmp_path / "rec", mode="open", rate=10.0, users=6)
        await run_locust(plan, progress=False)
        records = load_records(tmp_path / "rec")
        assert 10 <= len(records) <= 60
        assert all(r.dispatch_lag_s is not None and r.dispatch_lag_s >= 0 for r in records)

    async def test_cut_stream_is_classed(
        self, emulator: RunningEmulator, scenario_file: Path, tmp_path: Path
    ) -> None:
        """A node that drops the connection mid-stream gives ``cut_mid_stream`` records."""
        async with aiohttp.ClientSession() as session:
            fault = {"mode": "die_mid_stream", "after": 3}
            async with session.post(f"{emulator.url}/_emulator/faults", json=fault) as resp:
                assert resp.status == 200
        await run_locust(_plan(emulator, scenario_file, tmp_path / "rec"), progress=False)
        records = load_records(tmp_path / "rec")
        assert records
        assert {r.error for r in records} == {CUT}
        assert all(len(r.token_times) == 3 for r in records)


class TestDistributed:
    """A master and two workers on loopback drive one run."""

    async def test_master_and_two_workers(
        self, emulator: RunningEmulator, scenario_file: Path, tmp_path: Path
    ) -> None:
        """Both workers send requests and write their own record file."""
        plan = _plan(emulator, scenario_file, tmp_path / "rec", workers=2, users=4, spawn_rate=4)
        result = await run_locust(plan, progress=False)
        assert len(result.returncodes) == 3
        files = sorted((tmp_path / "rec").glob("records-*.jsonl"))
        assert len(files) == 2
        records = load_records(tmp_path / "rec")
        assert len({r.process for r in records}) == 2
        assert all(r.error is None for r in records)


class TestRecordsFolder:
    """A run starts from an empty records folder."""

    def test_old_records_are_dropped(self, tmp_path: Path) -> None:
        """Records of an earlier run in the same folder would mix two runs' figures."""
        (tmp_path / "records-old-1.jsonl").write_text("{}\n")
        (tmp_path / "keep.txt").write_text("x")
        empty_records_folder(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
