"""Request limits: the shape bounds a body must respect, and per-tenant rate limits.

Rate limits are token buckets per tenant, refilled continuously: one for requests per minute
(charged when a request is admitted) and one for output tokens per minute (charged with the
tokens a request actually produced, so a tenant over budget waits until it has refilled).
At most ``max_tenants`` tenants are tracked: past that the least recently seen one is
forgotten (it comes back with a full bucket, which an idle tenant would have refilled to).
Pure logic: the caller passes ``now``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from router.bounded import LruDict
from router.errors import InvalidRequest, RateLimited

ANONYMOUS = "-"
MAX_TENANTS_TRACKED = 10_000


@dataclass(frozen=True, slots=True)
class BodyLimits:
    max_messages: int
    max_n: int
    max_output_tokens: int

    def check(self, parsed: dict[str, Any]) -> None:
        """Raise InvalidRequest for a value no node should be asked for."""
        messages = parsed.get("messages")
        if isinstance(messages, list) and len(messages) > self.max_messages:
            raise InvalidRequest(
                f"too many messages: {len(messages)} (at most {self.max_messages})",
                param="messages",
            )
        if isinstance(messages, list) and not all(isinstance(m, dict) for m in messages):
            raise InvalidRequest("every message must be an object", param="messages")
        n = parsed.get("n")
        if n is not None and (not _is_int(n) or not 1 <= n <= self.max_n):
            raise InvalidRequest(f"'n' must be an integer from 1 to {self.max_n}", param="n")
        for key in ("max_tokens", "max_completion_tokens"):
            value = parsed.get(key)
            if value is None:
                continue
            if not _is_int(value) or not 1 <= value <= self.max_output_tokens:
                raise InvalidRequest(
                    f"'{key}' must be an integer from 1 to {self.max_output_tokens}", param=key
                )


def _is_int(value: Any) -> bool:
    return type(value) is int  # JSON's integers: not True or False


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level = level
        self.stamp = stamp


class TenantRateLimiter:
    """Requests and output tokens per minute per tenant; 0 turns a limit off."""

    def __init__(
        self,
        requests_per_minute: int,
        tokens_per_minute: int,
        max_tenants: int = MAX_TENANTS_TRACKED,
    ) -> None:
        self._rpm = requests_per_minute
        self._tpm = tokens_per_minute
        self._requests: LruDict[str, _Bucket] = LruDict(max_tenants)
        self._tokens: LruDict[str, _Bucket] = LruDict(max_tenants)

    def __bool__(self) -> bool:
        return bool(self._rpm or self._tpm)

    @staticmethod
    def _refill(table: LruDict[str, _Bucket], tenant: str, per_minute: int, now: float) -> _Bucket:
        bucket = table.get(tenant)
        if bucket is None:
            bucket = table[tenant] = _Bucket(float(per_minute), now)
        else:
            bucket.level = min(per_minute, bucket.level + (now - bucket.stamp) * per_minute / 60)
            bucket.stamp = now
        return bucket

    def admit(self, tenant: str | None, now: float) -> None:
        """Take one request from the tenant's budget, or raise RateLimited with Retry-After."""
        key = tenant or ANONYMOUS
        if self._tpm:
            tokens = self._refill(self._tokens, key, self._tpm, now)
            if tokens.level <= 0:
                wait = -tokens.level * 60 / self._tpm + 1
                raise RateLimited(
                    f"tenant '{key}' is over {self._tpm} output tokens per minute",
                    code="tokens_per_minute",
                    retry_after_s=math.ceil(wait),
                )
        if self._rpm:
            requests = self._refill(self._requests, key, self._rpm, now)
            if requests.level < 1:
                wait = (1 - requests.level) * 60 / self._rpm
                raise RateLimited(
                    f"tenant '{key}' is over {self._rpm} requests per minute",
                    code="requests_per_minute",
                    retry_after_s=max(1, math.ceil(wait)),
                )
            requests.level -= 1

    def charge_tokens(self, tenant: str | None, tokens: int, now: float) -> None:
        if self._tpm and tokens:
            bucket = self._refill(self._tokens, tenant or ANONYMOUS, self._tpm, now)
            bucket.level -= tokens
