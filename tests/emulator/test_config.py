"""EmulatorConfig: validation at start and the defaults it derives."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.emulator import EmulatorConfig

from .conftest import VLLM_MODEL


class TestValidation:
    """Bad settings fail at construction with a message that names the problem."""

    def test_unknown_model_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"unknown model.*no-such-model"):
            EmulatorConfig(kind="ollama", models=("no-such-model",))

    def test_vllm_serves_exactly_one_model(self) -> None:
        with pytest.raises(ValueError, match="exactly one model"):
            EmulatorConfig(kind="vllm", models=("llama3.1:8b", "mistral:7b"))

    @pytest.mark.parametrize(
        ("kind", "overrides", "message"),
        [
            ("tgi", {"models": ("llama3.1:8b", "mistral:7b")}, "tgi serves exactly one model"),
            ("lmstudio", {"max_queue": 4}, "lmstudio has no request queue limit"),
            ("ollama", {"jit": False}, "jit is an lmstudio option"),
            ("triton", {"models": (VLLM_MODEL,)}, "triton model names"),
        ],
    )
    def test_backend_specific_rules(
        self, kind: str, overrides: dict[str, object], message: str
    ) -> None:
        settings: dict[str, object] = {"kind": kind, "models": ("llama3.1:8b",), **overrides}
        with pytest.raises(ValueError, match=message):
            EmulatorConfig(**settings)  # type: ignore[arg-type]

    def test_unknown_kind_is_refused(self) -> None:
        with pytest.raises(ValueError, match="kind must be one of"):
            EmulatorConfig(kind="nope", models=("llama3.1:8b",))

    def test_model_larger_than_the_gpus_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"llama3\.1:70b.*48 GiB over 2 GPU"):
            EmulatorConfig(kind="ollama", models=("llama3.1:70b",), gpu_memory_gb=(80.0,))

    def test_multi_gpu_model_fits_when_split(self) -> None:
        config = EmulatorConfig(kind="vllm", models=("llama3.1:70b",), gpu_memory_gb=(24.0, 24.0))
        assert config.start_loaded == ("llama3.1:70b",)

    @pytest.mark.parametrize(
        ("field", "value"),
        [("tok_s", 0.0), ("slots", 0), ("ttft_s", -1.0), ("max_queue", -1), ("gpu_memory_gb", ())],
    )
    def test_out_of_range_numbers_are_refused(self, field: str, value: object) -> None:
        with pytest.raises(ValueError, match=field):
            EmulatorConfig(kind="ollama", models=("llama3.1:8b",), **{field: value})  # type: ignore[arg-type]

    def test_preload_must_name_served_models(self) -> None:
        with pytest.raises(ValueError, match="preload names models not served"):
            EmulatorConfig(kind="ollama", models=("llama3.1:8b",), preload=("mistral:7b",))


class TestDefaults:
    """Defaults follow the backend emulated and the capacity table."""

    def test_preload_takes_all_models_that_fit_in_order(self) -> None:
        config = EmulatorConfig(
            kind="ollama", models=("llama3.1:8b", "codellama:34b", "mistral:7b")
        )
        assert config.start_loaded == ("llama3.1:8b", "mistral:7b")

    def test_explicit_empty_preload_starts_cold(self) -> None:
        config = EmulatorConfig(kind="ollama", models=("llama3.1:8b",), preload=())
        assert config.start_loaded == ()

    def test_queue_limit_is_ollamas_512_and_unbounded_on_vllm(self) -> None:
        assert EmulatorConfig(kind="ollama", models=("llama3.1:8b",)).queue_limit == 512
        assert EmulatorConfig(kind="vllm", models=(VLLM_MODEL,)).queue_limit is None
        assert EmulatorConfig(kind="vllm", models=(VLLM_MODEL,), max_queue=3).queue_limit == 3

    def test_backend_defaults(self) -> None:
        tgi = EmulatorConfig(kind="tgi", models=(VLLM_MODEL,))
        assert (tgi.queue_limit, tgi.policy.queue_scope) == (128, "in_flight")
        lms = EmulatorConfig(kind="lmstudio", models=("llama3.1:8b",))
        assert (lms.policy.keep_alive_s, lms.policy.on_demand, lms.queue_limit) == (
            3600.0,
            True,
            None,
        )
        ollama = EmulatorConfig(kind="ollama", models=("llama3.1:8b",))
        assert ollama.policy.keep_alive_s == 300.0
        triton = EmulatorConfig(kind="triton", models=("llama3.1:8b", "codellama:34b"))
        assert (triton.policy.on_demand, triton.policy.evict) == (False, "none")
        assert triton.start_loaded == ("llama3.1:8b",)  # the 34b does not fit beside it

    def test_version_defaults_per_kind(self) -> None:
        assert EmulatorConfig(kind="vllm", models=(VLLM_MODEL,)).version == "0.11.0"
        assert EmulatorConfig(kind="ollama", models=("llama3.1:8b",)).version == "0.12.6"

    def test_capacity_file_can_be_replaced(self, capacity_file: Path) -> None:
        config = EmulatorConfig(kind="ollama", models=("steep",), capacity_file=capacity_file)
        assert config.specs[0].cls.batch_decay == 1.0
