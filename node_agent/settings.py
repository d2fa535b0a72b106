"""The agent's settings: one frozen dataclass, loaded once from TOML, then env, then CLI.

Precedence (last wins): defaults < TOML file (``--config`` / ``NODE_AGENT_CONFIG``) < the seed's
ASP.NET-style variables (``InferenceNode__BackendUrl``, ``InferenceNode__GroupName``,
``InferenceNode__RouterUrl``) < ``NODE_AGENT_<FIELD>`` variables < CLI flags.
"""

from __future__ import annotations

import argparse
import re
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

BACKEND_KIND_CHOICES = ("auto", "ollama", "vllm", "tgi", "triton", "lmstudio", "openai")
GPU_SOURCE_CHOICES = ("auto", "nvml", "emulated", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ENV_PREFIX = "NODE_AGENT_"
# The seed's variables (ASP.NET configuration keys are case-insensitive).
SEED_ENV = {
    "inferencenode__backendurl": "backend_url",
    "inferencenode__groupname": "group",
    "inferencenode__routerurl": "router_urls",
    "inferencenode__routertoken": "router_token",
}
_GROUP_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class SettingsError(ValueError):
    """A setting that is missing, malformed or out of range."""


def _is_http_url(value: str) -> bool:
    return value.startswith(("http://", "https://")) and len(value) > len("https://")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Everything the agent needs, validated at construction."""

    backend_url: str
    backend_kind: str = "auto"
    backend_api_key: str | None = field(default=None, repr=False)
    # Where the backend's Prometheus text is; None: ``{backend_url}/metrics``, or for Triton
    # the same host on its metrics port 8002.
    backend_metrics_url: str | None = None
    router_urls: tuple[str, ...] = ()
    # A DNS name standing for every router replica (e.g. a headless Service), as a URL:
    # the agent registers with each address it resolves to, re-resolving periodically.
    router_dns: str | None = None
    router_dns_interval_s: float = 5.0
    # The router's registration token (sent as a bearer token when registering and reporting).
    router_token: str | None = field(default=None, repr=False)
    group: str = "inference-cluster"
    name: str = field(default_factory=socket.gethostname)
    host: str = "0.0.0.0"
    port: int = 8090
    advertise_url: str | None = None
    gpu_source: str = "auto"
    report_interval_s: float = 1.0
    weight: float = 1.0
    metadata: dict[str, str] = field(default_factory=dict)
    max_parallel: int | None = None
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 300.0
    idle_timeout_s: float = 60.0
    total_timeout_s: float = 1800.0
    control_timeout_s: float = 2.0
    shutdown_timeout_s: float = 30.0
    max_body_bytes: int = 32 * 1024 * 1024
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        # Normalise (frozen: object.__setattr__ is the sanctioned way in __post_init__).
        object.__setattr__(self, "backend_url", self.backend_url.strip().rstrip("/"))
        urls = tuple(u.strip().rstrip("/") for u in self.router_urls if u.strip())
        object.__setattr__(self, "router_urls", urls)
        for key in ("advertise_url", "backend_metrics_url"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, value.strip().rstrip("/"))
        object.__setattr__(self, "log_level", self.log_level.upper())
        object.__setattr__(self, "metadata", {str(k): str(v) for k, v in self.metadata.items()})
        self._validate()

    def _validate(self) -> None:
        if not _is_http_url(self.backend_url):
            raise SettingsError(f"backend_url must be an http(s) URL, got {self.backend_url!r}")
        if self.backend_kind not in BACKEND_KIND_CHOICES:
            raise SettingsError(f"backend_kind must be one of {', '.join(BACKEND_KIND_CHOICES)}")
        if self.gpu_source not in GPU_SOURCE_CHOICES:
            raise SettingsError(f"gpu_source must be one of {', '.join(GPU_SOURCE_CHOICES)}")
        for url in self.router_urls:
            if not _is_http_url(url):
                raise SettingsError(f"router URL must be an http(s) URL, got {url!r}")
        for key in ("advertise_url", "backend_metrics_url"):
            value = getattr(self, key)
            if value is not None and not _is_http_url(value):
                raise SettingsError(f"{key} must be an http(s) URL, got {value!r}")
        if not _GROUP_RE.match(self.group):
            raise SettingsError("group must be 1-64 characters of letters, digits, '.', '_', '-'")
        if not self.name.strip() or len(self.name) > 128:
            raise SettingsError("name must be 1-128 characters")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be in 0..65535, got {self.port}")
        if not 0 < self.weight <= 1000:
            raise SettingsError(f"weight must be in (0, 1000], got {self.weight}")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise SettingsError("max_parallel must be at least 1")
        if self.max_body_bytes < 1024:
            raise SettingsError("max_body_bytes must be at least 1024")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        for key in (
            "report_interval_s",
            "connect_timeout_s",
            "first_byte_timeout_s",
            "idle_timeout_s",
            "total_timeout_s",
            "control_timeout_s",
            "shutdown_timeout_s",
        ):
            value = getattr(self, key)
            if not value > 0:
                raise SettingsError(f"{key} must be positive, got {value}")
        if self.total_timeout_s < max(self.first_byte_timeout_s, self.connect_timeout_s):
            raise SettingsError("total_timeout_s must be at least first_byte_timeout_s")

    @property
    def health_url(self) -> str | None:
        """The agent's own health URL as routers should poll it (known once advertised)."""
        return None if self.advertise_url is None else f"{self.advertise_url}/health"


_FIELD_NAMES = frozenset(f.name for f in fields(AgentSettings))
_INT_FIELDS = frozenset({"port", "max_parallel", "max_body_bytes"})
_FLOAT_FIELDS = frozenset(
    {
        "report_interval_s",
        "router_dns_interval_s",
        "weight",
        "connect_timeout_s",
        "first_byte_timeout_s",
        "idle_timeout_s",
        "total_timeout_s",
        "control_timeout_s",
        "shutdown_timeout_s",
    }
)
_OPTIONAL_FIELDS = frozenset(
    {"advertise_url", "max_parallel", "backend_api_key", "backend_metrics_url"}
)


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse_pairs(items: Sequence[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        for pair in item.split(","):
            if not pair.strip():
                continue
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise SettingsError(f"{where}: expected key=value, got {pair!r}")
            out[key.strip()] = value.strip()
    return out


def _coerce(name: str, value: Any, where: str) -> Any:
    """Turn a TOML value or an environment string into the field's type."""
    if name in _OPTIONAL_FIELDS and (value is None or value == ""):
        return None
    try:
        if name in _INT_FIELDS:
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if name in _FLOAT_FIELDS:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{where}: {name} must be a number, got {value!r}") from exc
    if name == "router_urls":
        if isinstance(value, str):
            return _split_list(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise SettingsError(f"{where}: router_urls must be a list of URLs")
    if name == "metadata":
        if isinstance(value, str):
            return _parse_pairs([value], where)
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        raise SettingsError(f"{where}: metadata must be a table of strings")
    if not isinstance(value, str):
        raise SettingsError(f"{where}: {name} must be a string, got {value!r}")
    return value


def _from_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc
    table = raw.get("node_agent", raw)
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: [node_agent] must be a table")
    unknown = sorted(set(table) - _FIELD_NAMES)
    if unknown:
        raise SettingsError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    return {k: _coerce(k, v, path) for k, v in table.items()}


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        target = SEED_ENV.get(key.lower())
        if target is not None:
            out[target] = _coerce(target, value, key)
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == f"{ENV_PREFIX}CONFIG":
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name == "router_url":
            name = "router_urls"
        if name not in _FIELD_NAMES:
            raise SettingsError(f"unknown environment variable {key}")
        out[name] = _coerce(name, value, key)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The CLI; every flag defaults to 'not given' so only given flags override."""
    p = argparse.ArgumentParser(
        prog="python -m node_agent",
        description="Node agent: thin proxy + load reporter beside an inference backend.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="TOML settings file")
    p.add_argument("--backend-url", dest="backend_url")
    p.add_argument("--backend-kind", dest="backend_kind", choices=BACKEND_KIND_CHOICES)
    p.add_argument("--backend-api-key", dest="backend_api_key")
    p.add_argument(
        "--backend-metrics-url",
        dest="backend_metrics_url",
        help="the backend's Prometheus URL (default: {backend-url}/metrics; Triton: port 8002)",
    )
    p.add_argument("--router-url", dest="router_urls", action="append", help="repeatable")
    p.add_argument(
        "--router-dns", dest="router_dns", help="URL whose host name resolves to every replica"
    )
    p.add_argument("--router-dns-interval", dest="router_dns_interval_s", type=float)
    p.add_argument(
        "--router-token", dest="router_token", help="registration token (better: an env var)"
    )
    p.add_argument("--group")
    p.add_argument("--name")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--advertise-url", dest="advertise_url")
    p.add_argument("--gpu-source", dest="gpu_source", choices=GPU_SOURCE_CHOICES)
    p.add_argument("--report-interval", dest="report_interval_s", type=float)
    p.add_argument("--weight", type=float)
    p.add_argument("--metadata", action="append", help="key=value, repeatable")
    p.add_argument("--max-parallel", dest="max_parallel", type=int)
    p.add_argument("--connect-timeout", dest="connect_timeout_s", type=float)
    p.add_argument("--first-byte-timeout", dest="first_byte_timeout_s", type=float)
    p.add_argument("--idle-timeout", dest="idle_timeout_s", type=float)
    p.add_argument("--total-timeout", dest="total_timeout_s", type=float)
    p.add_argument("--control-timeout", dest="control_timeout_s", type=float)
    p.add_argument("--shutdown-timeout", dest="shutdown_timeout_s", type=float)
    p.add_argument("--max-body-bytes", dest="max_body_bytes", type=int)
    p.add_argument("--log-level", dest="log_level", type=str.upper, choices=LOG_LEVELS)
    return p


def load_settings(argv: Sequence[str], environ: Mapping[str, str]) -> AgentSettings:
    """Build the settings from a TOML file, the environment and CLI flags (CLI wins)."""
    cli = vars(build_parser().parse_args(list(argv)))
    config_path = cli.pop("config", None) or environ.get(f"{ENV_PREFIX}CONFIG")
    merged: dict[str, Any] = {}
    if config_path:
        merged.update(_from_toml(config_path))
    merged.update(_from_env(environ))
    if "router_urls" in cli:
        cli["router_urls"] = tuple(u for item in cli["router_urls"] for u in _split_list(item))
    if "metadata" in cli:
        cli["metadata"] = _parse_pairs(cli["metadata"], "--metadata")
    merged.update(cli)
    if "backend_url" not in merged:
        raise SettingsError(
            "backend_url is required (--backend-url, NODE_AGENT_BACKEND_URL "
            "or InferenceNode__BackendUrl)"
        )
    return AgentSettings(**merged)
