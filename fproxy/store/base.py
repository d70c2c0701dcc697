"""What the store keeps (virtual keys, usage records) and the interface every store implements.

Keys are kept as SHA-256 hex digests plus a short ``prefix`` (``sk-fp-abcd``) for people to
recognise them; the key itself is shown once, at creation, and never stored.  Revoking
sets ``revoked_at`` (the row stays, so usage history keeps its name); every change bumps
``updated_at``, which is how other instances' key caches notice it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from attrs import field, frozen

#: The limit fields of a key, in API order (all optional).
LIMIT_FIELDS = ("rpm", "tpm", "max_concurrency", "budget_tokens", "budget_usd", "budget_period")


@frozen
class KeyRecord:
    """A virtual client key as stored (never the key itself)."""

    id: str
    key_hash: str  # SHA-256 hex of the key
    prefix: str
    created_at: float
    updated_at: float
    name: str | None = None
    models: tuple[str, ...] = ()  # allowed model globs; empty = every model
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    budget_tokens: int | None = None
    budget_usd: float | None = None
    budget_period: str | None = None  # "day" | "month" | None (never resets)
    expires_at: float | None = None
    disabled: bool = False
    metadata: Mapping[str, Any] = field(factory=dict)
    revoked_at: float | None = None

    @property
    def has_budget(self) -> bool:
        return self.budget_tokens is not None or self.budget_usd is not None


@frozen
class UsageRecord:
    """One finished call, as the ledger keeps it."""

    request_id: str
    ts: float  # when the call started (Unix seconds)
    key_id: str | None
    route_model: str | None  # the model the client asked for
    provider: str | None
    upstream_model: str | None
    endpoint: str | None = None  # the client route, e.g. /v1/chat/completions
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # cache reads
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    status: int = 0
    outcome: str = "completed"  # completed | error | client_closed | cancelled
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    estimated: bool = False  # tokens estimated: the upstream reported none
    error: str | None = None

    @property
    def tokens(self) -> int:
        """What TPM and token budgets count: prompt (cached included) + completion (reasoning included)."""
        return self.prompt_tokens + self.completion_tokens


@frozen
class UsageQuery:
    key: str | None = None
    model: str | None = None
    provider: str | None = None
    since: float | None = None
    until: float | None = None
    group_by: str | None = None  # key | model | provider | hour | day


@frozen
class UsageTotals:
    """One group of a usage summary (``group`` is None for the grand total)."""

    group: Any
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "reasoning_tokens": self.reasoning_tokens,
                "cached_tokens": self.cached_tokens, "cost_usd": round(self.cost_usd, 6)}


class Store(Protocol):
    """Keys and usage.  Every method returns without blocking the reactor."""

    async def open(self) -> None:
        """Connect and apply pending schema migrations (creates the database on first start)."""

    def close(self) -> None:
        """Release connections (after the usage writer's last flush)."""

    async def create_key(self, rec: KeyRecord) -> None: ...

    async def update_key(self, key_id: str, changes: Mapping[str, Any], now: float) -> KeyRecord | None:
        """Apply ``changes`` (field -> value) to a live key; None when there is none."""

    async def revoke_key(self, key_id: str, now: float) -> KeyRecord | None: ...

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def list_keys(self, include_revoked: bool = False) -> list[KeyRecord]: ...

    async def keys_updated_since(self, since: float) -> list[KeyRecord]:
        """Keys (revoked ones included) whose ``updated_at`` is after ``since``: the cache's refresh."""

    async def insert_usage(self, records: list[UsageRecord]) -> None:
        """Write a batch; a record already there (same request id) is skipped, so retries are safe."""

    async def usage_summary(self, q: UsageQuery) -> tuple[list[UsageTotals], UsageTotals]: ...

    async def spend_by_key(self, since: float) -> dict[str, tuple[int, float]]:
        """key id -> (tokens, USD) of the calls since ``since``: seeds budgets at start."""
