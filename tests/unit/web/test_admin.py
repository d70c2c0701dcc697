"""Admin API validation (400s naming the field), the key's JSON, and the root's dispatch."""
from __future__ import annotations

import pytest

from fproxy.ir.errors import GatewayError
from fproxy.store.base import KeyRecord
from fproxy.web.admin import key_fields, key_json, usage_query
from fproxy.web.root import is_admin_path


def test_key_fields_accepts_and_normalises():
    f = key_fields({"name": "a", "models": "gpt-*", "rpm": 5, "budget_usd": 2, "budget_period": None,
                    "expires_at": "2030-01-01T00:00:00Z", "metadata": {"x": 1}, "disabled": False, "tpm": None})
    assert f["models"] == ("gpt-*",) and f["budget_usd"] == 2.0 and f["expires_at"] == 1893456000.0
    assert f["tpm"] is None and f["metadata"] == {"x": 1}
    assert key_fields({}) == {}


@pytest.mark.parametrize("body,field", [({"rpm": 0}, "rpm"), ({"budget_tokens": -1}, "budget_tokens"),
                                        ({"budget_usd": float("inf")}, "budget_usd"), ({"key": "sk-x"}, "key"),
                                        ({"id": "mine"}, "id"), ({"name": "x" * 201}, "name")])
def test_key_fields_refuses_naming_the_field(body, field):
    with pytest.raises(GatewayError) as e:
        key_fields(body)
    assert e.value.status == 400 and e.value.param == field


def test_key_fields_needs_an_object():
    with pytest.raises(GatewayError):
        key_fields([1])


def test_key_json_never_has_the_hash():
    rec = KeyRecord(id="key_1", key_hash="f" * 64, prefix="sk-fp-abcd", created_at=0, updated_at=0,
                    expires_at=86400)
    j = key_json(rec)
    assert "f" * 64 not in str(j) and j["prefix"] == "sk-fp-abcd" and j["expires_at"] == "1970-01-02T00:00:00Z"
    assert j["created_at"] == "1970-01-01T00:00:00Z" and j["models"] == []


class _Req:
    def __init__(self, **args):
        self.args = {k.encode(): [v.encode()] for k, v in args.items()}


def test_usage_query():
    q = usage_query(_Req(key="key_1", since="2025-01-01", until="1735776000", group_by="day"))
    assert (q.key, q.since, q.until, q.group_by) == ("key_1", 1735689600.0, 1735776000.0, "day")
    assert usage_query(_Req()).group_by == "key"


@pytest.mark.parametrize("path,admin", [(b"/api/keys", True), (b"/api/keys/key_1", True), (b"/api/usage", True),
                                        (b"/v1/queue", True), (b"/v1/cancel/req_1", True), (b"/metrics", True),
                                        (b"/api/keysmith", False), (b"/api/info", False), (b"/v1/queues", False),
                                        (b"/v1/chat/completions", False), (b"/metricsx", False)])
def test_admin_paths(path, admin):
    assert is_admin_path(path) is admin
