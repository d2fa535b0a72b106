"""The engines the conformance suite runs against, and what each one cannot do (with why).

Real engines: llama.cpp's ``llama-server`` (two instances, ``--parallel 2``) and
llama-cpp-python's server (two instances, one request at a time), both built by
``bench/llamacpp/build.sh`` and serving a random-weight model the suite writes. Emulated
engines: every face of ``bench.emulator``. Each engine runs as its own process on a fixed port,
so a killed one can be started again where its agent looks for it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.emulator.config import KINDS as EMULATOR_KINDS
from bench.llamacpp import servers
from bench.llamacpp.model import ensure as ensure_model
from bench.llamacpp.servers import EngineProcess

# Behaviours a test may need that not every engine has.
EMBEDDINGS = "embeddings"
SLOTS = "slots endpoint"
STREAM_USAGE = "usage in streams"
CONTEXT_LIMIT = "context limit"
CONTINUES = "continues a cut answer"

EngineFactory = Callable[[int, Path], EngineProcess]


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One engine kind as the suite runs it: how to start an instance and what it lacks."""

    name: str
    model: str
    slots_per_instance: int
    factory: EngineFactory
    instances: int = 2
    lacks: dict[str, str] = field(default_factory=dict)  # behaviour -> why it does not apply
    real: bool = False
    # The status a prompt longer than the context gets: OpenAI's 400, TGI's validation 422.
    context_status: int = 400

    @property
    def fleet_slots(self) -> int:
        return self.slots_per_instance * self.instances


def _llama_server(port: int, log: Path) -> EngineProcess:
    return servers.llama_server(
        ensure_model(), port=port, parallel=2, context=8192, embeddings=True, log_path=log
    )


def _python_server(port: int, log: Path) -> EngineProcess:
    return servers.python_server(
        ensure_model(), port=port, context=4096, embeddings=True, log_path=log
    )


# The emulators run fast and with a context as small as the real engines' (4096 per slot).
EMULATOR_SLOTS = 2
EMULATOR_MODELS = {
    "vllm": "meta-llama/Llama-3.1-8B-Instruct",
    "tgi": "meta-llama/Llama-3.1-8B-Instruct",
    "ollama": "llama3.1:8b",
    "triton": "llama3.1:8b",
    "lmstudio": "llama3.1:8b",
    "llamacpp": "llama3.1:8b",
}


def _emulator(kind: str) -> EngineFactory:
    def start(port: int, log: Path) -> EngineProcess:
        argv = [sys.executable, "-m", "bench.emulator", "--kind", kind]
        argv += ["--model", EMULATOR_MODELS[kind], "--port", str(port)]
        argv += ["--slots", str(EMULATOR_SLOTS), "--tok-s", "400", "--ttft-ms", "10"]
        # llama-server's -c is shared by its slots: each slot gets 4096, as on the real ones.
        context = 4096 * EMULATOR_SLOTS if kind == "llamacpp" else 4096
        argv += ["--load-time-scale", "0.05", "--context-length", str(context)]
        return EngineProcess(f"{kind} emulator", argv, port, "/_emulator/state", log_path=log)

    return start


NO_SLOTS = "only llama.cpp has a /slots endpoint to read a slot's state back from"
EMULATOR_LACKS: dict[str, dict[str, str]] = {
    "vllm": {
        SLOTS: NO_SLOTS,
        EMBEDDINGS: "vLLM serves embeddings only from a pooling model, not a generative one",
    },
    "tgi": {
        SLOTS: NO_SLOTS,
        EMBEDDINGS: "TGI serves no embeddings (that is TEI, a different server)",
    },
    "ollama": {
        SLOTS: NO_SLOTS,
        CONTEXT_LIMIT: "Ollama truncates a prompt to its context instead of refusing it",
    },
    "triton": {
        SLOTS: NO_SLOTS,
        CONTINUES: "Triton's chat template cannot be told to continue an assistant message",
        EMBEDDINGS: "Triton's generate extension has no embeddings",
        CONTEXT_LIMIT: "the Triton emulator models no prompt limit (its model backend's is "
        "not known to the project)",
    },
    "lmstudio": {
        SLOTS: NO_SLOTS,
        CONTINUES: "LM Studio's chat template cannot be told to continue an assistant message",
        CONTEXT_LIMIT: "the LM Studio emulator models no prompt limit (LM Studio's answer to "
        "an over-long prompt is not known to the project)",
    },
    "llamacpp": {},
}

ENGINES: dict[str, EngineSpec] = {
    "llama-server": EngineSpec(
        "llama-server", servers.ALIAS, 2, _llama_server, real=True, lacks={}
    ),
    "llama-cpp-python": EngineSpec(
        "llama-cpp-python",
        servers.ALIAS,
        1,
        _python_server,
        real=True,
        lacks={
            SLOTS: "llama-cpp-python's server has no /slots endpoint",
            STREAM_USAGE: "llama-cpp-python's server ignores stream_options.include_usage",
        },
    ),
    **{
        f"{kind}-emulator": EngineSpec(
            f"{kind}-emulator",
            EMULATOR_MODELS[kind],
            EMULATOR_SLOTS,
            _emulator(kind),
            lacks=EMULATOR_LACKS[kind],
            context_status=422 if kind == "tgi" else 400,
        )
        for kind in EMULATOR_KINDS
        if kind in EMULATOR_MODELS
    },
}


def engines(needs: str | None = None) -> list[object]:
    """Parameters for ``fleet`` (indirect): every engine, the ones lacking ``needs`` skipped
    with the reason they lack it."""
    params: list[object] = []
    for name, spec in ENGINES.items():
        reason = spec.lacks.get(needs) if needs is not None else None
        marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def engines_lacking(behaviour: str) -> list[object]:
    """Parameters for ``fleet`` (indirect): the engines that lack ``behaviour``."""
    return [pytest.param(n, id=n) for n, spec in ENGINES.items() if behaviour in spec.lacks]


def real_engines(*names: str) -> list[object]:
    return [pytest.param(name, id=name) for name in names]
