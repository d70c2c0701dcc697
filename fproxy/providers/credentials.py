"""Credential sources: upstream tokens that are fetched, cached and refreshed instead of configured.

A provider takes, besides (or instead of) static ``keys``:

- ``credential = "env:NAME"``: the environment variable, re-read every ``credential_ttl``;
- ``credential = "file:PATH"`` or ``"file:PATH#dotted.json.path"`` (``~`` expanded): the file's
  text, or one value of its JSON (e.g. a CLI's stored OAuth token,
  ``file:~/.codex/auth.json#tokens.access_token``);
- ``credential = "command:..."``: a command's standard output (its last non-empty line),
  e.g. ``command:gcloud auth print-access-token``.  The command line is split like a shell
  would (``shlex``) but run *without* a shell through ``reactor.spawnProcess``, so it never
  blocks the reactor; it gets ``COMMAND_TIMEOUT`` seconds and at most ``MAX_OUTPUT`` bytes;
- ``[provider.oauth]``: the OAuth 2.0 refresh-token grant (``token_url``, ``client_id``,
  optional ``client_secret`` and ``scope``, ``refresh_token``), POSTed form-encoded with the
  provider's own HTTP client; a rotated refresh token is kept (in memory) for the next refresh.

Values are cached: env / file / command ones for ``credential_ttl`` seconds (default 300),
OAuth tokens until shortly before ``expires_in`` runs out.  A 401/403 from the upstream
drops the cached value (`CredentialSource.invalidate`) so the gateway can fetch a fresh one
and retry once, unseen by the client.  Concurrent callers share one fetch.

A value that is a JSON object (a command's output, a file, or the object a ``#path`` selects)
may carry more than a token: ``{"token" | "access_token": ..., "headers": {...},
"expires_at": EPOCH_SECONDS | "expires_in": SECONDS}``.  That is the shape of GitLab's
``direct_access`` answer and GitHub's Copilot token exchange, so a ``command:curl ...`` can
feed those presets, extra headers included.

File reads run in the reactor's thread pool (`deferToThreadPool`), bounded to ``MAX_OUTPUT``
bytes, and only when the cached value has expired or was refused: never per request.

A source that fails raises `GatewayError` 503 naming the provider (``code:
credential_unavailable``); messages never contain a credential.
"""
from __future__ import annotations

import base64
import os
import shlex
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from attrs import define, field, frozen
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from fproxy.ir.errors import GatewayError

log = Logger()

SCHEMES = ("env", "file", "command")
DEFAULT_TTL = 300.0
MAX_OUTPUT = 64 * 1024
COMMAND_TIMEOUT = 30.0
OAUTH_TIMEOUT = 30.0
DEFAULT_OAUTH_LIFETIME = 3600.0


class CredentialError(Exception):
    """A credential source could not produce a value; the text is safe to show (no secret)."""


# ---------------------------------------------------------------- specs (pure, used by config)
@frozen
class SourceSpec:
    """A parsed ``credential`` string."""

    kind: str  # env | file | command
    target: str  # variable name | file path | command line
    json_path: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()

    def describe(self) -> str:
        """A label for logs and errors: the kind and target, never a value."""
        if self.kind == "command":
            return f"command:{self.argv[0] if self.argv else '?'}"
        if self.kind == "file":
            return f"file:{self.target}" + (f"#{'.'.join(self.json_path)}" if self.json_path else "")
        return f"{self.kind}:{self.target}"


def looks_like_source(value: str) -> bool:
    """True when ``value`` starts with a credential scheme (``env:``, ``file:``, ``command:``)."""
    scheme, sep, _ = value.partition(":")
    return bool(sep) and scheme in SCHEMES


def parse_spec(spec: str) -> SourceSpec:
    """``env:NAME`` / ``file:PATH[#a.b]`` / ``command:...`` -> `SourceSpec`.

    @raise ValueError: the message names what is wrong (the config turns it into a ConfigError).
    """
    scheme, sep, rest = spec.strip().partition(":")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f'"{spec[:40]}" is not a credential source (use env:NAME, file:PATH[#json.path] '
                         "or command:...)")
    rest = rest.strip()
    if scheme == "env":
        if not rest or not rest.replace("_", "a").isalnum():
            raise ValueError(f'env: needs a variable name, got "{rest}"')
        return SourceSpec("env", rest)
    if scheme == "file":
        path, _, jpath = rest.partition("#")
        if not path:
            raise ValueError("file: needs a path")
        parts = tuple(p for p in jpath.split(".") if p) if jpath else ()
        if jpath and not parts:
            raise ValueError(f'file:{path}#: "{jpath}" is not a dotted JSON path')
        return SourceSpec("file", os.path.expanduser(path), parts)
    try:
        argv = tuple(shlex.split(rest))
    except ValueError as e:
        raise ValueError(f"command: cannot split the command line: {e}") from None
    if not argv:
        raise ValueError("command: needs a command to run")
    return SourceSpec("command", rest, argv=argv)


# ---------------------------------------------------------------- values
@frozen
class Credential:
    """A fetched credential: the token, extra headers that go with it, and when it expires."""

    token: str = field(repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    expires_at: float | None = None  # reactor time


def _walk(obj: Any, path: tuple[str, ...]) -> Any:
    for i, part in enumerate(path):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            raise CredentialError(f"no value at JSON path {'.'.join(path[:i + 1])}")
    return obj


def _from_object(obj: dict[str, Any], now: float, ttl: float) -> Credential:
    """A JSON object credential (``token``/``access_token``, ``headers``, ``expires_at``/``expires_in``)."""
    token = obj.get("token") or obj.get("access_token")
    if not isinstance(token, str) or not token.strip():
        raise CredentialError('the JSON object has no "token" or "access_token" string')
    headers = obj.get("headers")
    pairs: tuple[tuple[str, str], ...] = ()
    if isinstance(headers, dict):
        pairs = tuple((str(k), str(v)) for k, v in headers.items()
                      if isinstance(v, (str, int)) and str(k).lower() not in ("authorization", "x-api-key", "api-key"))
    expires = now + ttl
    exp_at, exp_in = obj.get("expires_at"), obj.get("expires_in")
    if isinstance(exp_in, (int, float)) and not isinstance(exp_in, bool):
        expires = min(expires, now + _usable(float(exp_in)))
    elif isinstance(exp_at, (int, float)) and not isinstance(exp_at, bool):
        at = float(exp_at) / (1000.0 if exp_at > 1e12 else 1.0)
        expires = min(expires, now + _usable(at - now))
    return Credential(_clean(token), pairs, expires)


def _usable(lifetime: float) -> float:
    """How long to use a token that lives ``lifetime`` seconds: stop a little before it expires."""
    return max(0.0, lifetime - min(60.0, lifetime * 0.1))


def _clean(token: str) -> str:
    token = token.strip()
    if any(c in token for c in "\r\n\0"):
        raise CredentialError("the value contains a line break")
    return token


def interpret(text: str, json_path: tuple[str, ...], now: float, ttl: float) -> Credential:
    """Source output -> `Credential`: a JSON path's value, a JSON object, or the last non-empty line."""
    stripped = text.strip()
    if json_path or stripped.startswith("{"):
        try:
            obj = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            if json_path:
                raise CredentialError("the content is not valid JSON") from None
            obj = None
        if obj is not None:
            value = _walk(obj, json_path)
            if isinstance(value, dict):
                return _from_object(value, now, ttl)
            if not isinstance(value, str) or not value.strip():
                raise CredentialError("the value is not a non-empty string")
            return Credential(_clean(value), (), now + ttl)
    lines = [ln.strip() for ln in stripped.splitlines() if ln.strip()]
    if not lines:
        raise CredentialError("it produced nothing")
    return Credential(lines[-1], (), now + ttl)


# ---------------------------------------------------------------- sources
@define(eq=False)
class CredentialSource:
    """Caches one credential and fetches it again when it expires or is refused (single flight)."""

    provider: str
    clock: Any  # IReactorTime
    ttl: float = DEFAULT_TTL
    _value: Credential | None = field(default=None, repr=False)  # never in a repr: it is the secret
    _inflight: Deferred[None] | None = field(default=None, repr=False)
    _waiters: list[Deferred[Credential]] = field(factory=list, repr=False)
    fetches: int = 0  # how many times the source was asked (tests, logs)

    def describe(self) -> str:
        return "credential source"

    async def _fetch(self) -> Credential:
        raise NotImplementedError

    def cached(self) -> Credential | None:
        """The cached credential while it is still valid."""
        v = self._value
        if v is not None and (v.expires_at is None or self.clock.seconds() < v.expires_at):
            return v
        return None

    async def get(self) -> Credential:
        """The current credential, fetched when none is cached or it has expired.

        The fetch runs on its own: a caller that is cancelled (its client went away) stops
        waiting but does not cancel the fetch the other callers wait for.

        @raise GatewayError: 503 naming the provider when the source fails.
        """
        v = self.cached()
        if v is not None:
            return v
        d: Deferred[Credential] = Deferred()
        self._waiters.append(d)
        if self._inflight is None:
            self.fetches += 1
            running = Deferred.fromCoroutine(self._run())
            if not running.called:  # (a fetch that finished at once has reset _inflight already)
                self._inflight = running
        return await d

    async def _run(self) -> None:
        result: Credential | Failure
        try:
            result = self._value = await self._fetch()
        except Exception as e:  # noqa: BLE001 - any failure of the source becomes the provider's 503
            result = Failure(self._error(e))
        waiters, self._waiters, self._inflight = self._waiters, [], None
        for w in waiters:
            if not w.called:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached value (after a 401/403), unless it already changed since ``token``."""
        if self._value is not None and (token is None or self._value.token == token):
            self._value = None

    def _error(self, e: BaseException) -> GatewayError:
        reason = str(e) if isinstance(e, (CredentialError, GatewayError)) else type(e).__name__
        if isinstance(e, GatewayError):
            reason = e.message
        log.warn("provider {provider}: credential source {source} failed: {reason}", provider=self.provider,
                 source=self.describe(), reason=reason)
        return GatewayError(503, f"provider {self.provider}: its credential source ({self.describe()}) failed: "
                            f"{reason}", code="credential_unavailable", retryable=True)


@define(eq=False)
class EnvSource(CredentialSource):
    spec: SourceSpec = SourceSpec("env", "")
    environ: Mapping[str, str] = field(default=os.environ, repr=False)

    def describe(self) -> str:
        return self.spec.describe()

    async def _fetch(self) -> Credential:
        value = self.environ.get(self.spec.target, "")
        if not value.strip():
            raise CredentialError(f"environment variable {self.spec.target} is not set")
        return interpret(value, (), self.clock.seconds(), self.ttl)


def _read_bounded(path: str) -> str:
    """Read at most ``MAX_OUTPUT`` bytes of ``path`` (runs in a worker thread)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_OUTPUT + 1)
    except OSError as e:
        raise CredentialError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    if len(data) > MAX_OUTPUT:
        raise CredentialError(f"{path} is larger than {MAX_OUTPUT} bytes")
    return data.decode("utf-8", "replace")


def thread_reader(reactor: Any) -> Callable[[str], Deferred[str]]:
    """File reads in the reactor's thread pool, never on the reactor thread."""

    def read(path: str) -> Deferred[str]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), _read_bounded, path)

    return read


@define(eq=False)
class FileSource(CredentialSource):
    spec: SourceSpec = SourceSpec("file", "")
    read: Callable[[str], Deferred[str]] | None = None

    def describe(self) -> str:
        return self.spec.describe()

    async def _fetch(self) -> Credential:
        reader = self.read if self.read is not None else thread_reader(self.clock)
        text = await reader(self.spec.target)
        return interpret(text, self.spec.json_path, self.clock.seconds(), self.ttl)


class _Collect(ProcessProtocol):
    """Gathers a child's stdout / stderr (bounded) and fires ``done`` with (stdout, stderr, status)."""

    def __init__(self, done: Deferred[tuple[bytes, bytes, int | None]]) -> None:
        self.done = done
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.size = 0
        self.too_big = False
        self.timed_out = False

    def connectionMade(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_OUTPUT:
            if not self.too_big:
                self.too_big = True
                self._kill()
            return
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        if sum(map(len, self.err)) < 4096:
            self.err.append(data)

    def time_out(self) -> None:
        self.timed_out = True
        self._kill()

    def _kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001, S110 - already gone
            pass

    def processEnded(self, reason: Failure) -> None:
        status: int | None = 0
        if reason.check(ProcessTerminated):
            status = reason.value.exitCode if reason.value.exitCode is not None else -1
        elif not reason.check(ProcessDone):
            status = -1
        if not self.done.called:
            self.done.callback((b"".join(self.out), b"".join(self.err), status))


@define(eq=False)
class CommandSource(CredentialSource):
    spec: SourceSpec = SourceSpec("command", "")
    timeout: float = COMMAND_TIMEOUT
    environ: Mapping[str, str] = field(default=os.environ, repr=False)
    _executable: str | None = field(default=None, init=False)

    def describe(self) -> str:
        return self.spec.describe()

    def _resolve(self) -> str:
        name = self.spec.argv[0]
        if "/" in name:
            return name
        if self._executable is None:  # a few stat() calls, once (again only while it is missing)
            self._executable = shutil.which(name, path=self.environ.get("PATH"))
        if self._executable is None:
            raise CredentialError(f"command not found: {name}")
        return self._executable

    async def _fetch(self) -> Credential:
        exe = self._resolve()
        done: Deferred[tuple[bytes, bytes, int | None]] = Deferred()
        proto = _Collect(done)
        try:
            self.clock.spawnProcess(proto, exe, list(self.spec.argv), env=dict(self.environ))
        except OSError as e:
            raise CredentialError(f"cannot run {self.spec.argv[0]}: {e.strerror or type(e).__name__}") from None
        timer = self.clock.callLater(self.timeout, proto.time_out)
        try:
            out, err, status = await done
        finally:
            if timer.active():
                timer.cancel()
        if proto.too_big:
            raise CredentialError(f"{self.spec.argv[0]} wrote more than {MAX_OUTPUT} bytes")
        if status != 0:
            first = err.decode("utf-8", "replace").strip().splitlines()[:1]
            why = f": {first[0][:200]}" if first else ""
            if proto.timed_out:
                why = f" (killed after {self.timeout:g}s without finishing)"
            raise CredentialError(f"{self.spec.argv[0]} exited with status {status}{why}")
        return interpret(out.decode("utf-8", "replace"), (), self.clock.seconds(), self.ttl)


@frozen
class OAuthSpec:
    """``[provider.oauth]``: the refresh-token grant."""

    token_url: str
    client_id: str
    refresh_token: str = field(repr=False)
    client_secret: str | None = field(default=None, repr=False)
    scope: str | None = None


@define(eq=False)
class OAuthSource(CredentialSource):
    """Access tokens from ``grant_type=refresh_token``, cached until just before ``expires_in``."""

    spec: OAuthSpec = field(default=OAuthSpec("", "", ""), repr=False)  # holds the refresh token and secret
    http: Any = field(default=None, repr=False)  # a treq HTTPClient (the provider's)
    _refresh_token: str = field(default="", init=False, repr=False)

    def describe(self) -> str:
        return f"oauth:{self.spec.token_url}"

    async def _fetch(self) -> Credential:
        from fproxy.providers.http import read_body

        form = {"grant_type": "refresh_token", "refresh_token": self._refresh_token or self.spec.refresh_token,
                "client_id": self.spec.client_id}
        if self.spec.client_secret:
            form["client_secret"] = self.spec.client_secret
        if self.spec.scope:
            form["scope"] = self.spec.scope
        d = self.http.post(self.spec.token_url, data=form, headers={"accept": ["application/json"]},
                           unbuffered=True, allow_redirects=False)
        d.addTimeout(OAUTH_TIMEOUT, self.clock)
        response = await d
        raw = await read_body(response, MAX_OUTPUT, self.clock, OAUTH_TIMEOUT)
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        if response.code != 200 or not isinstance(obj, dict):
            detail = ""
            if isinstance(obj, dict) and isinstance(obj.get("error"), str):
                detail = f" ({obj['error'][:80]})"
            raise CredentialError(f"the token endpoint answered {response.code}{detail}")
        new_refresh = obj.get("refresh_token")
        if isinstance(new_refresh, str) and new_refresh:
            self._refresh_token = new_refresh  # rotated: the old one may no longer work
        if not isinstance(obj.get("expires_in"), (int, float)):
            obj = {**obj, "expires_in": DEFAULT_OAUTH_LIFETIME}
        now = self.clock.seconds()
        return _from_object({k: obj[k] for k in ("access_token", "expires_in") if k in obj}, now,
                            float("inf"))


def build_source(provider: str, spec: str, clock: Any, ttl: float) -> CredentialSource:
    """A source for a ``credential`` string (validated by the config already)."""
    s = parse_spec(spec)
    if s.kind == "env":
        return EnvSource(provider, clock, ttl, spec=s)
    if s.kind == "file":
        return FileSource(provider, clock, ttl, spec=s)
    return CommandSource(provider, clock, ttl, spec=s)


def chatgpt_account_id(token: str) -> str | None:
    """The ChatGPT account id inside a ChatGPT OAuth access token (a JWT), if it carries one.

    The Codex backend wants it as the ``chatgpt-account-id`` header.  The token is only
    decoded, not verified: the upstream verifies it.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    auth = payload.get("https://api.openai.com/auth") if isinstance(payload, dict) else None
    value = auth.get("chatgpt_account_id") if isinstance(auth, dict) else None
    return value if isinstance(value, str) and value else None
