"""Virtual keys: making them, hashing them, and the in-memory cache that authentication reads.

Authentication never waits for the database: every key is loaded at start (by hash) and the
cache is refreshed from the store every `REFRESH_SECONDS` (only rows changed since the last
look; a full reload every `FULL_RELOAD_SECONDS` as a safety net).  Changes made through this
instance's admin API are applied to the cache at once, so a revoked key is refused at the
next request here and within a second everywhere else.  With a shared state backend,
``notify`` publishes each such change and the other instances call `KeyCache.poke` to
re-read at once (`fproxy.state.shared`); the poll stays as the safety net.
"""
from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from fproxy.store.base import KeyRecord, Store

log = Logger()

KEY_PREFIX = "sk-fp-"
REFRESH_SECONDS = 0.5
FULL_RELOAD_SECONDS = 60.0
#: rows whose updated_at is this close to the last one seen are read again (commit races, clock skew)
SLACK_SECONDS = 2.0


def new_key() -> str:
    """``sk-fp-`` + 32 URL-safe random characters (192 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def key_hash(key: str) -> str:
    """SHA-256 hex: what the store keeps.  (Keys are random, so no salt or slow hash is needed.)"""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_prefix(key: str) -> str:
    """The first 10 characters (``sk-fp-abcd``): enough to recognise a key, useless to guess it."""
    return key[:10]


class KeyCache:
    """hash -> `KeyRecord` for every stored key (revoked ones too, so they are refused quickly)."""

    def __init__(self, store: Store, clock: Any, interval: float = REFRESH_SECONDS) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_id: dict[str, KeyRecord] = {}
        self._seen = 0.0
        self._last_full = 0.0
        self._loop: LoopingCall | None = None
        self._refreshing: Deferred[None] | None = None
        self._again = False
        self.loaded = False
        #: told of every change made here (`put`): publishes it to other instances
        self.notify: Callable[[KeyRecord], None] | None = None

    # ------------------------------------------------------------ reads (hot path)
    def by_hash(self, digest: str) -> KeyRecord | None:
        return self._by_hash.get(digest)

    def get(self, key_id: str) -> KeyRecord | None:
        return self._by_id.get(key_id)

    def __len__(self) -> int:
        return sum(1 for r in self._by_id.values() if r.revoked_at is None)

    def ids(self) -> list[str]:
        return list(self._by_id)

    # ------------------------------------------------------------ writes
    def put(self, rec: KeyRecord) -> None:
        """Apply one record (created, changed or revoked by this instance's admin API) at once."""
        self._apply(rec)
        if self.notify is not None:
            self.notify(rec)

    def _apply(self, rec: KeyRecord) -> None:
        old = self._by_id.get(rec.id)
        if old is not None and old.key_hash != rec.key_hash:
            self._by_hash.pop(old.key_hash, None)
        self._by_id[rec.id] = rec
        self._by_hash[rec.key_hash] = rec
        self._seen = max(self._seen, rec.updated_at)

    async def load(self) -> None:
        """Read every key (at start, and now and then as a safety net)."""
        recs = await self._store.list_keys(include_revoked=True)
        self._by_hash = {r.key_hash: r for r in recs}
        self._by_id = {r.id: r for r in recs}
        self._seen = max((r.updated_at for r in recs), default=0.0)
        self._last_full = self._clock.seconds()
        self.loaded = True

    async def refresh(self) -> None:
        """Read the keys changed since the last look."""
        if self._clock.seconds() - self._last_full >= FULL_RELOAD_SECONDS:
            await self.load()
            return
        for rec in await self._store.keys_updated_since(self._seen - SLACK_SECONDS):
            self._apply(rec)

    def poke(self) -> None:
        """Another instance changed a key: re-read now (once more after a refresh already running)."""
        if not self.loaded:
            return
        if self._refreshing is not None:
            self._again = True
            return
        d = self._refreshing = Deferred.fromCoroutine(self.refresh())

        def done(result: Any) -> None:
            self._refreshing = None
            if self._again:
                self._again = False
                self.poke()

        d.addErrback(lambda f: log.failure("refreshing the key cache failed; keeping the cached keys", f))
        d.addBoth(done)

    # ------------------------------------------------------------ periodic refresh
    def start(self) -> None:
        if self._loop is not None:
            return
        loop = self._loop = LoopingCall(self._tick)
        loop.clock = self._clock
        loop.start(self._interval, now=False).addErrback(
            lambda f: log.failure("the key cache refresh loop stopped", f))

    def _tick(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self.refresh())
        # one failed refresh (database busy, connection lost) must not stop the loop
        d.addErrback(lambda f: log.failure("refreshing the key cache failed; keeping the cached keys", f))
        return d

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
