"""fproxy.reload: what a reload changes, refusing a broken configuration without touching anything."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from fproxy.config import ConfigError, from_dict
from fproxy.reload import Reloader, ReloadResult, config_loader, describe_changes
from tests.unit.sync import run

BASE = {
    "server": {"listen": ["tcp:8001"]},
    "access": {"keys": ["ck"]},
    "provider": [{"name": "a", "dialect": "mock", "models": ["m*"]},
                 {"name": "b", "dialect": "mock", "models": ["x"]}],
    "route": [{"model": "r", "to": ["a:m1"]}],
}


def cfg(**changes):
    data = {**BASE, **changes}
    return from_dict(data, {})


def test_no_changes():
    assert describe_changes(cfg(), cfg()) == ([], [])


def test_changes_listed_in_words():
    new = cfg(provider=[{"name": "a", "dialect": "mock", "models": ["m*"], "mock_reply": "hi"},
                        {"name": "c", "dialect": "mock"}],
              route=[{"model": "r", "to": ["c:m1"]}], access={"keys": ["other"], "admin_keys": ["ak"]},
              server={"listen": ["tcp:9000"], "cors_origins": ["*"]}, store={"url": "sqlite:other.db"})
    changes, restart = describe_changes(cfg(), new)
    assert changes == ["providers added: c", "providers removed: b", "providers changed: a", "routes",
                       "access.keys", "access.admin_keys", "server.cors_origins"]
    assert restart == ["server.listen", "store.url"]


def test_config_loader_reads_the_file_by_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "f.toml").write_text('[access]\nkeys = ["k1"]\n')
    monkeypatch.chdir(tmp_path)
    load = config_loader("f.toml")
    monkeypatch.chdir("/")  # twistd --rundir
    assert load().access.keys == ("k1",) and load().source == str(tmp_path / "f.toml")
    monkeypatch.setenv("PROXY_ACCESS_KEYS", "envkey")
    assert config_loader(None)().access.keys == ("envkey",)
    assert os.environ["PROXY_ACCESS_KEYS"] == "envkey"


class Untouchable:
    """A service stub: a refused reload must not read past ``config``."""

    def __init__(self) -> None:
        self.config = cfg()

    def __getattr__(self, name):
        raise AssertionError(f"a refused reload touched service.{name}")


def test_broken_configuration_is_refused_and_nothing_changes():
    svc = Untouchable()
    before = svc.config

    def broken():
        raise ConfigError('route[1].to[0]: unknown provider "zz"')

    r = Reloader(svc, broken, Clock(), run_blocking=lambda f: succeed(None).addCallback(lambda _: f()))
    with pytest.raises(ConfigError, match="unknown provider"):
        run(r.reload("test"))
    assert svc.config is before
    d = r.trigger("SIGHUP")  # from a signal: logged, not raised
    assert d.called and d.result is None


def test_result_as_json():
    res = ReloadResult("f.toml", ("routes",), ("server.listen",))
    assert res.as_json() == {"object": "reload", "reloaded": True, "source": "f.toml", "changes": ["routes"],
                             "restart_needed": ["server.listen"], "scope": "this process"}
