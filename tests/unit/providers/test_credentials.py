"""Credential sources with a fake clock: parsing, caching, expiry, invalidation, single flight."""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from fproxy.config import ConfigError, from_dict
from fproxy.ir.errors import GatewayError
from fproxy.providers.credentials import (
    CredentialError,
    EnvSource,
    FileSource,
    OAuthSource,
    OAuthSpec,
    interpret,
    parse_spec,
)


def _run(d: Any) -> Any:
    """The result of a coroutine or Deferred that completes without the reactor."""
    if not isinstance(d, Deferred):
        d = Deferred.fromCoroutine(d)
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "did not complete"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


# ---------------------------------------------------------------- parsing
def test_parse_specs():
    assert parse_spec("env:GH_TOKEN").target == "GH_TOKEN"
    s = parse_spec("file:~/.codex/auth.json#tokens.access_token")
    assert s.target.endswith("/.codex/auth.json") and not s.target.startswith("~")
    assert s.json_path == ("tokens", "access_token")
    s = parse_spec("command:gcloud auth print-access-token --account 'a b'")
    assert s.argv == ("gcloud", "auth", "print-access-token", "--account", "a b")
    for bad in ("vault:x", "env:", "env:A-B", "file:", "command:", "command:'unclosed", "plain-key"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_config_keeps_a_credential_whole_and_refuses_bad_ones():
    cfg = from_dict({"provider": [{"name": "v", "preset": "openai",
                                   "credential": "command:gcloud auth print-access-token",
                                   "credential_ttl": 60, "keys": ["sk-a;sk-b", "command:get-token --x"]}]}, {})
    p = cfg.providers[0]
    assert p.credential == "command:gcloud auth print-access-token" and p.credential_ttl == 60
    assert p.keys == ("sk-a", "sk-b", "command:get-token --x"), "a source in keys is not split on white space"
    with pytest.raises(ConfigError, match=r'provider "v" \(provider\[1\]\): credential: "vault:x" is not a credential'):
        from_dict({"provider": [{"name": "v", "preset": "openai", "credential": "vault:x"}]}, {})
    with pytest.raises(ConfigError, match=r'crednetial: unknown key "crednetial" \(did you mean "credential"\?\)'):
        from_dict({"provider": [{"name": "v", "preset": "openai", "crednetial": "env:X"}]}, {})


def test_config_oauth_table():
    oauth = {"token_url": "https://auth.example/oauth/token", "client_id": "cid", "refresh_token": "rt"}
    p = from_dict({"provider": [{"name": "o", "preset": "openai", "oauth": oauth}]}, {}).providers[0]
    assert p.oauth == OAuthSpec("https://auth.example/oauth/token", "cid", "rt")
    assert "rt" not in repr(p.oauth), "the refresh token stays out of reprs"
    with pytest.raises(ConfigError, match=r"oauth\.refresh_token: missing"):
        from_dict({"provider": [{"name": "o", "preset": "openai", "oauth": {**oauth, "refresh_token": ""}}]}, {})
    with pytest.raises(ConfigError, match=r'oauth\.client_secert: unknown key "client_secert" \(did you mean '
                                          r'"client_secret"\?\)'):
        from_dict({"provider": [{"name": "o", "preset": "openai", "oauth": {**oauth, "client_secert": "s"}}]}, {})


# ---------------------------------------------------------------- values
def test_interpret_values():
    assert interpret("ya29.token\n", (), 0, 300).token == "ya29.token"
    assert interpret("Updated property.\nya29.last\n\n", (), 0, 300).token == "ya29.last"
    c = interpret('{"tokens": {"access_token": "at", "x": 1}}', ("tokens", "access_token"), 100, 300)
    assert (c.token, c.expires_at) == ("at", 400)
    c = interpret('{"token": "gl", "headers": {"x-gitlab-instance-id": "i1", "Authorization": "no"}, '
                  '"expires_at": 200}', (), 100, 300)
    assert c.token == "gl" and c.headers == (("x-gitlab-instance-id", "i1"),)
    assert c.expires_at == 190, "used until shortly before it expires (earlier than the 300 s ttl)"
    assert interpret('{"token": "t", "expires_at": 100000}', (), 100, 300).expires_at == 400, "ttl still bounds"
    c = interpret('{"access_token": "a", "expires_in": 30}', (), 0, 300)
    assert c.expires_at == 27
    with pytest.raises(CredentialError, match="no value at JSON path tokens.nope"):
        interpret('{"tokens": {}}', ("tokens", "nope"), 0, 300)
    with pytest.raises(CredentialError, match="not valid JSON"):
        interpret("plain", ("a",), 0, 300)
    with pytest.raises(CredentialError, match="nothing"):
        interpret("  \n", (), 0, 300)


# ---------------------------------------------------------------- caching
def test_env_source_cached_for_its_ttl_and_refetched_after_invalidate():
    clock = Clock()
    env = {"TOK": "one"}
    src = EnvSource("prov", clock, 300, spec=parse_spec("env:TOK"), environ=env)
    assert _run(src.get()).token == "one"
    env["TOK"] = "two"
    clock.advance(299)
    assert _run(src.get()).token == "one" and src.fetches == 1
    clock.advance(2)
    assert _run(src.get()).token == "two" and src.fetches == 2
    env["TOK"] = "three"
    src.invalidate("stale-token-not-current")  # someone else's refusal of an older value: keep
    assert _run(src.get()).token == "two"
    src.invalidate("two")
    assert _run(src.get()).token == "three" and src.fetches == 3


def test_failing_source_is_a_503_naming_the_provider():
    src = EnvSource("my-vertex", Clock(), 300, spec=parse_spec("env:NOPE"), environ={})
    with pytest.raises(GatewayError) as e:
        _run(src.get())
    assert e.value.status == 503 and e.value.code == "credential_unavailable" and e.value.retryable
    assert "provider my-vertex" in e.value.message and "NOPE is not set" in e.value.message


def test_file_source_single_flight_and_expiry():
    clock = Clock()
    reads: list[Deferred[str]] = []

    def reader(path: str) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        reads.append(d)
        return d

    src = FileSource("p", clock, 60, spec=parse_spec("file:/creds.json#a.b"), read=reader)
    first, second = Deferred.fromCoroutine(src.get()), Deferred.fromCoroutine(src.get())
    assert len(reads) == 1, "concurrent callers share one read"
    reads[0].callback('{"a": {"b": "tok-1"}}')
    assert _run(first).token == _run(second).token == "tok-1"
    clock.advance(61)
    third = Deferred.fromCoroutine(src.get())
    assert len(reads) == 2
    third.cancel()  # a caller that goes away does not cancel the read the others wait for
    fourth = Deferred.fromCoroutine(src.get())
    reads[1].callback('{"a": {"b": "tok-2"}}')
    assert _run(fourth).token == "tok-2"
    third.addErrback(lambda f: None)


class _Response:
    def __init__(self, code: int, body: dict[str, Any]) -> None:
        self.code = code
        self._data = orjson.dumps(body)

    def deliverBody(self, protocol: Any) -> None:
        protocol.dataReceived(self._data)
        protocol.connectionLost(Failure(ResponseDone()))


class _Http:
    """A treq-like client answering the token endpoint from a list."""

    def __init__(self, answers: list[tuple[int, dict[str, Any]]]) -> None:
        self.answers = answers
        self.forms: list[dict[str, list[str]]] = []

    def post(self, url: str, data: dict[str, str], **kw: Any) -> Deferred[_Response]:
        self.forms.append(parse_qs("&".join(f"{k}={v}" for k, v in data.items())))
        return succeed(_Response(*self.answers.pop(0)))


def test_oauth_refresh_grant_expiry_and_rotation():
    clock = Clock()
    http = _Http([(200, {"access_token": "at-1", "expires_in": 600, "refresh_token": "rt-2"}),
                  (200, {"access_token": "at-2", "expires_in": 600}),
                  (400, {"error": "invalid_grant"})])
    spec = OAuthSpec("https://auth.example/token", "cid", "rt-1", client_secret="sec")
    src = OAuthSource("codex", clock, 300, spec=spec, http=http)
    assert _run(src.get()).token == "at-1"
    assert http.forms[0] == {"grant_type": ["refresh_token"], "refresh_token": ["rt-1"], "client_id": ["cid"],
                             "client_secret": ["sec"]}
    clock.advance(539)  # cached until a minute before expires_in (600 s), not for credential_ttl
    assert _run(src.get()).token == "at-1" and len(http.forms) == 1
    clock.advance(2)
    assert _run(src.get()).token == "at-2"
    assert http.forms[1]["refresh_token"] == ["rt-2"], "the rotated refresh token is used"
    src.invalidate("at-2")
    with pytest.raises(GatewayError, match=r"provider codex: .*token endpoint answered 400 \(invalid_grant\)"):
        _run(src.get())
