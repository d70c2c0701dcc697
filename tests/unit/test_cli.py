"""The operator CLI: bodies from options, tables, and errors as one line."""
from __future__ import annotations

import io

import pytest

from fproxy import cli


def body(*argv):
    a = cli.parser().parse_args(["keys", "update", "key_1", *argv])
    return cli.limit_body(a)


def test_limit_body_only_what_was_given():
    assert body("--rpm", "10") == {"rpm": 10}
    assert body("--rpm", "0", "--tpm", "0") == {"rpm": None, "tpm": None}  # 0 clears
    assert body("--models", "gpt-*, claude-*", "--disable") == {"models": ["gpt-*", "claude-*"], "disabled": True}
    assert body("--budget-usd", "-1", "--budget-period", "none") == {"budget_usd": None, "budget_period": None}
    assert body("--expires-at", "never", "--metadata", '{"a": 1}') == {"expires_at": None, "metadata": {"a": 1}}
    assert body() == {}
    with pytest.raises(cli.CliError, match="--metadata"):
        body("--metadata", "{nope")


def test_table_and_cells():
    out = cli.table([{"id": "k1", "models": [], "rpm": None, "disabled": True, "budget_usd": 0.5}],
                    ("id", "models", "rpm", "disabled", "budget_usd"))
    assert out.splitlines() == ["ID  MODELS  RPM  DISABLED  BUDGET_USD", "k1  *       -    yes       0.5"]


def test_errors_are_one_line(monkeypatch, capsys):
    monkeypatch.delenv("FPROXY_ADMIN_KEY", raising=False)
    assert cli.main(["keys", "list"]) == 1
    assert capsys.readouterr().err == "fproxy: no admin key: pass --admin-key or set FPROXY_ADMIN_KEY\n"
    assert cli.main(["--url", "http://127.0.0.1:9", "--admin-key", "k", "keys", "list"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    with pytest.raises(cli.CliError, match="nothing to change"):
        cli.run(["--admin-key", "k", "keys", "update", "key_1"], io.StringIO())
