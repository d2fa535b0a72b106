"""Tables keyed by what the outside sends (tenants, models, queue keys), kept to a fixed size.

Two shapes, for two kinds of state:

* :class:`LruDict` where forgetting an entry is safe (a rate-limit bucket of an idle tenant,
  a round-robin counter): at the bound, a new key pushes out the least recently used one.
* :class:`LabelCap` for metric label values, where forgetting is not: a series that vanished
  and came back would restart its counters. The first ``limit`` distinct values are kept;
  later ones are folded into one ``other`` value.

State that may be neither forgotten nor folded (nodes, groups) has a hard cap instead, with an
error for the caller (see :class:`router.registry.RegistryFull`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
OTHER = "other"


class LruDict(Generic[K, V]):
    """A mapping of at most ``limit`` entries; reading or writing a key makes it the most
    recently used, and a new key at the bound pushes out the least recently used one."""

    __slots__ = ("_data", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("an LruDict holds at least one entry")
        self.limit = limit
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        data = self._data
        try:
            value = data[key]
        except KeyError:
            return None
        data.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        data = self._data
        data[key] = value
        data.move_to_end(key)
        if len(data) > self.limit:
            data.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._data.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        """Keys, least recently used first."""
        return iter(self._data)

    def items(self) -> Iterator[tuple[K, V]]:
        """Entries, least recently used first (reading them makes none more recent)."""
        return iter(self._data.items())


class LabelCap:
    """Metric label values, at most ``limit`` distinct ones; the rest read as ``other``."""

    __slots__ = ("_seen", "limit", "other")

    def __init__(self, limit: int, other: str = OTHER) -> None:
        self.limit = limit
        self.other = other
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        seen = self._seen
        if value in seen:
            return value
        if len(seen) < self.limit:
            seen.add(value)
            return value
        return self.other

    def __len__(self) -> int:
        return len(self._seen)
