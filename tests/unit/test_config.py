"""Config loading: interpolation, key splitting, validation messages that name the key."""
from __future__ import annotations

import pytest

from fproxy import config
from fproxy.config import ConfigError, from_dict, from_environment, interpolate, split_keys


def _prov(**kw):
    base = {"name": "openai", "dialect": "openai-chat", "base_url": "https://api.example.test/v1", "keys": ["k"]}
    base.update(kw)
    return base


def test_interpolation_with_defaults():
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("x${A}y", env) == "x1y"
    assert interpolate("${MISSING:-dflt}", env) == "dflt"
    assert interpolate("${EMPTY:-dflt}", env) == "dflt"
    assert interpolate("${MISSING}", env) == ""
    assert interpolate({"k": ["${A}", 3]}, env) == {"k": ["1", 3]}


def test_key_lists_split_on_separators():
    assert split_keys(["a;b, c\td", "e"]) == ("a", "b", "c", "d", "e")
    cfg = from_dict({"provider": [_prov(keys=["${KEYS}"])]}, {"KEYS": "k1;k2,k3 k4"})
    assert cfg.providers[0].keys == ("k1", "k2", "k3", "k4")


def test_unknown_dialect_names_provider_and_key():
    with pytest.raises(ConfigError) as e:
        from_dict({"provider": [_prov(name="mock1", dialect="mock"), _prov(dialect="opneai")]}, {})
    msg = str(e.value)
    assert msg.startswith('provider "openai" (provider[2]): dialect: unknown dialect "opneai"')
    assert 'did you mean "openai-chat"' in msg
    assert "\n" not in msg


@pytest.mark.parametrize("data, expect", [
    ({"server": {"listne": ["tcp:1"]}}, 'server.listne: unknown key "listne" (did you mean "listen"?)'),
    ({"acess": {}}, 'acess: unknown key "acess" (did you mean "access"?)'),
    ({"provider": [_prov(modles=["x"])]}, 'provider "openai" (provider[1]): modles: unknown key "modles" '
                                          '(did you mean "models"?)'),
    ({"provider": [_prov(base_url="ftp://x")]}, 'base_url: "ftp://x" is not an http(s) URL'),
    ({"provider": [_prov(timeouts={"idle": "soon"})]}, "timeouts.idle: expected a number"),
    ({"provider": [_prov()], "route": [{"model": "m", "to": ["opena:gpt"]}]},
     'route[1].to[0]: unknown provider "opena" (did you mean "openai"?)'),
    ({"provider": [_prov(), _prov()]}, 'duplicate provider name "openai"'),
    ({"provider": [_prov(preset="opnai")]}, 'unknown preset "opnai" (did you mean "openai"?)'),
    ({"server": {"max_request_bytes": -1}}, "server.max_request_bytes: expected a non-negative integer"),
])
def test_errors_name_the_key(data, expect):
    with pytest.raises(ConfigError) as e:
        from_dict(data, {})
    assert expect in str(e.value)


def test_defaults_and_preset_fill_in():
    cfg = from_dict({"provider": [{"name": "o", "preset": "openai", "keys": ["k"]},
                                  {"name": "a", "dialect": "anthropic", "base_url": "https://a.test/"}]}, {})
    o, a = cfg.providers
    assert (o.dialect, o.base_url, o.auth) == ("openai-chat", "https://api.openai.com/v1", "bearer")
    assert a.base_url == "https://a.test" and a.auth == "x-api-key"
    assert cfg.server.max_request_bytes == 32 * 1024 * 1024 and cfg.server.drain_seconds == 30
    assert cfg.access.header == "X-Proxy-Key"


def test_route_targets_parse():
    cfg = from_dict({"provider": [_prov()], "route": [{"model": "slot", "to": ["openai:gpt-4o", "openai"]}]}, {})
    (r,) = cfg.routes
    assert [(t.provider, t.model) for t in r.to] == [("openai", "gpt-4o"), ("openai", "slot")]


def test_load_reports_bad_toml(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[server\nlisten=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(str(p))
    with pytest.raises(ConfigError, match="no such file"):
        config.load(str(tmp_path / "missing.toml"))


def test_environment_only_mode():
    cfg = from_environment({"FACTORY_API_KEYS": "fk-1;fk-2", "PROXY_ACCESS_KEYS": "c1,c2",
                            "PROXY_KEY_HEADER": "X-Mine", "FACTORY_BASE_URL": "http://127.0.0.1:9"})
    (f,) = cfg.providers
    assert f.preset == "factory" and f.keys == ("fk-1", "fk-2") and f.base_url == "http://127.0.0.1:9"
    assert cfg.access.keys == ("c1", "c2") and cfg.access.header == "X-Mine"
    assert cfg.server.listen == ("tcp:8001",)
    assert cfg.store.url == "sqlite:fproxy.db"
    assert from_environment({}).providers == ()
