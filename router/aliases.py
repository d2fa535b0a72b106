"""Model aliases: one logical model id, different names on different backends.

``llama3.1:70b`` on Ollama is ``meta-llama/Llama-3.1-70B-Instruct`` on vLLM. The router config
maps a logical id to the names backends use; a request for any of them may go to a node that
knows the model by any other. The body sent to a node carries the node's own name, and the
answer the client sees carries the name it asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:  # the registry keys its counts by these names: it imports this module
    from router.registry import Node


class Aliases:
    def __init__(self, table: Mapping[str, Iterable[str]]) -> None:
        self._names: dict[str, tuple[str, ...]] = {}
        for logical, names in table.items():
            family = (logical, *(n for n in names if n != logical))
            for name in family:
                self._names[name] = family

    def names(self, model: str) -> tuple[str, ...]:
        """Every name the model goes by, the asked one first."""
        family = self._names.get(model)
        if family is None:
            return (model,)
        return (model, *(n for n in family if n != model))

    def canonical(self, model: str) -> str:
        """The model's logical id: the one name the router queues its requests under."""
        family = self._names.get(model)
        return model if family is None else family[0]

    def __bool__(self) -> bool:
        return bool(self._names)


def node_name_for(node: Node, names: tuple[str, ...]) -> str | None:
    """The name ``node`` serves the model under, or None when it does not serve it."""
    models = node.models()
    for name in names:
        for entry in models:
            if entry.id == name or name in entry.aliases:
                return name
    return None


def rewrite_model(body: bytes, name: str) -> bytes:
    """The request body with its ``model`` field set to ``name``."""
    parsed = orjson.loads(body)
    parsed["model"] = name
    return orjson.dumps(parsed)


def renaming(node_name: str, asked: str) -> tuple[tuple[bytes, bytes], ...]:
    """Byte replacements that put the asked name back into a node's answer (compact JSON, and
    JSON written with a space after the colon)."""
    old, new = orjson.dumps(node_name), orjson.dumps(asked)
    return ((b'"model":' + old, b'"model":' + new), (b'"model": ' + old, b'"model": ' + new))


def apply_renaming(data: bytes, pairs: tuple[tuple[bytes, bytes], ...]) -> bytes:
    for old, new in pairs:
        data = data.replace(old, new)
    return data
