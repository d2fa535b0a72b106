"""Router settings: frozen dataclasses loaded once at start.

Precedence: TOML file (``--config`` or ``ROUTER_CONFIG``) < environment (``ROUTER_*``) < CLI
flags. Invalid values fail at start with a message naming the setting.
"""

from __future__ import annotations

import argparse
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from router.auth import ApiKey, digest, load_key_file
from router.scheduling import POLICIES

RESERVED_GROUP_NAMES = frozenset({"api", "v1", "health", "ready", "metrics", "dashboard"})


class SettingsError(ValueError):
    """A setting with a value the router cannot run with."""


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise SettingsError(f"{name} must be > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Bounds on every call to a node. ``idle_s`` applies between chunks and while waiting for
    headers, so the effective first-byte bound is ``min(first_byte_s, idle_s)``."""

    connect_s: float = 3.0
    first_byte_s: float = 120.0
    idle_s: float = 120.0
    total_s: float = 900.0

    def __post_init__(self) -> None:
        for f in fields(self):
            _positive(f"timeouts.{f.name}", getattr(self, f.name))


@dataclass(frozen=True, slots=True)
class StaticNode:
    """A node declared in config, with no agent: the router polls its health and models."""

    name: str
    base_url: str
    health_url: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise SettingsError(f"node {self.name!r}: base_url must be an http(s) URL")
        _positive(f"node {self.name!r} weight", self.weight)


@dataclass(frozen=True, slots=True)
class GroupSettings:
    name: str
    policy: str = "least_loaded"
    nodes: tuple[StaticNode, ...] = ()
    timeouts: Timeouts | None = None  # None: the router-wide timeouts

    def __post_init__(self) -> None:
        check_group_name(self.name)
        if self.policy not in POLICIES:
            raise SettingsError(f"group {self.name!r}: policy must be one of {', '.join(POLICIES)}")


def check_group_name(name: str) -> None:
    if not name or len(name) > 64 or name in RESERVED_GROUP_NAMES:
        raise SettingsError(f"invalid group name {name!r}")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise SettingsError(f"group name {name!r} may hold only letters, digits, '-', '_', '.'")


@dataclass(frozen=True, slots=True)
class RouterSettings:
    host: str = "0.0.0.0"
    port: int = 8080
    default_group: str = "inference-cluster"
    default_policy: str = "least_loaded"
    groups: tuple[GroupSettings, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_body_bytes: int = 8 * 1024 * 1024
    max_attempts: int = 3
    report_interval_s: float = 1.0
    failure_threshold: int = 3
    health_interval_s: float = 5.0
    # A registered node not heard from for this long (no report, poll or registration) is
    # removed, with its metric series; nodes declared in config stay.
    node_expiry_s: float = 600.0
    shutdown_grace_s: float = 30.0
    retry_after_s: int = 2
    log_format: str = "auto"
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Security (secrets as SHA-256 digests; plain values only from the environment).
    api_keys: tuple[ApiKey, ...] = ()
    registration_token_sha256: tuple[str, ...] = ()
    admin_token_sha256: str | None = None
    registration_allowlist: tuple[str, ...] = ()
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Limits.
    max_messages: int = 2048
    max_n: int = 16
    max_output_tokens: int = 262_144
    max_header_bytes: int = 16_384
    client_header_timeout_s: float = 10.0
    client_body_timeout_s: float = 30.0
    slow_client_timeout_s: float = 30.0
    # Admission: a node takes at most cap_factor x its model's parallel slots (where known);
    # past that, requests wait in a fair per-group-and-model queue of at most queue_max, for at
    # most queue_wait_s (then 429 / 503 with Retry-After). tenant_weights share freed slots.
    cap_factor: float = 2.0
    queue_max: int = 256
    queue_wait_s: float = 30.0
    tenant_weights: dict[str, float] = field(default_factory=dict)
    # How many router replicas share the nodes (each claims its share of reported free slots).
    router_replicas: int = 1
    router_id: str = field(default_factory=socket.gethostname)
    # How long a fresh replica waits to hear from agents before it is ready and before an
    # unknown model is a 404 (503 until then); None: three report intervals.
    warmup_s: float | None = None
    upstream_ca_file: str | None = None
    tenant_requests_per_minute: int = 0
    tenant_tokens_per_minute: int = 0

    def __post_init__(self) -> None:
        check_group_name(self.default_group)
        if self.default_policy not in POLICIES:
            raise SettingsError(f"default_policy must be one of {', '.join(POLICIES)}")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0-65535, got {self.port}")
        if self.max_attempts < 1:
            raise SettingsError("max_attempts must be at least 1")
        if self.failure_threshold < 1:
            raise SettingsError("failure_threshold must be at least 1")
        if self.max_body_bytes < 1024:
            raise SettingsError("max_body_bytes must be at least 1024")
        for name in (
            "report_interval_s",
            "health_interval_s",
            "shutdown_grace_s",
            "client_header_timeout_s",
            "client_body_timeout_s",
            "slow_client_timeout_s",
        ):
            _positive(name, getattr(self, name))
        if not self.node_expiry_s > self.report_interval_s:
            raise SettingsError("node_expiry_s must be longer than report_interval_s")
        if self.log_format not in ("auto", "json", "text"):
            raise SettingsError("log_format must be auto, json or text")
        if not self.cap_factor > 0 or self.queue_max < 0 or not self.queue_wait_s > 0:
            raise SettingsError("cap_factor and queue_wait_s must be > 0, queue_max >= 0")
        if self.router_replicas < 1:
            raise SettingsError("router_replicas must be at least 1")
        if any(not w > 0 for w in self.tenant_weights.values()):
            raise SettingsError("tenant_weights must be > 0")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise SettingsError("tls_cert_file and tls_key_file go together")
        for name in ("max_messages", "max_n", "max_output_tokens", "max_header_bytes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1")
        hexdigests = (*self.registration_token_sha256, *(k.sha256 for k in self.api_keys))
        if self.admin_token_sha256 is not None:
            hexdigests = (*hexdigests, self.admin_token_sha256)
        for value in hexdigests:
            if len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
                raise SettingsError("secrets in settings must be lowercase SHA-256 hex digests")

    @property
    def warmup(self) -> float:
        return 3 * self.report_interval_s if self.warmup_s is None else self.warmup_s

    def timeouts_for(self, group: str) -> Timeouts:
        settings = self.group(group)
        return settings.timeouts if settings and settings.timeouts else self.timeouts

    def group(self, name: str) -> GroupSettings | None:
        for g in self.groups:
            if g.name == name:
                return g
        return None


_SCALARS: dict[str, type] = {
    "host": str,
    "port": int,
    "default_group": str,
    "default_policy": str,
    "max_body_bytes": int,
    "max_attempts": int,
    "report_interval_s": float,
    "failure_threshold": int,
    "health_interval_s": float,
    "node_expiry_s": float,
    "shutdown_grace_s": float,
    "retry_after_s": int,
    "log_format": str,
    "tls_cert_file": str,
    "tls_key_file": str,
    "max_messages": int,
    "max_n": int,
    "max_output_tokens": int,
    "max_header_bytes": int,
    "client_header_timeout_s": float,
    "client_body_timeout_s": float,
    "slow_client_timeout_s": float,
    "warmup_s": float,
    "cap_factor": float,
    "queue_max": int,
    "queue_wait_s": float,
    "router_replicas": int,
    "router_id": str,
    "upstream_ca_file": str,
    "tenant_requests_per_minute": int,
    "tenant_tokens_per_minute": int,
}
_LISTS = ("registration_token_sha256", "registration_allowlist")


def _coerce(name: str, kind: type, raw: Any) -> Any:
    try:
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{name}: cannot read {raw!r} as {kind.__name__}") from exc


def _from_toml(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind in _SCALARS.items():
        if key in data:
            out[key] = _coerce(key, kind, data[key])
    if "timeouts" in data:
        t = data["timeouts"]
        out["timeouts"] = Timeouts(**{k: float(v) for k, v in t.items()})
    groups = []
    for g in data.get("groups", []):
        nodes = tuple(
            StaticNode(
                name=str(n["name"]),
                base_url=str(n["base_url"]).rstrip("/"),
                health_url=n.get("health_url"),
                weight=float(n.get("weight", 1.0)),
            )
            for n in g.get("nodes", [])
        )
        groups.append(
            GroupSettings(
                name=str(g["name"]), policy=str(g.get("policy", "least_loaded")), nodes=nodes
            )
        )
    if groups:
        out["groups"] = tuple(groups)
    if "tenant_weights" in data:
        out["tenant_weights"] = {str(k): float(v) for k, v in data["tenant_weights"].items()}
    if "aliases" in data:
        table = data["aliases"]
        if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
            raise SettingsError("[aliases] maps a model id to a list of names backends use")
        out["aliases"] = {str(k): tuple(str(n) for n in v) for k, v in table.items()}
    for key in _LISTS:
        if key in data:
            out[key] = tuple(str(v).lower() if "sha256" in key else str(v) for v in data[key])
    if "admin_token_sha256" in data:
        out["admin_token_sha256"] = str(data["admin_token_sha256"]).lower()
    keys = [ApiKey(str(k["tenant"]), str(k["sha256"]).lower()) for k in data.get("api_keys", [])]
    if "api_keys_file" in data:
        keys += load_key_file(Path(str(data["api_keys_file"])))
    if keys:
        out["api_keys"] = tuple(keys)
    extra = {
        "timeouts",
        "groups",
        "aliases",
        "api_keys",
        "api_keys_file",
        "admin_token_sha256",
        "tenant_weights",
    }
    unknown = set(data) - set(_SCALARS) - extra - set(_LISTS)
    if unknown:
        raise SettingsError(f"unknown settings in config file: {', '.join(sorted(unknown))}")
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m router", description="The inference router.")
    p.add_argument("--config", help="TOML settings file (also ROUTER_CONFIG)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--default-group")
    p.add_argument("--default-policy", choices=POLICIES)
    p.add_argument("--max-body-bytes", type=int)
    p.add_argument("--max-attempts", type=int)
    p.add_argument("--report-interval-s", type=float)
    p.add_argument("--health-interval-s", type=float)
    p.add_argument("--shutdown-grace-s", type=float)
    p.add_argument("--log-format", choices=("auto", "json", "text"))
    p.add_argument("--router-replicas", type=int, help="how many router replicas share the nodes")
    p.add_argument("--tls-cert-file")
    p.add_argument("--tls-key-file")
    return p


def load_settings(argv: Sequence[str], environ: Mapping[str, str]) -> RouterSettings:
    """Settings from a TOML file, then ``ROUTER_*`` variables, then CLI flags (last wins)."""
    args = _parser().parse_args(list(argv))
    values: dict[str, Any] = {}
    config_path = args.config or environ.get("ROUTER_CONFIG")
    if config_path:
        try:
            data = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {config_path}: {exc}") from exc
        values.update(_from_toml(data))
    for key, kind in _SCALARS.items():
        env_value = environ.get(f"ROUTER_{key.upper()}")
        if env_value is not None:
            values[key] = _coerce(f"ROUTER_{key.upper()}", kind, env_value)
    for key in _SCALARS:
        cli_value = getattr(args, key, None)
        if cli_value is not None:
            values[key] = cli_value
    _secrets_from_env(values, environ)
    return replace(RouterSettings(), **values)


def _secrets_from_env(values: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Plain secrets may come from the environment (e.g. a Kubernetes Secret); only their
    digests are kept."""
    token = environ.get("ROUTER_REGISTRATION_TOKEN")
    if token:
        values["registration_token_sha256"] = (
            *values.get("registration_token_sha256", ()),
            digest(token),
        )
    admin = environ.get("ROUTER_ADMIN_TOKEN")
    if admin:
        values["admin_token_sha256"] = digest(admin)
    key_file = environ.get("ROUTER_API_KEYS_FILE")
    if key_file:
        try:
            values["api_keys"] = (*values.get("api_keys", ()), *load_key_file(Path(key_file)))
        except (OSError, ValueError) as exc:
            raise SettingsError(f"cannot read ROUTER_API_KEYS_FILE: {exc}") from exc
    allow = environ.get("ROUTER_REGISTRATION_ALLOWLIST")
    if allow:
        values["registration_allowlist"] = tuple(a.strip() for a in allow.split(",") if a.strip())
