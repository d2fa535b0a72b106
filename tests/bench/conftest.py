"""A real emulated node on port 0 and a one-entry scenario file for the Locust runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.emulator.app import RunningEmulator, serve
from bench.emulator.config import EmulatorConfig

MODEL = "llama3.1:8b"
TOK_S = 100.0
TTFT_S = 0.05
MAX_TOKENS = 8


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    config = EmulatorConfig(kind="vllm", models=(MODEL,), tok_s=TOK_S, ttft_s=TTFT_S, slots=8)
    async with serve(config) as running:
        yield running


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(
        f'[load]\nusers = 2\nduration_s = 3\nwarmup_s = 0.5\n[[mix]]\nmodel = "{MODEL}"\n'
        f"prompt_tokens = 8\nmax_tokens = {MAX_TOKENS}\n",
        encoding="utf-8",
    )
    return path
