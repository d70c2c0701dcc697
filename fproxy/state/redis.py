"""Shared state in Redis (``state.url = "redis://[[user]:password@]host[:port][/db]"``), with txredisapi.

Every instance pointed at the same Redis (and ``state.prefix``) shares its rate-limit windows,
concurrency slots and spend counters, so a key's limits hold across instances.  Each
check-and-add runs as one Lua script (atomic in Redis); times come from Redis' own clock
(``TIME``) so that instances whose clocks differ still agree on a window.

- windows: a sorted set of entries (member -> time in ms) and a hash of their amounts plus a
  running ``_sum``; entries older than the window are removed by the next call.
- slots (concurrency): a sorted set of leases (member -> expiry); a lease lasts `SLOT_LEASE`
  seconds, so an instance that dies holding slots does not hold them for ever.
- counters: plain numbers (``INCRBYFLOAT``), with ``PEXPIRE`` for a TTL.

Redis away: the command connection is lost (or a reply takes longer than `REPLY_TIMEOUT`)
-> every operation goes to an in-process `MemoryState` (per-instance limits), a warning is
logged once, `health` says so, and txredisapi reconnects in the background (a backoff capped
at `MAX_RECONNECT_DELAY`); once it is back, the shared state is used again.  Handles (window
entries, slots) remember which backend gave them, so a call admitted before an outage is
settled where it was counted.  Counter values read from Redis are mirrored into the memory
state, so budgets keep their last known spend during an outage.

Besides the `fproxy.state.base.State` operations, this backend carries the messages that keep
instances in step (`publish` / `subscribe`: key changes, upstream keys disabled or cooling;
see `fproxy.state.shared`) on the channel ``<prefix>events:<db>``, and `call_script` /
`command` for those helpers.  ``txredisapi`` imports the global reactor, so this module is
imported only when a ``redis://`` URL is configured (by then twistd has installed it).
"""
from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from typing import Any

import orjson
import txredisapi
from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger

from fproxy.state.base import Taken
from fproxy.state.memory import MemoryState
from fproxy.state.redis_url import parse_url

log = Logger()

REPLY_TIMEOUT = 1.0
CONNECT_TIMEOUT = 2.0
MAX_RECONNECT_DELAY = 3.0
#: seconds a concurrency slot is held at most (a call longer than this stops counting)
SLOT_LEASE = 3600.0
#: how long after start a Redis still unreachable is reported
STARTUP_GRACE = 2.0

#: errors that mean "Redis is not answering": fall back to memory
_DOWN = (txredisapi.ConnectionError, ConnectionDone, ConnectionLost)

WINDOW_TAKE = """
local z, h = KEYS[1], KEYS[2]
local amount, limit, span = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZRANGEBYSCORE', z, '-inf', now - span)
if #old > 0 then
  local gone = 0
  for i = 1, #old, 500 do
    local part = {}
    for j = i, math.min(i + 499, #old) do part[#part + 1] = old[j] end
    for _, v in ipairs(redis.call('HMGET', h, unpack(part))) do
      if v then gone = gone + tonumber(v) end
    end
    redis.call('HDEL', h, unpack(part))
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now - span)
  redis.call('HINCRBYFLOAT', h, '_sum', -gone)
end
local used = 0
if redis.call('ZCARD', z) == 0 then
  redis.call('DEL', h)
else
  used = tonumber(redis.call('HGET', h, '_sum') or '0')
end
if used > 0 and used + amount > limit then
  local entries = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
  local remaining, wait = used, span
  for i = 1, #entries, 2 do
    remaining = remaining - tonumber(redis.call('HGET', h, entries[i]) or '0')
    if remaining <= 0 or remaining + amount <= limit then
      wait = math.max(0, tonumber(entries[i + 1]) + span - now)
      break
    end
  end
  return {0, tostring(used), tostring(wait)}
end
redis.call('ZADD', z, now, ARGV[4])
redis.call('HSET', h, ARGV[4], ARGV[1])
redis.call('HINCRBYFLOAT', h, '_sum', amount)
redis.call('PEXPIRE', z, span + 1000)
redis.call('PEXPIRE', h, span + 1000)
return {1, tostring(used), ''}
"""

WINDOW_SET = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if not old then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBYFLOAT', KEYS[2], '_sum', tonumber(ARGV[2]) - tonumber(old))
return 1
"""

SLOT_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) + 1 > tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 1000)
return 1
"""

SLOT_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""

COUNTER_TAKE = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v + 1 > tonumber(ARGV[1]) then return 0 end
redis.call('INCRBYFLOAT', KEYS[1], 1)
return 1
"""

COUNTER_ADD = """
local v = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
"""

COUNTER_RAISE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then
  redis.call('SET', KEYS[1], ARGV[1])
  if ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return ARGV[1]
end
if ARGV[2] ~= '' and redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return tostring(cur)
"""


@frozen
class _Entry:
    """A window entry counted in Redis (a handle for `RedisState.window_set`)."""

    member: str


@frozen
class _Lease:
    """A concurrency slot held in Redis."""

    member: str


class _Factory(txredisapi.RedisFactory):  # type: ignore[misc]
    """One auto-reconnecting connection; tells its owner when it comes and goes."""

    initialDelay = 0.3
    maxDelay = MAX_RECONNECT_DELAY

    def __init__(self, owner: RedisState, role: str, **kw: Any) -> None:
        super().__init__(f"{owner.url.host}:{owner.url.port}", kw.pop("dbid", None), 1, isLazy=True,
                         charset="utf-8", convertNumbers=False, **kw)
        self.owner = owner
        self.role = role
        self.deferred.addErrback(self._refused)  # txredisapi reports a failed AUTH / SELECT through it

    def _refused(self, failure: Any) -> None:
        log.warn("shared state: {where} refused the connection: {why}; retrying", where=self.owner.url.where,
                 why=failure.getErrorMessage())

    def stopTrying(self) -> Deferred[None]:
        """txredisapi gives up for good after a failed AUTH or SELECT (a wrong password, or a Redis
        still loading its data after a restart); keep retrying with the backoff instead, so that a
        Redis that comes back is used again.  (`disconnect` still stops everything.)"""
        return succeed(None)

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.owner._connection_made(self.role, conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.owner._connection_lost(self.role)


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.owner._message(message)


class _SubscriberFactory(_Factory):
    protocol = _Subscriber


class RedisState(Service):
    """`fproxy.state.base.State` in Redis, falling back to memory while Redis is away.

    A `twisted.application.service.Service`: started, it connects (and keeps reconnecting);
    stopped, it closes its connections.
    """

    def __init__(self, url: str, prefix: str, clock: Any, reply_timeout: float = REPLY_TIMEOUT) -> None:
        self.url = parse_url(url)
        self.prefix = prefix
        self.clock = clock
        self.memory = MemoryState(clock)
        self.instance = secrets.token_hex(6)
        self.channel = f"{prefix}events:{self.url.db}"
        self._reply_timeout = reply_timeout
        self._seq = itertools.count(1)
        self._conn: Any = None
        self._sub: Any = None
        self._subscribed = False
        self._factories: list[_Factory] = []
        self._handlers: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self._on_connect: list[Callable[[], Any]] = []
        self._waiters: list[Deferred[None]] = []
        self._reported_down = False
        self._ever_up = False
        self._grace_call: Any = None

    # ------------------------------------------------------------ lifecycle
    def startService(self) -> None:
        super().startService()
        self.connect()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return self.disconnect()

    def connect(self) -> None:
        """Start connecting (commands and the subscription); returns at once."""
        if self._factories:
            return
        u = self.url
        common = dict(password=u.password, username=u.username)
        # database 0 needs no SELECT: one round trip (and one way to fail) less per connection
        cmd = _Factory(self, "commands", dbid=u.db or None, replyTimeout=self._reply_timeout, **common)
        sub = _SubscriberFactory(self, "events", **common)
        self._factories = [cmd, sub]
        for f in self._factories:
            f.startConnecting(HostnameEndpoint(self.clock, u.host, u.port, timeout=CONNECT_TIMEOUT))
        self._grace_call = self.clock.callLater(STARTUP_GRACE, self._startup_check)
        log.info("shared state: connecting to {where} (prefix {prefix!r})", where=u.where, prefix=self.prefix)

    def disconnect(self) -> Deferred[Any]:
        if self._grace_call is not None and self._grace_call.active():
            self._grace_call.cancel()
        factories, self._factories = self._factories, []
        self._conn = self._sub = None
        self._subscribed = False
        return DeferredList([f.disconnect() for f in factories], consumeErrors=True)

    def connected(self) -> Deferred[None]:
        """Fires once commands and events both flow (at once if they do)."""
        if self.up:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        return d

    def on_connect(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` each time the shared state is (re)established: catch up on what was missed."""
        self._on_connect.append(callback)

    # ------------------------------------------------------------ health
    @property
    def up(self) -> bool:
        return self._conn is not None and self._subscribed

    def health(self) -> dict[str, Any]:
        """For ``/health``: ``ok`` false while Redis is away (limits are per instance then)."""
        out: dict[str, Any] = {"backend": "redis", "url": self.url.where, "ok": self.up}
        if not self.up:
            out["detail"] = "Redis is unreachable: limits are counted per instance until it is back"
        return out

    def _connection_made(self, role: str, conn: Any) -> None:
        if role == "commands":
            self._conn = conn
            self._maybe_up()
        else:
            self._sub = conn
            conn.subscribe(self.channel).addCallbacks(lambda _: self._subscribed_now(conn),
                                                      lambda f: log.failure("subscribing to {channel} failed", f,
                                                                            channel=self.channel))

    def _subscribed_now(self, conn: Any) -> None:
        if self._sub is conn:
            self._subscribed = True
            self._maybe_up()

    def _maybe_up(self) -> None:
        if not self.up:
            return
        self._ever_up = True
        if self._reported_down:
            log.info("shared state: {where} is back; limits are shared again", where=self.url.where)
            self._reported_down = False
        else:
            log.info("shared state: connected to {where}", where=self.url.where)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        for cb in self._on_connect:
            try:
                result = cb()
            except Exception:  # noqa: BLE001 - one catch-up failing must not stop the others
                log.failure("shared state: catching up after connecting failed")
                continue
            if isinstance(result, Deferred):
                result.addErrback(lambda f: log.failure("shared state: catching up after connecting failed", f))

    def _connection_lost(self, role: str) -> None:
        if role == "commands":
            self._conn = None
        else:
            self._sub = None
            self._subscribed = False
        if self._factories:  # not stopping
            self._report_down()

    def _report_down(self) -> None:
        if not self._reported_down:
            self._reported_down = True
            log.warn("shared state: lost {where}; serving with per-instance limits until it is back",
                     where=self.url.where)

    def _startup_check(self) -> None:
        self._grace_call = None
        if not self.up and self._factories and not self._reported_down and not self._ever_up:
            self._reported_down = True
            log.warn("shared state: {where} is unreachable; serving with per-instance limits until it is there",
                     where=self.url.where)

    # ------------------------------------------------------------ low level
    def key(self, name: str) -> str:
        return self.prefix + name

    def _member(self) -> str:
        return f"{self.instance}:{next(self._seq)}"

    async def call_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script (EVALSHA, loading it when needed).  @raise txredisapi.ConnectionError: when down."""
        conn = self._conn
        if conn is None:
            raise txredisapi.ConnectionError("not connected")
        try:
            return await conn.eval(script, keys, [_arg(a) for a in args])
        except txredisapi.TimeoutError:
            # the connection is aborted by txredisapi; say so now rather than when it closes
            self._conn = None
            self._report_down()
            raise

    async def command(self, *args: Any) -> Any:
        """One Redis command.  @raise txredisapi.ConnectionError: when down."""
        conn = self._conn
        if conn is None:
            raise txredisapi.ConnectionError("not connected")
        return await conn.execute_command(*[_arg(a) for a in args])

    async def _shared(self, script: str, keys: list[str], args: list[Any]) -> tuple[bool, Any]:
        """(True, reply) from Redis, or (False, None) when it is away (the caller falls back to memory)."""
        if self._conn is None:
            return False, None
        try:
            return True, await self.call_script(script, keys, args)
        except _DOWN:
            return False, None
        except txredisapi.RedisError:
            log.failure("shared state: a Redis script failed; using the per-instance state for this call")
            return False, None

    # ------------------------------------------------------------ messages between instances
    def publish(self, kind: str, payload: dict[str, Any]) -> None:
        """Tell the other instances (fire and forget; nothing is sent while Redis is away)."""
        if self._conn is None:
            return
        msg = orjson.dumps({"t": kind, "from": self.instance, **payload}).decode()
        d = Deferred.fromCoroutine(self.command("PUBLISH", self.channel, msg))
        d.addErrback(_ignore_down, "publishing")

    def subscribe(self, kind: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Call ``handler(message)`` for every message of ``kind`` from another instance."""
        self._handlers.setdefault(kind, []).append(handler)

    def _message(self, raw: Any) -> None:
        try:
            msg = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError):
            log.warn("shared state: ignoring a malformed message on {channel}", channel=self.channel)
            return
        if not isinstance(msg, dict) or msg.get("from") == self.instance:
            return
        for handler in self._handlers.get(str(msg.get("t")), ()):
            try:
                handler(msg)
            except Exception:  # noqa: BLE001 - a bad message must not stop the subscription
                log.failure("shared state: handling a {kind} message failed", kind=msg.get("t"))

    # ------------------------------------------------------------ windows
    async def window_take(self, key: str, amount: float, limit: float, window: float) -> Taken:
        member = self._member()
        ok, r = await self._shared(WINDOW_TAKE, [self.key(f"w:{key}"), self.key(f"w:{key}:a")],
                                   [amount, limit, int(window * 1000), member])
        if not ok:
            return await self.memory.window_take(key, amount, limit, window)
        used = float(r[1])
        if int(r[0]) != 1:
            return Taken(False, used, float(r[2]) / 1000.0)
        return Taken(True, used, None, _Entry(member))

    async def window_set(self, key: str, handle: Any, amount: float) -> None:
        if not isinstance(handle, _Entry):
            await self.memory.window_set(key, handle, amount)
            return
        await self._shared(WINDOW_SET, [self.key(f"w:{key}"), self.key(f"w:{key}:a")], [handle.member, amount])

    # ------------------------------------------------------------ slots
    async def slot_take(self, key: str, limit: float) -> Any:
        member = self._member()
        ok, r = await self._shared(SLOT_TAKE, [self.key(f"s:{key}")], [limit, int(SLOT_LEASE * 1000), member])
        if not ok:
            return await self.memory.slot_take(key, limit)
        return _Lease(member) if int(r) == 1 else None

    async def slot_release(self, key: str, handle: Any) -> None:
        if not isinstance(handle, _Lease):
            await self.memory.slot_release(key, handle)
            return
        if self._conn is None:
            return  # the lease runs out by itself
        try:
            await self.command("ZREM", self.key(f"s:{key}"), handle.member)
        except _DOWN:
            pass

    async def slot_count(self, key: str) -> int:
        """Slots held now (leases not yet run out)."""
        ok, r = await self._shared(SLOT_COUNT, [self.key(f"s:{key}")], [])
        if not ok:
            return int(await self.memory.counter_get(key))
        return int(r)

    # ------------------------------------------------------------ counters
    async def counter_take(self, key: str, limit: float) -> bool:
        ok, r = await self._shared(COUNTER_TAKE, [self.key(f"c:{key}")], [limit])
        if not ok:
            return await self.memory.counter_take(key, limit)
        return int(r) == 1

    async def counter_add(self, key: str, amount: float, ttl: float | None = None) -> float:
        ok, r = await self._shared(COUNTER_ADD, [self.key(f"c:{key}")], [amount, _ms(ttl)])
        if not ok:
            return await self.memory.counter_add(key, amount, ttl)
        value = float(r)
        await self.memory.counter_set(key, value, ttl)  # the last known value, for an outage
        return value

    async def counter_get(self, key: str) -> float:
        if self._conn is not None:
            try:
                r = await self.command("GET", self.key(f"c:{key}"))
            except _DOWN:
                pass
            else:
                value = float(r) if r is not None else 0.0
                await self.memory.counter_raise(key, value)
                return value
        return await self.memory.counter_get(key)

    async def counter_set(self, key: str, value: float, ttl: float | None = None) -> None:
        await self.memory.counter_set(key, value, ttl)
        if self._conn is not None:
            args: list[Any] = ["SET", self.key(f"c:{key}"), value]
            if ttl is not None:
                args += ["PX", _ms(ttl)]
            try:
                await self.command(*args)
            except _DOWN:
                pass

    async def counter_raise(self, key: str, value: float, ttl: float | None = None) -> float:
        mine = await self.memory.counter_raise(key, value, ttl)
        ok, r = await self._shared(COUNTER_RAISE, [self.key(f"c:{key}")], [value, _ms(ttl)])
        if not ok:
            return mine
        shared = float(r)
        await self.memory.counter_raise(key, shared, ttl)
        return shared


def _arg(a: Any) -> Any:
    """Redis arguments: floats written in full (``repr``), not as txredisapi formats them."""
    if isinstance(a, float):
        return repr(a) if a != int(a) else str(int(a))
    return a


def _ms(ttl: float | None) -> Any:
    return "" if ttl is None else int(ttl * 1000)


def _ignore_down(failure: Any, what: str) -> None:
    if failure.check(*_DOWN):
        return None
    log.failure("shared state: {what} failed", failure, what=what)
    return None
