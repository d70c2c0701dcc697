"""The store over SQL through ``twisted.enterprise.adbapi`` (queries run in the pool's threads).

The SQL here is portable (SQLite and PostgreSQL); what differs between databases lives in
a `Dialect`: the parameter style, the expression that buckets times for ``group_by=hour|day``
and the column types.  Schema changes are numbered migrations, applied in order at start and
recorded in ``schema_version``; a database is created on first start.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from attrs import frozen
from twisted.enterprise import adbapi
from twisted.logger import Logger

from fproxy.store.base import KeyRecord, UsageQuery, UsageRecord, UsageTotals
from fproxy.timeutil import bucket_label

log = Logger()


@frozen
class Dialect:
    """What differs between SQL databases."""

    name: str
    param: str  # "?" (sqlite3) or "%s" (psycopg)
    double: str = "DOUBLE PRECISION"
    bigint: str = "BIGINT"
    bucket: Callable[[str, int], str] = lambda col, secs: f"CAST({col} / {secs} AS INTEGER) * {secs}"
    #: run first in the migration transaction, so instances starting together migrate one at a time
    lock: str | None = None

    def q(self, sql: str) -> str:
        """``?`` placeholders -> this database's style."""
        return sql if self.param == "?" else sql.replace("?", self.param)


SQLITE = Dialect("sqlite", "?", lock="BEGIN IMMEDIATE")  # serialises first-start migrations of --workers


def _migrations(d: Dialect) -> list[tuple[int, list[str]]]:
    return [
        (1, [
            f"""CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                key_hash TEXT NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                name TEXT,
                created_at {d.double} NOT NULL,
                updated_at {d.double} NOT NULL,
                revoked_at {d.double},
                disabled INTEGER NOT NULL DEFAULT 0,
                expires_at {d.double},
                models TEXT NOT NULL DEFAULT '[]',
                rpm INTEGER,
                tpm {d.bigint},
                max_concurrency INTEGER,
                budget_tokens {d.bigint},
                budget_usd {d.double},
                budget_period TEXT,
                metadata TEXT NOT NULL DEFAULT '{{}}'
            )""",
            "CREATE INDEX api_keys_updated ON api_keys (updated_at)",
            f"""CREATE TABLE usage_records (
                request_id TEXT PRIMARY KEY,
                ts {d.double} NOT NULL,
                key_id TEXT,
                route_model TEXT,
                provider TEXT,
                upstream_model TEXT,
                endpoint TEXT,
                stream INTEGER NOT NULL DEFAULT 0,
                prompt_tokens {d.bigint} NOT NULL DEFAULT 0,
                completion_tokens {d.bigint} NOT NULL DEFAULT 0,
                reasoning_tokens {d.bigint} NOT NULL DEFAULT 0,
                cached_tokens {d.bigint} NOT NULL DEFAULT 0,
                cache_write_tokens {d.bigint} NOT NULL DEFAULT 0,
                cost_usd {d.double} NOT NULL DEFAULT 0,
                status INTEGER NOT NULL DEFAULT 0,
                outcome TEXT NOT NULL,
                latency_ms {d.double} NOT NULL DEFAULT 0,
                ttft_ms {d.double},
                estimated INTEGER NOT NULL DEFAULT 0,
                error TEXT
            )""",
            "CREATE INDEX usage_ts ON usage_records (ts)",
            "CREATE INDEX usage_key_ts ON usage_records (key_id, ts)",
        ]),
    ]


SCHEMA_VERSION = max(v for v, _ in _migrations(SQLITE))

_KEY_COLUMNS = ("id", "key_hash", "prefix", "name", "created_at", "updated_at", "revoked_at", "disabled",
                "expires_at", "models", "rpm", "tpm", "max_concurrency", "budget_tokens", "budget_usd",
                "budget_period", "metadata")
_USAGE_COLUMNS = ("request_id", "ts", "key_id", "route_model", "provider", "upstream_model", "endpoint", "stream",
                  "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens", "cache_write_tokens",
                  "cost_usd", "status", "outcome", "latency_ms", "ttft_ms", "estimated", "error")
_SUMS = ("COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
         "COALESCE(SUM(reasoning_tokens), 0), COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(cost_usd), 0)")
_GROUP_COLUMNS = {"key": "key_id", "model": "route_model", "provider": "provider"}
_BUCKETS = {"hour": 3600, "day": 86400}


def _key_row(r: KeyRecord) -> tuple[Any, ...]:
    return (r.id, r.key_hash, r.prefix, r.name, r.created_at, r.updated_at, r.revoked_at, int(r.disabled),
            r.expires_at, json.dumps(list(r.models)), r.rpm, r.tpm, r.max_concurrency, r.budget_tokens,
            r.budget_usd, r.budget_period, json.dumps(dict(r.metadata)))


def _key_from_row(row: tuple[Any, ...]) -> KeyRecord:
    d = dict(zip(_KEY_COLUMNS, row, strict=True))
    d["disabled"] = bool(d["disabled"])
    d["models"] = tuple(json.loads(d["models"] or "[]"))
    d["metadata"] = json.loads(d["metadata"] or "{}")
    return KeyRecord(**d)


def _usage_row(r: UsageRecord) -> tuple[Any, ...]:
    return (r.request_id, r.ts, r.key_id, r.route_model, r.provider, r.upstream_model, r.endpoint, int(r.stream),
            r.prompt_tokens, r.completion_tokens, r.reasoning_tokens, r.cached_tokens, r.cache_write_tokens,
            r.cost_usd, r.status, r.outcome, r.latency_ms, r.ttft_ms, int(r.estimated), r.error)


def _encode_change(name: str, value: Any) -> Any:
    if name == "models":
        return json.dumps(list(value))
    if name == "metadata":
        return json.dumps(dict(value))
    if name == "disabled":
        return int(bool(value))
    return value


class SqlStore:
    """`fproxy.store.base.Store` over an adbapi `ConnectionPool`."""

    def __init__(self, pool: adbapi.ConnectionPool, dialect: Dialect, where: str) -> None:
        self._pool = pool
        self._d = dialect
        self.where = where  # for messages: the database, never a password

    # ------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        version = await self._pool.runInteraction(self._migrate)
        log.info("store {where}: schema version {version}", where=self.where, version=version)

    def _migrate(self, txn: Any) -> int:
        if self._d.lock:
            txn.execute(self._d.lock)
        txn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        txn.execute("SELECT MAX(version) FROM schema_version")
        row = txn.fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        if current > SCHEMA_VERSION:
            raise RuntimeError(f"the database {self.where} has schema version {current}, newer than this "
                               f"fproxy knows ({SCHEMA_VERSION}); upgrade fproxy")
        for version, statements in _migrations(self._d):
            if version <= current:
                continue
            for sql in statements:
                txn.execute(sql)
            txn.execute(self._d.q("INSERT INTO schema_version (version) VALUES (?)"), (version,))
            current = version
        return current

    def close(self) -> None:
        self._pool.close()

    # ------------------------------------------------------------ keys
    async def create_key(self, rec: KeyRecord) -> None:
        cols = ", ".join(_KEY_COLUMNS)
        marks = ", ".join("?" for _ in _KEY_COLUMNS)
        await self._pool.runOperation(self._d.q(f"INSERT INTO api_keys ({cols}) VALUES ({marks})"), _key_row(rec))

    async def update_key(self, key_id: str, changes: Mapping[str, Any], now: float) -> KeyRecord | None:
        return await self._pool.runInteraction(self._update, key_id, dict(changes), now)

    def _update(self, txn: Any, key_id: str, changes: dict[str, Any], now: float) -> KeyRecord | None:
        bad = [k for k in changes if k not in _KEY_COLUMNS or k in ("id", "key_hash", "created_at")]
        if bad:
            raise ValueError(f"not updatable: {bad}")
        sets = [f"{k} = ?" for k in changes] + ["updated_at = ?"]
        args = [_encode_change(k, v) for k, v in changes.items()] + [now, key_id]
        txn.execute(self._d.q(f"UPDATE api_keys SET {', '.join(sets)} WHERE id = ? AND revoked_at IS NULL"), args)
        if txn.rowcount == 0:
            return None
        return self._select_key(txn, key_id)

    async def revoke_key(self, key_id: str, now: float) -> KeyRecord | None:
        return await self._pool.runInteraction(self._revoke, key_id, now)

    def _revoke(self, txn: Any, key_id: str, now: float) -> KeyRecord | None:
        txn.execute(self._d.q("UPDATE api_keys SET revoked_at = ?, updated_at = ? WHERE id = ? AND revoked_at IS NULL"),
                    (now, now, key_id))
        if txn.rowcount == 0:
            return None
        return self._select_key(txn, key_id)

    def _select_key(self, txn: Any, key_id: str) -> KeyRecord | None:
        txn.execute(self._d.q(f"SELECT {', '.join(_KEY_COLUMNS)} FROM api_keys WHERE id = ?"), (key_id,))
        row = txn.fetchone()
        return _key_from_row(row) if row else None

    async def get_key(self, key_id: str) -> KeyRecord | None:
        rec = await self._pool.runInteraction(self._select_key, key_id)
        return rec if rec is not None and rec.revoked_at is None else None

    async def list_keys(self, include_revoked: bool = False) -> list[KeyRecord]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = await self._pool.runQuery(f"SELECT {', '.join(_KEY_COLUMNS)} FROM api_keys{where} ORDER BY created_at")
        return [_key_from_row(r) for r in rows]

    async def keys_updated_since(self, since: float) -> list[KeyRecord]:
        rows = await self._pool.runQuery(
            self._d.q(f"SELECT {', '.join(_KEY_COLUMNS)} FROM api_keys WHERE updated_at > ?"), (since,))
        return [_key_from_row(r) for r in rows]

    # ------------------------------------------------------------ usage
    async def insert_usage(self, records: list[UsageRecord]) -> None:
        if not records:
            return
        cols = ", ".join(_USAGE_COLUMNS)
        marks = ", ".join("?" for _ in _USAGE_COLUMNS)
        sql = self._d.q(f"INSERT INTO usage_records ({cols}) VALUES ({marks}) ON CONFLICT (request_id) DO NOTHING")
        rows = [_usage_row(r) for r in records]
        await self._pool.runInteraction(lambda txn: txn.executemany(sql, rows))

    def _where(self, q: UsageQuery) -> tuple[str, list[Any]]:
        conds, args = [], []
        for col, value in (("key_id", q.key), ("route_model", q.model), ("provider", q.provider)):
            if value is not None:
                conds.append(f"{col} = ?")
                args.append(value)
        if q.since is not None:
            conds.append("ts >= ?")
            args.append(q.since)
        if q.until is not None:
            conds.append("ts < ?")
            args.append(q.until)
        return (" WHERE " + " AND ".join(conds) if conds else ""), args

    async def usage_summary(self, q: UsageQuery) -> tuple[list[UsageTotals], UsageTotals]:
        where, args = self._where(q)
        group = q.group_by
        if group in _BUCKETS:
            expr = self._d.bucket("ts", _BUCKETS[group])
        elif group in _GROUP_COLUMNS:
            expr = _GROUP_COLUMNS[group]
        elif group is None:
            expr = None
        else:
            raise ValueError(f"group_by: unknown {group!r}")
        total_sql = self._d.q(f"SELECT {_SUMS} FROM usage_records{where}")
        group_sql = self._d.q(f"SELECT {expr} AS g, {_SUMS} FROM usage_records{where} GROUP BY {expr} ORDER BY g") \
            if expr else None

        def run(txn: Any) -> tuple[list[Any], Any]:
            rows: list[Any] = []
            if group_sql is not None:
                txn.execute(group_sql, args)
                rows = txn.fetchall()
            txn.execute(total_sql, args)
            return rows, txn.fetchone()

        rows, total = await self._pool.runInteraction(run)
        groups = []
        for row in rows:
            g = row[0]
            if group in _BUCKETS and g is not None:
                g = bucket_label(float(g), _BUCKETS[group])
            groups.append(_totals(g, row[1:]))
        return groups, _totals(None, total)

    async def spend_by_key(self, since: float) -> dict[str, tuple[int, float]]:
        rows = await self._pool.runQuery(self._d.q(
            "SELECT key_id, COALESCE(SUM(prompt_tokens + completion_tokens), 0), COALESCE(SUM(cost_usd), 0) "
            "FROM usage_records WHERE ts >= ? AND key_id IS NOT NULL GROUP BY key_id"), (since,))
        return {r[0]: (int(r[1]), float(r[2])) for r in rows}

    # ------------------------------------------------------------ test / tooling helpers
    async def count_usage(self, key_id: str | None = None) -> int:
        if key_id is None:
            rows = await self._pool.runQuery("SELECT COUNT(*) FROM usage_records")
        else:
            rows = await self._pool.runQuery(self._d.q("SELECT COUNT(*) FROM usage_records WHERE key_id = ?"),
                                             (key_id,))
        return int(rows[0][0])


def _totals(group: Any, row: Any) -> UsageTotals:
    return UsageTotals(group, int(row[0] or 0), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0),
                       int(row[4] or 0), float(row[5] or 0.0))


__all__ = ["Dialect", "SCHEMA_VERSION", "SQLITE", "SqlStore"]
