"""How the router and the agent read their settings, shared so both behave alike.

Each process declares one pydantic schema (frozen models that refuse undeclared keys at every
depth). Its values come in layers, later ones winning: defaults, a TOML file, environment
variables, flags (pydantic-settings reads each). Any problem stops start-up with one line naming
the offending key by its full path (``groups[0].timeouts.conect_s``), where the value came from,
and what is wrong or what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, CliSettingsSource, EnvSettingsSource, NoDecode
from pydantic_settings import SettingsError as SourceError

M = TypeVar("M", bound="Schema")


class SettingsError(ValueError):
    """Settings a process cannot start with; the message names each offending key."""


class Schema(BaseModel):
    """A settings model: immutable, and a key it does not declare is refused. Built directly
    (as tests do) a bad value raises pydantic's ``ValidationError``; :func:`build` turns that
    into a :class:`SettingsError` that says where each value came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def split_commas(value: Any) -> Any:
    """``"a, b,c"`` as ``("a", "b", "c")``; anything else as it is."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


# A list that an environment variable or a flag gives as ``a,b,c`` (a file gives a TOML array).
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(split_commas)]


def empty_is_none(value: Any) -> Any:
    """An empty environment variable unsets an optional setting."""
    return None if value == "" else value


@dataclasses.dataclass(frozen=True, slots=True)
class Layer:
    """The values one source gives, and how that source names a top-level key (for messages)."""

    values: Mapping[str, Any]
    origin: Callable[[str], str]

    def take(self, *keys: str) -> tuple[Layer, dict[str, Any]]:
        """This layer without ``keys``, and the values it had for them."""
        taken = {key: self.values[key] for key in keys if key in self.values}
        rest = {key: value for key, value in self.values.items() if key not in taken}
        return Layer(rest, self.origin), taken


def file_layer(path: str, table: str | None = None) -> Layer:
    """A TOML file's keys (those of its ``[table]`` where it has one)."""
    try:
        with open(path, "rb") as fh:
            data: Any = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    if table is not None:
        data = data.get(table, data)
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: [{table}] must be a table")
    return Layer(data, lambda _: f"in {path}")


class EnvironmentVariables(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ."""

    def __init__(self, schema: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._given = environ
        super().__init__(schema)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        if self.case_sensitive:
            return dict(self._given)
        return {key.lower(): value for key, value in self._given.items()}


def env_layer(schema: type[BaseSettings], environ: Mapping[str, str]) -> Layer:
    """``PREFIX_<FIELD>`` variables (``__`` between nested keys where the schema says so).
    A variable with the prefix that names no field is an error, not ignored."""
    prefix = str(schema.model_config.get("env_prefix", "")).upper()
    known = {prefix + name.upper() for name in schema.model_fields}
    for key in environ:
        if key.upper().startswith(prefix) and key.upper().split("__")[0] not in known:
            allowed = ", ".join(sorted(known))
            raise SettingsError(f"{key}: unknown environment variable; allowed: {allowed}")
    try:
        values = EnvironmentVariables(schema, environ)()
    except SourceError as exc:
        raise SettingsError(str(exc)) from None
    return Layer(values, lambda key: prefix + key.upper())


def flag_layer(schema: type[BaseSettings], argv: Sequence[str]) -> Layer:
    """Flags named after the schema's fields (``--report-interval-s``, ``--timeouts.idle-s``),
    with its description as help. ``--help`` prints that help and exits."""
    try:
        source: CliSettingsSource[Any] = CliSettingsSource(
            schema,
            cli_parse_args=list(argv),
            cli_exit_on_error=False,
            cli_kebab_case=True,
            cli_hide_none_type=True,
            cli_avoid_json=True,
            formatter_class=argparse.HelpFormatter,
        )
        values = source()
    except SourceError as exc:
        raise SettingsError(str(exc)) from None
    return Layer(values, lambda key: "--" + key.replace("_", "-"))


def merge(layers: Sequence[Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """Values of all layers, later ones winning key by key (tables merge, not replace), and
    the origin of each top-level key."""
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for layer in layers:
        merged = _deep_merge(merged, layer.values)
        origins.update((key, layer.origin(key)) for key in layer.values)
    return merged, origins


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        both_tables = isinstance(below, Mapping) and isinstance(value, Mapping)
        out[key] = _deep_merge(below, value) if both_tables else value  # type: ignore[arg-type]
    return out


def build(schema: type[M], values: Mapping[str, Any], origins: Mapping[str, str]) -> M:
    """The settings object, or a :class:`SettingsError` explaining every problem."""
    try:
        return schema.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(explain(exc, schema, origins)) from None


def explain(exc: ValidationError, schema: type, origins: Mapping[str, str]) -> str:
    """One line: each problem as ``path (origin): what is wrong``, joined by `` | ``."""
    return " | ".join(_problem(error, schema, origins) for error in exc.errors())


def _problem(error: ErrorDetails, schema: type, origins: Mapping[str, str]) -> str:
    loc = error["loc"]
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    path = path.lstrip(".")
    origin = origins.get(str(loc[0])) if loc else None
    where = f"{path} ({origin})" if origin else path
    kind = error["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        allowed = ", ".join(sorted(_fields(_kind_at(schema, loc[:-1])) or ()))
        return f"{where}: unknown key; allowed: {allowed}"
    if kind in ("missing", "missing_keyword_argument"):
        return f"{path} is required"
    ctx = error.get("ctx") or {}
    message = str(ctx["error"]) if kind == "value_error" and "error" in ctx else error["msg"]
    message = message[:1].lower() + message[1:]
    if kind == "value_error" or not loc:
        return f"{where}: {message}" if loc else message
    return f"{where}: {message}, got {error['input']!r}"


def _fields(kind: Any) -> dict[str, Any] | None:
    """A model's or dataclass's keys and their types; None for anything else."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return {name: info.annotation for name, info in kind.model_fields.items()}
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return typing.get_type_hints(kind)
    return None


def _kind_at(schema: type, loc: Sequence[int | str]) -> Any:
    """The type that holds the value at ``loc`` (a path of keys and list indices)."""
    kind: Any = schema
    for part in loc:
        kind = _unwrap(kind)
        fields = _fields(kind)
        if fields is not None:
            kind = fields.get(str(part))
            continue
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        kind = args[-1] if args else None  # list/tuple items, or a dict's values
    return _unwrap(kind)


def _unwrap(kind: Any) -> Any:
    """``X`` from ``Annotated[X, ...]`` and ``X | None``."""
    while True:
        origin = typing.get_origin(kind)
        if origin is Annotated:
            kind = typing.get_args(kind)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(kind) if a is not type(None)]
            if len(rest) != 1:
                return kind
            kind = rest[0]
        else:
            return kind
