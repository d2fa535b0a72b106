"""The agent's settings: one frozen schema, read once at start.

Precedence (last wins): defaults < TOML file (``--config`` / ``NODE_AGENT_CONFIG``; its keys at
the top or under ``[node_agent]``) < the ASP.NET-style variables (``InferenceNode__BackendUrl``,
``InferenceNode__GroupName``, ``InferenceNode__RouterUrl``, ``InferenceNode__RouterToken``) <
``NODE_AGENT_<FIELD>`` variables < flags. An unknown key, variable or flag, or a bad value,
stops start-up with the key's name and what is wrong.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BeforeValidator, Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from node_protocol.settings_schema import (
    Layer,
    Schema,
    SettingsError,
    build,
    empty_is_none,
    env_layer,
    file_layer,
    flag_layer,
    merge,
    split_commas,
)

__all__ = ["AgentSettings", "SettingsError", "load_settings"]

ENV_PREFIX = "NODE_AGENT_"
_ROUTER_URL = f"{ENV_PREFIX}ROUTER_URL"
# The ASP.NET-style variables (their configuration keys are case-insensitive).
SEED_ENV = {
    "inferencenode__backendurl": "backend_url",
    "inferencenode__groupname": "group",
    "inferencenode__routerurl": "router_urls",
    "inferencenode__routertoken": "router_token",
}


def _http_url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")) or len(value) <= len("https://"):
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return value


def _pairs(value: Any) -> Any:
    """``"gpu=A100,region=eu"`` (an environment variable or repeated flags) as a table."""
    if not isinstance(value, str):
        return value
    out: dict[str, str] = {}
    for pair in filter(str.strip, value.split(",")):
        key, sep, item = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {pair!r}")
        out[key.strip()] = item.strip()
    return out


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _name(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
OptionalUrl = Annotated[HttpUrl | None, BeforeValidator(empty_is_none)]
Seconds = Annotated[float, Field(gt=0)]


class AgentSettings(Schema):
    """Everything the agent needs, validated at construction."""

    backend_url: HttpUrl = Field(description="the backend's base URL (required)")
    backend_kind: Literal[
        "auto", "ollama", "vllm", "tgi", "triton", "lmstudio", "llamacpp", "openai"
    ] = Field("auto", description="the backend's kind; auto: found by probing it")
    backend_api_key: Annotated[str | None, BeforeValidator(empty_is_none)] = Field(
        None, repr=False, description="bearer key the backend wants (better: an env var)"
    )
    backend_metrics_url: OptionalUrl = Field(
        None,
        description="the backend's Prometheus URL (default: {backend-url}/metrics; Triton: "
        "the same host on port 8002)",
    )
    router_urls: Annotated[tuple[HttpUrl, ...], NoDecode, BeforeValidator(split_commas)] = Field(
        (), description="routers to register with (repeatable, or comma-separated)"
    )
    router_dns: str | None = Field(
        None, description="URL whose host name resolves to every router replica (re-resolved)"
    )
    router_dns_interval_s: Seconds = Field(5.0, description="how often router_dns is resolved")
    router_token: str | None = Field(
        None, repr=False, description="the routers' registration token (better: an env var)"
    )
    group: str = Field(
        "inference-cluster",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="server group to join (1-64 letters, digits, '.', '_', '-')",
    )
    name: Annotated[str, AfterValidator(_name)] = Field(
        default_factory=socket.gethostname, max_length=128, description="this node's name"
    )
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8090, ge=0, le=65535, description="port to listen on (0: any free one)")
    advertise_url: OptionalUrl = Field(
        None, description="URL routers reach this agent at (default: from the bound socket)"
    )
    gpu_source: Literal["auto", "nvml", "emulated", "none"] = Field(
        "auto", description="where GPU readings come from"
    )
    report_interval_s: Seconds = Field(1.0, description="how often the agent reports its load")
    weight: float = Field(1.0, gt=0, le=1000, description="relative share of the group's traffic")
    metadata: Annotated[dict[str, str], NoDecode, BeforeValidator(_pairs)] = Field(
        default_factory=dict, description="key=value labels (repeatable, or comma-separated)"
    )
    max_parallel: Annotated[int | None, BeforeValidator(empty_is_none)] = Field(
        None, ge=1, description="requests the backend serves at once (default: from the backend)"
    )
    connect_timeout_s: Seconds = Field(5.0, description="bound on connecting to the backend")
    first_byte_timeout_s: Seconds = Field(300.0, description="bound on the backend's first byte")
    idle_timeout_s: Seconds = Field(60.0, description="bound on a silence between chunks")
    total_timeout_s: Seconds = Field(1800.0, description="bound on a whole backend call")
    control_timeout_s: Seconds = Field(
        2.0, description="bound on each call to the routers and each probe of the backend"
    )
    shutdown_timeout_s: Seconds = Field(30.0, description="how long in-flight calls may finish")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body")
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = (
        Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.total_timeout_s < max(self.first_byte_timeout_s, self.connect_timeout_s):
            raise ValueError("total_timeout_s must be at least first_byte_timeout_s")
        return self

    @property
    def health_url(self) -> str | None:
        """The agent's own health URL as routers should poll it (known once advertised)."""
        return None if self.advertise_url is None else f"{self.advertise_url}/health"


class _AgentFlags(AgentSettings, BaseSettings):
    """Node agent: thin proxy + load reporter beside an inference backend.

    Settings come from a TOML file, then the InferenceNode__BackendUrl, __GroupName,
    __RouterUrl and __RouterToken variables, then NODE_AGENT_<NAME> variables, then these
    flags; the last wins.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_prog_name="python -m node_agent",
        # The names these flags had before they came from the schema.
        cli_shortcuts={
            "router-urls": "router-url",
            "router-dns-interval-s": "router-dns-interval",
            "report-interval-s": "report-interval",
            "connect-timeout-s": "connect-timeout",
            "first-byte-timeout-s": "first-byte-timeout",
            "idle-timeout-s": "idle-timeout",
            "total-timeout-s": "total-timeout",
            "control-timeout-s": "control-timeout",
            "shutdown-timeout-s": "shutdown-timeout",
        },
    )

    config: str | None = Field(None, description="TOML settings file (also NODE_AGENT_CONFIG)")


def _seed_layer(environ: Mapping[str, str]) -> Layer:
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for key, value in environ.items():
        target = SEED_ENV.get(key.lower())
        if target is not None:
            values[target], names[target] = value, key
    return Layer(values, names.__getitem__)


def load_settings(argv: Sequence[str], environ: Mapping[str, str]) -> AgentSettings:
    """Build the settings from a TOML file, the environment and flags (flags win)."""
    flags, given = flag_layer(_AgentFlags, argv).take("config")
    # NODE_AGENT_ROUTER_URL, one router, is another name for NODE_AGENT_ROUTER_URLS.
    renamed = {_ROUTER_URL: f"{_ROUTER_URL}S"}
    environ = {renamed.get(key.upper(), key): value for key, value in environ.items()}
    env, taken = env_layer(_AgentFlags, environ).take("config")
    config = given.get("config") or taken.get("config")
    file = [file_layer(config, table="node_agent")] if config else []
    values, origins = merge([*file, _seed_layer(environ), env, flags])
    if "backend_url" not in values:
        raise SettingsError(
            "backend_url is required (--backend-url, NODE_AGENT_BACKEND_URL "
            "or InferenceNode__BackendUrl)"
        )
    return build(AgentSettings, values, origins)
