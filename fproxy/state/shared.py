"""Keeping several instances in step through the shared state (Redis): key changes and upstream keys.

With ``state.url = "redis://..."`` each instance keeps its fast local views (the key cache, each
provider's key pool, read on the hot path without a round trip) and this module keeps them
in step:

- virtual keys: a change made through one instance's admin API is published (``key``) and
  every other instance re-reads the changed rows from the store at once
  (`fproxy.store.keys.KeyCache.poke`); the cache's 0.5 s poll stays as the safety net.
- upstream keys: a key disabled (401/403) or cooling down (429/402) on one instance is
  written to a hash per provider (``<prefix>up:<provider>``, field = a fingerprint of the key,
  never the key) and published (``upkey``); the others apply it to their pool at once, and
  every `REFRESH_SECONDS` re-read the hashes (messages missed while disconnected, instances
  started later).  The hash expires `SHARED_TTL` after its last change.
- queue counts: each instance's calls waiting and running, summed in ``/health``
  (`QueueCounts`).
- round robin: every pick advances a shared counter (``INCR``, not awaited) and its answer
  moves the local cursor to the shared position; each refresh reads it too.  Instances so
  follow one sequence of keys, approximately: exact turns would need a round trip to Redis
  before every upstream call, which the hot path does not make.

After a reconnect everything is re-read and the budgets re-seeded from the ledger (Redis may
have restarted empty).  Pools are found through a callable, so pools rebuilt by a config
reload are picked up at the next refresh.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import orjson
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from fproxy.providers.keypool import KeyPool, KeyState

log = Logger()

REFRESH_SECONDS = 2.0
#: how long the shared record of disabled / cooling upstream keys outlives its last change
SHARED_TTL = 3600.0

UPKEY_SET = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local write = true
if cur then
  local kind = string.sub(cur, 1, 1)
  if kind == 'd' and ARGV[2] == 'c' then write = false end
  if kind == 'c' and ARGV[2] == 'c' and tonumber(string.sub(cur, 3)) >= tonumber(ARGV[3]) then write = false end
end
if write then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3]) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""


#: an instance's queue counts not refreshed for this long are dropped (it stopped or died)
QUEUE_STALE = 3 * REFRESH_SECONDS

QUEUE_EXCHANGE = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local stale = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], now .. ':' .. ARGV[2] .. ':' .. ARGV[3])
redis.call('EXPIRE', KEYS[1], stale * 2)
local all = redis.call('HGETALL', KEYS[1])
local n, w, r = 0, 0, 0
for i = 1, #all, 2 do
  local at, ww, rr = string.match(all[i + 1], '^(%d+):(%d+):(%d+)$')
  if at and now - tonumber(at) <= stale then
    n, w, r = n + 1, w + tonumber(ww), r + tonumber(rr)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return {n, w, r}
"""


def fingerprint(provider: str, k: KeyState) -> str:
    """A name for an upstream key that every instance computes alike, and that does not reveal it."""
    if k.source is not None:
        return f"src{k.index}"
    return hashlib.sha256(f"{provider}\0{k.key}".encode()).hexdigest()[:24]


class UpstreamKeySync:
    """Shares the disabled / cooling state of upstream keys, and the round-robin cursors."""

    def __init__(self, state: Any, providers: Callable[[], dict[str, Any]], clock: Any) -> None:
        self._state = state
        self._providers = providers
        self._clock = clock
        self._pools: dict[str, KeyPool] = {}
        self._by_fp: dict[str, dict[str, KeyState]] = {}

    # ------------------------------------------------------------ hooking the pools
    def attach(self) -> None:
        """Hook every provider's pool (new ones after a reload too)."""
        current = {name: p.pool for name, p in self._providers().items()}
        for name, pool in current.items():
            if self._pools.get(name) is pool:
                continue
            self._pools[name] = pool
            self._by_fp[name] = {fingerprint(name, k): k for k in pool.keys}
            pool.listener = self._listener(name)
            pool.picked = self._picker(name) if len(pool.keys) > 1 else None
        for name in [n for n in self._pools if n not in current]:
            del self._pools[name], self._by_fp[name]

    def _listener(self, name: str) -> Callable[[KeyState], None]:
        def changed(k: KeyState) -> None:
            self.publish(name, k)
        return changed

    def _picker(self, name: str) -> Callable[[KeyPool], None]:
        def picked(pool: KeyPool) -> None:
            if not self._state.up:
                return
            d = Deferred.fromCoroutine(self._state.command("INCR", self._state.key(f"rr:{name}")))
            d.addCallbacks(lambda n: pool.set_cursor(int(n)), lambda f: None if f.check(*_down()) else f)
            d.addErrback(lambda f: log.failure("shared state: advancing the round-robin cursor failed", f))
        return picked

    # ------------------------------------------------------------ out
    def publish(self, name: str, k: KeyState, quiet: bool = False) -> None:
        """Write one key's state and tell the other instances (not awaited)."""
        if not self._state.up:
            return
        fp = fingerprint(name, k)
        now = self._clock.seconds()
        kind, value = ("d", now) if k.disabled else ("c", k.cooldown_until)
        ttl = SHARED_TTL + max(0.0, k.cooldown_until - now)
        msg = orjson.dumps({"t": "upkey", "from": self._state.instance, "p": name, "f": fp, "k": kind,
                            "v": value}).decode()
        d = Deferred.fromCoroutine(self._state.call_script(
            UPKEY_SET, [self._state.key(f"up:{name}")], [fp, kind, repr(float(value)), int(ttl * 1000),
                                                          self._state.channel, msg]))
        d.addErrback(lambda f: None if f.check(*_down()) else f)
        d.addErrback(lambda f: log.failure("shared state: publishing an upstream key's state failed", f))
        if k.disabled and not quiet:  # (cooldowns are frequent, and the gateway logs each 429 already)
            log.info("shared state: upstream key {key} of {provider} disabled for every instance", key=k.label(),
                     provider=name)

    # ------------------------------------------------------------ in
    def on_message(self, msg: dict[str, Any]) -> None:
        name, fp = msg.get("p"), msg.get("f")
        if not isinstance(name, str) or not isinstance(fp, str):
            return
        self.attach()
        self._apply(name, fp, str(msg.get("k")), msg.get("v"))

    def _apply(self, name: str, fp: str, kind: str, value: Any) -> None:
        pool = self._pools.get(name)
        k = self._by_fp.get(name, {}).get(fp)
        if pool is None or k is None:
            return  # a key this instance does not have (another config)
        try:
            v = float(value)
        except (TypeError, ValueError):
            return
        if kind == "d" and not k.disabled:
            log.warn("upstream key {key} of {provider} was refused on another instance; it leaves rotation here too",
                     key=k.label(), provider=name)
            pool.apply_shared(k, True, 0.0)
        elif kind == "c":
            pool.apply_shared(k, False, v)

    def publish_all(self) -> None:
        """After a reconnect: tell the others what happened here while Redis was away."""
        self.attach()
        now = self._clock.seconds()
        for name, pool in self._pools.items():
            for k in pool.keys:
                if k.disabled or k.cooldown_until > now:
                    self.publish(name, k, quiet=True)

    async def resync(self) -> None:
        """Re-read every provider's shared record (at each refresh and after a reconnect)."""
        self.attach()
        if not self._state.up:
            return
        for name, pool in list(self._pools.items()):
            entries = await self._state.command("HGETALL", self._state.key(f"up:{name}"))
            for fp, value in _pairs(entries):
                kind, _, v = str(value).partition(":")
                self._apply(name, fp, kind, v)
            if pool.picked is not None:
                n = await self._state.command("GET", self._state.key(f"rr:{name}"))
                if n is not None:
                    pool.set_cursor(int(n))


class QueueCounts:
    """Calls waiting for a provider slot and running, per instance and summed over all of them.

    Every refresh, each instance writes its own counts (one field of ``<prefix>queue``, stamped
    with Redis' clock) and reads everyone's in the same script; fields not refreshed for
    `QUEUE_STALE` seconds (a stopped or dead instance) are dropped.  ``/health`` shows the sum.
    """

    def __init__(self, state: Any, counts: Callable[[], tuple[int, int]]) -> None:
        self._state = state
        self._counts = counts
        #: {"instances", "waiting", "running"} as of the last refresh; None while Redis is away
        self.cluster: dict[str, int] | None = None
        self.left = False

    async def exchange(self) -> None:
        if self.left:  # a refresh still running when the instance stopped must not write again
            return
        if not self._state.up:
            self.cluster = None
            return
        waiting, running = self._counts()
        r = await self._state.call_script(QUEUE_EXCHANGE, [self._state.key("queue")],
                                          [self._state.instance, int(waiting), int(running), int(QUEUE_STALE)])
        self.cluster = {"instances": int(r[0]), "waiting": int(r[1]), "running": int(r[2])}

    async def leave(self) -> None:
        """Stopping: this instance's counts go at once."""
        self.left = True
        if self._state.up:
            await self._state.command("HDEL", self._state.key("queue"), self._state.instance)


class SharedSync(Service):
    """Owns the refresh loop and the hooks; started and stopped with the gateway."""

    def __init__(self, state: Any, keys: Any, upstream: UpstreamKeySync, clock: Any,
                 reseed: Callable[[], Any] | None = None, interval: float = REFRESH_SECONDS,
                 queue: QueueCounts | None = None) -> None:
        self.state = state
        self.keys = keys
        self.upstream = upstream
        self.clock = clock
        self.reseed = reseed
        self.interval = interval
        self.queue = queue
        self._loop: LoopingCall | None = None
        keys.notify = lambda rec: state.publish("key", {"id": rec.id})
        state.subscribe("key", lambda msg: keys.poke())
        state.subscribe("upkey", upstream.on_message)
        state.on_connect(self.caught_up)

    def caught_up(self) -> None:
        """(Re)connected: re-read what may have been missed."""
        self.keys.poke()
        self.upstream.publish_all()
        self._kick()
        if self.reseed is not None and self.keys.loaded:
            d = Deferred.fromCoroutine(self.reseed())
            d.addErrback(lambda f: log.failure("shared state: re-seeding the budgets failed", f))

    def _kick(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._refresh())
        d.addErrback(lambda f: None if f.check(*_down()) else f)
        d.addErrback(lambda f: log.failure("shared state: the periodic refresh failed", f))
        return d

    async def _refresh(self) -> None:
        await self.upstream.resync()
        if self.queue is not None:
            await self.queue.exchange()

    def health(self) -> dict[str, Any]:
        """The state's health for ``/health``, with the instances' summed queue counts."""
        out: dict[str, Any] = dict(self.state.health())
        if self.queue is not None and self.queue.cluster is not None and out.get("ok"):
            out["cluster"] = dict(self.queue.cluster)
        return out

    def startService(self) -> None:
        super().startService()
        self.upstream.attach()
        loop = self._loop = LoopingCall(self._kick)
        loop.clock = self.clock
        loop.start(self.interval, now=False).addErrback(lambda f: log.failure("shared state refresh stopped", f))

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self.queue is None:
            return None
        d = Deferred.fromCoroutine(self.queue.leave())
        d.addErrback(lambda f: None if f.check(*_down()) else f)
        d.addErrback(lambda f: log.failure("shared state: removing this instance's queue counts failed", f))
        return d


def wire_shared_state(svc: Any) -> SharedSync | None:
    """Connect a gateway (`fproxy.service.GatewayService`) to its shared state, if it has one.

    Adds a `SharedSync` child and gives ``/health`` the state's health.  Nothing for ``memory:``.
    """
    state = svc.state
    if not hasattr(state, "subscribe"):
        return None
    upstream = UpstreamKeySync(state, lambda: svc.providers, svc.reactor)

    async def reseed() -> None:
        await svc.limits.seed(svc.store)

    def counts() -> tuple[int, int]:
        waiting = sum(1 for p in svc.providers.values() for w in p.limiter.waiting if not w.deferred.called)
        return waiting, max(0, len(svc.calls) - waiting)

    sync = SharedSync(state, svc.keys, upstream, svc.reactor, reseed, queue=QueueCounts(state, counts))
    sync.setServiceParent(svc)
    svc.api.state_health = sync.health
    return sync


def _pairs(entries: Any) -> list[tuple[str, Any]]:
    if isinstance(entries, dict):
        return [(str(k), v) for k, v in entries.items()]
    if isinstance(entries, list):
        return [(str(entries[i]), entries[i + 1]) for i in range(0, len(entries) - 1, 2)]
    return []


def _down() -> tuple[type[BaseException], ...]:
    from fproxy.state.redis import _DOWN

    return _DOWN
