"""A benchmark scenario (``bench/scenarios/NAME.toml``), validated once when loaded.

A scenario names the cluster to start (a spec in ``bench/clusters/``), the capacity spec its
targets come from (``capacity``, default ``bench/capacity.toml``, the table the emulator also
reads; a run against real engines names a spec of its own), the load (closed loop:
``users`` streams with no wait; open loop: Poisson arrivals at ``rate`` per second), the warm-up
and steady window, the weighted mix of models and prompt / output lengths, the SLOs used for
goodput, the calibration run and the checks that decide pass or fail.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCENARIO_DIR = Path(__file__).parent / "scenarios"
CLUSTER_DIR = Path(__file__).parent / "clusters"
CAPACITY_FILE = Path(__file__).parent / "capacity.toml"
MODES = ("closed", "open")
APIS = ("chat", "completions")


class ScenarioError(ValueError):
    """A scenario file that cannot be run as written."""


def _span(value: Any, where: str) -> tuple[int, int]:
    """An int or a ``[low, high]`` pair (inclusive, drawn uniformly)."""
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        low, high = value
    else:
        raise ScenarioError(f"{where} must be an integer or a [low, high] pair")
    if not 1 <= low <= high:
        raise ScenarioError(f"{where} must satisfy 1 <= low <= high")
    return low, high


@dataclass(frozen=True, slots=True)
class MixEntry:
    """One kind of request in the mix, drawn with probability ``weight / total``."""

    name: str
    model: str
    weight: float
    prompt_tokens: tuple[int, int]
    max_tokens: tuple[int, int]
    api: str = "chat"
    capacity_class: str | None = None

    @classmethod
    def from_toml(cls, row: dict[str, Any], index: int) -> MixEntry:
        where = f"[[mix]] #{index + 1}"
        if not isinstance(row.get("model"), str):
            raise ScenarioError(f"{where}: 'model' is required")
        weight = float(row.get("weight", 1.0))
        if weight <= 0:
            raise ScenarioError(f"{where}: weight must be positive")
        api = str(row.get("api", "chat"))
        if api not in APIS:
            raise ScenarioError(f"{where}: api must be one of {', '.join(APIS)}")
        model = str(row["model"])
        return cls(
            name=str(row.get("name", f"{api} {model}")),
            model=model,
            weight=weight,
            prompt_tokens=_span(row.get("prompt_tokens", 64), f"{where} prompt_tokens"),
            max_tokens=_span(row.get("max_tokens", 64), f"{where} max_tokens"),
            api=api,
            capacity_class=row.get("class"),
        )


@dataclass(frozen=True, slots=True)
class Load:
    """How requests are sent: ``users`` at most in flight; ``rate`` req/s in open loop."""

    mode: str = "closed"
    users: int = 8
    spawn_rate: float = 8.0
    rate: float | None = None
    duration_s: float = 60.0
    warmup_s: float = 10.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ScenarioError(f"[load] mode must be one of {', '.join(MODES)}")
        if self.users < 1 or self.spawn_rate <= 0:
            raise ScenarioError("[load] users and spawn_rate must be positive")
        if self.mode == "open" and (self.rate is None or self.rate <= 0):
            raise ScenarioError("[load] open loop needs a positive rate (requests/s)")
        if self.duration_s <= 0 or not 0 <= self.warmup_s < self.duration_s:
            raise ScenarioError("[load] need duration_s > 0 and 0 <= warmup_s < duration_s")


@dataclass(frozen=True, slots=True)
class Slo:
    """Per-request objectives; a request meeting all three counts toward goodput."""

    ttft_s: float = 2.0
    tpot_s: float = 0.2
    e2e_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Calibration:
    """A known emulated node the harness must measure back within ``tolerance``."""

    enabled: bool = True
    model: str = "llama3.1:8b"
    tok_s: float = 50.0
    ttft_ms: float = 200.0
    users: int = 4
    max_tokens: int = 32
    duration_s: float = 12.0
    warmup_s: float = 2.0
    tolerance: float = 0.10


@dataclass(frozen=True, slots=True)
class Checks:
    """What else must hold: no errors, and a fair share for every node serving a model."""

    max_error_rate: float = 0.0
    min_node_share: float = 0.0


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    cluster: Path | None
    load: Load
    mix: tuple[MixEntry, ...]
    slo: Slo
    calibration: Calibration
    checks: Checks
    force_length: bool = True
    capacity: Path = CAPACITY_FILE

    @classmethod
    def from_toml(cls, path: Path) -> Scenario:
        try:
            data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ScenarioError(f"cannot read scenario {path}: {exc}") from exc
        mix = tuple(MixEntry.from_toml(row, i) for i, row in enumerate(data.get("mix", [])))
        if not mix:
            raise ScenarioError(f"{path}: a scenario needs at least one [[mix]] entry")
        cluster = data.get("cluster")
        capacity = _capacity_path(str(data.get("capacity", CAPACITY_FILE)))
        if not capacity.is_file():
            raise ScenarioError(f"{path}: capacity spec {capacity} does not exist")
        try:
            return cls(
                name=str(data.get("name", path.stem)),
                description=str(data.get("description", "")),
                cluster=None if cluster is None else _cluster_path(str(cluster)),
                load=Load(**data.get("load", {})),
                mix=mix,
                slo=Slo(**data.get("slo", {})),
                calibration=Calibration(**data.get("calibration", {})),
                checks=Checks(**data.get("checks", {})),
                force_length=bool(data.get("force_length", True)),
                capacity=capacity,
            )
        except TypeError as exc:
            raise ScenarioError(f"{path}: {exc}") from exc

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(entry.model for entry in self.mix))


def _cluster_path(name: str) -> Path:
    path = Path(name)
    return path if path.suffix == ".toml" else CLUSTER_DIR / f"{name}.toml"


def _capacity_path(name: str) -> Path:
    """A capacity spec by path, or by name in ``bench/`` (``capacity-tiny``)."""
    path = Path(name)
    if path.is_absolute() or path.is_file():
        return path
    return CAPACITY_FILE.parent / (name if path.suffix == ".toml" else f"{name}.toml")


def scenario_path(name: str) -> Path:
    """A scenario by name (``bench/scenarios/NAME.toml``) or by path."""
    path = Path(name)
    if path.suffix == ".toml":
        return path
    return SCENARIO_DIR / f"{name}.toml"


def load_scenario(name: str) -> Scenario:
    path = scenario_path(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")))
        raise ScenarioError(f"no scenario {name!r} ({path}); known: {known}")
    return Scenario.from_toml(path)
