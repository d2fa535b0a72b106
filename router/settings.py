"""Router settings: one frozen schema, read once at start.

Precedence (last wins): defaults < TOML file (``--config`` or ``ROUTER_CONFIG``) < ``ROUTER_*``
environment variables (``ROUTER_TIMEOUTS__IDLE_S`` for nested keys) < flags. An unknown key at
any depth, or a bad value, stops start-up with the key's full path and what is wrong.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from node_protocol.settings_schema import (
    CommaList,
    Schema,
    SettingsError,
    build,
    env_layer,
    file_layer,
    flag_layer,
    merge,
    split_commas,
)
from node_protocol.wire import REJOIN_S
from router.auth import ApiKey, digest, load_key_file
from router.scheduling import POLICIES

__all__ = [
    "GroupSettings",
    "GroupTimeouts",
    "InvalidGroupName",
    "RouterSettings",
    "SettingsError",
    "StaticNode",
    "Timeouts",
    "check_group_name",
    "load_settings",
]

RESERVED_GROUP_NAMES = frozenset({"api", "v1", "health", "ready", "metrics", "dashboard"})


class InvalidGroupName(ValueError):
    """A group name the router cannot serve under (reserved, too long, or odd characters)."""


def check_group_name(name: str) -> str:
    if not name or len(name) > 64 or name in RESERVED_GROUP_NAMES:
        raise InvalidGroupName(f"invalid group name {name!r}")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise InvalidGroupName(f"group name {name!r} may hold only letters, digits, '-', '_', '.'")
    return name


def _policy(name: str) -> str:
    if name not in POLICIES:
        raise ValueError(f"must be one of {', '.join(POLICIES)}")
    return name


def _sha256_hex(value: str) -> str:
    if len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise ValueError("secrets in settings must be lowercase SHA-256 hex digests")
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _lower_key(value: Any) -> Any:
    if isinstance(value, dict) and isinstance(value.get("sha256"), str):
        return {**value, "sha256": value["sha256"].lower()}
    return value


GroupName = Annotated[str, AfterValidator(check_group_name)]
Policy = Annotated[str, AfterValidator(_policy)]
Sha256 = Annotated[str, BeforeValidator(_lower), AfterValidator(_sha256_hex)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Seconds = Annotated[float, Field(gt=0)]
AtLeastOne = Annotated[int, Field(ge=1)]


class Timeouts(Schema):
    """Bounds on every call to a node. ``idle_s`` applies between chunks and while waiting for
    headers, so the effective first-byte bound is ``min(first_byte_s, idle_s)``."""

    connect_s: Seconds = Field(3.0, description="bound on opening a connection to a node")
    first_byte_s: Seconds = Field(120.0, description="bound on a node's first byte")
    idle_s: Seconds = Field(120.0, description="bound on a silence between chunks")
    total_s: Seconds = Field(900.0, description="bound on a whole call")


class GroupTimeouts(Schema):
    """A group's own bounds; each one left out is the router-wide one."""

    connect_s: Seconds | None = Field(None, description="as [timeouts] connect_s")
    first_byte_s: Seconds | None = Field(None, description="as [timeouts] first_byte_s")
    idle_s: Seconds | None = Field(None, description="as [timeouts] idle_s")
    total_s: Seconds | None = Field(None, description="as [timeouts] total_s")


class StaticNode(Schema):
    """A node declared in config, with no agent: the router polls its health and models."""

    name: str = Field(description="the node's name, unique in its group")
    base_url: HttpUrl = Field(description="where the backend's API is (http or https)")
    health_url: HttpUrl | None = Field(None, description="its health URL; None: the models list")
    weight: float = Field(1.0, gt=0, description="relative share of the group's traffic")


class GroupSettings(Schema):
    """A server group: its scheduling policy, static nodes and, optionally, its own timeouts and
    whether its cut streams are resumed."""

    name: GroupName = Field(description="the group's name, as in /{group}/v1/...")
    policy: Policy = Field("least_loaded", description=f"one of {', '.join(POLICIES)}")
    nodes: tuple[StaticNode, ...] = Field((), description="backends with no agent")
    timeouts: GroupTimeouts | None = Field(None, description="overrides of [timeouts]")
    resume: bool | None = Field(None, description="as resume_streams, for this group")
    prefix_routing: bool = Field(
        True, description="least_loaded weighs what each node's prompt cache holds of a prompt"
    )


class RouterSettings(Schema):
    """Everything the router reads, validated once. Secrets are kept as SHA-256 digests."""

    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="port to listen on (0: any free one)")
    default_group: GroupName = Field("inference-cluster", description="group of /v1/... calls")
    default_policy: Policy = Field(
        "least_loaded", description=f"policy of groups that set none: {', '.join(POLICIES)}"
    )
    groups: tuple[GroupSettings, ...] = Field((), description="[[groups]] with their settings")
    timeouts: Timeouts = Field(Timeouts(), description="bounds on node calls")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest request body")
    max_attempts: AtLeastOne = Field(3, description="nodes tried before the first token")
    resume_streams: bool = Field(
        True, description="a stream cut after its first token goes on at another node"
    )
    report_interval_s: Seconds = Field(
        1.0, description="how often agents report; two missed reports count as a failed check"
    )
    failure_threshold: AtLeastOne = Field(3, description="failed checks that make a node down")
    health_interval_s: Seconds = Field(5.0, description="how often static nodes are checked")
    node_expiry_s: Seconds = Field(
        600.0, description="a node that has not reported for this long is removed"
    )
    shutdown_grace_s: Seconds = Field(30.0, description="how long in-flight calls may finish")
    retry_after_s: int = Field(2, ge=0, description="Retry-After on 429 and 503 answers")
    log_format: Literal["auto", "json", "text"] = Field("auto", description="log line format")
    aliases: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="a model id -> the names backends use for it"
    )
    # Security (secrets as SHA-256 digests; plain values only from the environment).
    api_keys: tuple[Annotated[ApiKey, BeforeValidator(_lower_key)], ...] = Field(
        (), description="[[api_keys]] tenant and sha256 (the key's digest)"
    )
    api_keys_file: str | None = Field(
        None, description="file of 'tenant:sha256' lines, added to api_keys"
    )
    registration_token_sha256: Annotated[
        tuple[Sha256, ...], NoDecode, BeforeValidator(split_commas)
    ] = Field((), description="digests of tokens agents must present to register")
    admin_token_sha256: Sha256 | None = Field(None, description="digest of the admin token")
    registration_allowlist: CommaList = Field(
        (), description="hosts and CIDRs an agent's baseUrl must be in (none: any)"
    )
    tls_cert_file: str | None = Field(None, description="TLS certificate (with tls_key_file)")
    tls_key_file: str | None = Field(None, description="TLS private key (with tls_cert_file)")
    # Limits.
    max_messages: AtLeastOne = Field(2048, description="most messages in a chat request")
    max_n: AtLeastOne = Field(16, description="largest n (choices) in a request")
    max_output_tokens: AtLeastOne = Field(262_144, description="largest max_tokens in a request")
    max_header_bytes: AtLeastOne = Field(16_384, description="largest request header")
    client_header_timeout_s: Seconds = Field(10.0, description="bound on reading headers")
    client_body_timeout_s: Seconds = Field(30.0, description="bound on reading a request body")
    slow_client_timeout_s: Seconds = Field(30.0, description="bound on a client reading a chunk")
    # Admission: a node takes at most cap_factor x its model's parallel slots (where known);
    # past that, requests wait in a fair per-group-and-model queue of at most queue_max, for at
    # most queue_wait_s (then 429 / 503 with Retry-After). tenant_weights share freed slots.
    cap_factor: float = Field(2.0, gt=0, description="a node takes at most this x its slots")
    queue_max: int = Field(256, ge=0, description="most requests waiting per group and model")
    queue_wait_s: Seconds = Field(30.0, description="longest wait in the queue")
    tenant_weights: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="tenant -> share of freed slots"
    )
    router_replicas: AtLeastOne = Field(1, description="how many router replicas share the nodes")
    router_id: str = Field(default_factory=socket.gethostname, description="this replica's name")
    warmup_s: float | None = Field(
        None,
        ge=0,
        description="wait for agents before ready (None: three report intervals, and at least "
        "as long as an agent takes to try a router again, plus one)",
    )
    upstream_ca_file: str | None = Field(None, description="CA bundle for https nodes")
    tenant_requests_per_minute: int = Field(0, ge=0, description="per tenant; 0: no limit")
    tenant_tokens_per_minute: int = Field(0, ge=0, description="per tenant; 0: no limit")

    @model_validator(mode="before")
    @classmethod
    def _read_key_file(cls, data: Any) -> Any:
        """Keys in ``api_keys_file`` join those given inline."""
        if not isinstance(data, dict) or not data.get("api_keys_file"):
            return data
        path = str(data["api_keys_file"])
        try:
            keys = load_key_file(Path(path))
        except (OSError, ValueError) as exc:
            raise ValueError(f"api_keys_file: cannot read {path}: {exc}") from exc
        return {**data, "api_keys": (*data.get("api_keys", ()), *keys)}

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.node_expiry_s > self.report_interval_s:
            raise ValueError("node_expiry_s must be longer than report_interval_s")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        for key in self.api_keys:
            _sha256_hex(key.sha256)
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError("groups: each name may appear once")
        return self

    @property
    def warmup(self) -> float:
        """How long after start a model no node has reported is "starting" (503, retry), not
        unknown (404), and ``/ready`` waits: long enough for every agent's next report, and
        for an agent that found this router down (it restarted) to try it again."""
        if self.warmup_s is not None:
            return self.warmup_s
        return max(3 * self.report_interval_s, REJOIN_S + self.report_interval_s)

    def timeouts_for(self, group: str) -> Timeouts:
        """The group's own timeouts where it sets them, the router-wide ones otherwise."""
        settings = self.group(group)
        if settings is None or settings.timeouts is None:
            return self.timeouts
        own = settings.timeouts.model_dump(exclude_none=True)
        return self.timeouts.model_copy(update=own)

    def resume_for(self, group: str) -> bool:
        """Whether a cut stream of ``group`` goes on at another node (its own setting, else
        the router-wide one)."""
        settings = self.group(group)
        own = None if settings is None else settings.resume
        return self.resume_streams if own is None else own

    def group(self, name: str) -> GroupSettings | None:
        for g in self.groups:
            if g.name == name:
                return g
        return None


class _RouterFlags(RouterSettings, BaseSettings):
    """The inference router: one OpenAI-compatible endpoint in front of a fleet of nodes.

    Settings come from a TOML file, then ROUTER_<NAME> environment variables
    (ROUTER_TIMEOUTS__IDLE_S for a nested key), then these flags; the last wins. Secrets come
    only from the environment: ROUTER_REGISTRATION_TOKEN (agents present it), ROUTER_ADMIN_TOKEN.
    """

    model_config = SettingsConfigDict(
        env_prefix="ROUTER_", env_nested_delimiter="__", cli_prog_name="python -m router"
    )

    config: str | None = Field(None, description="TOML settings file (also ROUTER_CONFIG)")


class _RouterEnvironment(_RouterFlags):
    """What the environment may set: the flags' settings, and the plain secrets."""

    registration_token: SecretStr | None = Field(None, description="token agents present")
    admin_token: SecretStr | None = Field(None, description="token for operator endpoints")


def load_settings(argv: Sequence[str], environ: Mapping[str, str]) -> RouterSettings:
    """Settings from a TOML file, then ``ROUTER_*`` variables, then flags (last wins)."""
    flags, given = flag_layer(_RouterFlags, argv).take("config")
    env, taken = env_layer(_RouterEnvironment, environ).take(
        "config", "registration_token", "admin_token"
    )
    config = given.get("config") or taken.get("config")
    values, origins = merge([*([file_layer(config)] if config else []), env, flags])
    # Plain secrets are kept only as digests; a token adds to the digests the file lists.
    if taken.get("registration_token"):
        listed = split_commas(values.get("registration_token_sha256", ()))
        values["registration_token_sha256"] = (*listed, digest(taken["registration_token"]))
    if taken.get("admin_token"):
        values["admin_token_sha256"] = digest(taken["admin_token"])
    return build(RouterSettings, values, origins)
