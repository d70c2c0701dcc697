"""``fproxy``: the operator's command line, talking to a running gateway's admin API.

    fproxy keys create --name alice --rpm 60 --models 'gpt-4o*' --budget-usd 10 --budget-period month
    fproxy keys list
    fproxy keys show KEY_ID
    fproxy keys update KEY_ID --disable            (or --enable, --rpm 0 to clear a limit, ...)
    fproxy keys revoke KEY_ID
    fproxy usage --group-by model --since 2025-01-01

``--url`` (default ``$FPROXY_URL`` or http://127.0.0.1:8001) and ``--admin-key`` (default
``$FPROXY_ADMIN_KEY``) say which gateway; ``--json`` prints the API's JSON instead of a table.
A separate process: plain blocking ``urllib`` is right here (no reactor involved).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:8001"
USAGE_COLUMNS = ("group", "requests", "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens",
                 "cost_usd")
KEY_COLUMNS = ("id", "name", "prefix", "models", "rpm", "tpm", "max_concurrency", "budget_tokens", "budget_usd",
               "budget_period", "expires_at", "disabled", "created_at")


class CliError(Exception):
    """A problem to print as one line (exit status 1)."""


# ---------------------------------------------------------------- HTTP
def call_api(url: str, admin_key: str | None, method: str, path: str, body: Any = None,
             params: dict[str, str] | None = None, timeout: float = 30.0) -> Any:
    """One admin API call; the decoded JSON answer.  @raise CliError: with the gateway's message."""
    if not admin_key:
        raise CliError("no admin key: pass --admin-key or set FPROXY_ADMIN_KEY")
    full = url.rstrip("/") + path
    if params:
        full += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(full, data=data, method=method)
    req.add_header("Authorization", f"Bearer {admin_key}")
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the operator's own URL
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            msg = json.loads(raw)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = raw.decode("utf-8", "replace")[:300]
        raise CliError(f"{method} {path}: {e.code} {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CliError(f"cannot reach {url}: {reason}") from None
    return json.loads(raw) if raw.strip() else {}


# ---------------------------------------------------------------- output
def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6f}".rstrip("0").rstrip(".") if v else "0"
    if isinstance(v, list):
        return ",".join(str(x) for x in v) or "*"
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain text table, one row per dict, columns as given."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def show_one(obj: dict[str, Any]) -> str:
    width = max(len(k) for k in obj) if obj else 0
    return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in obj.items())


# ---------------------------------------------------------------- arguments
def _int_or_none(s: str) -> int | None:
    """0 clears a limit (null in the API)."""
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v or None


def _limit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name")
    p.add_argument("--models", help="comma-separated model names or globs the key may use (empty: all)")
    # absent unless given (SUPPRESS), so that "0" (clear the limit) differs from "not given"
    p.add_argument("--rpm", type=_int_or_none, default=argparse.SUPPRESS, help="requests per minute (0: no limit)")
    p.add_argument("--tpm", type=_int_or_none, default=argparse.SUPPRESS, help="tokens per minute (0: no limit)")
    p.add_argument("--max-concurrency", type=_int_or_none, default=argparse.SUPPRESS,
                   help="requests at once (0: no limit)")
    p.add_argument("--budget-tokens", type=int, help="token budget per period (negative: none)")
    p.add_argument("--budget-usd", type=float, help="USD budget per period (negative: none)")
    p.add_argument("--budget-period", choices=["day", "month", "none"], help="when budgets reset")
    p.add_argument("--expires-at", help="RFC 3339 time or Unix seconds ('never' to clear)")
    p.add_argument("--metadata", help="a JSON object")


def limit_body(a: argparse.Namespace) -> dict[str, Any]:
    """The POST/PATCH body from the options actually given."""
    body: dict[str, Any] = {}
    if a.name is not None:
        body["name"] = a.name
    if a.models is not None:
        body["models"] = [m.strip() for m in a.models.split(",") if m.strip()]
    for k in ("rpm", "tpm", "max_concurrency"):
        if hasattr(a, k):
            body[k] = getattr(a, k)
    if a.budget_tokens is not None:
        body["budget_tokens"] = a.budget_tokens if a.budget_tokens >= 0 else None
    if a.budget_usd is not None:
        body["budget_usd"] = a.budget_usd if a.budget_usd >= 0 else None
    if a.budget_period is not None:
        body["budget_period"] = None if a.budget_period == "none" else a.budget_period
    if a.expires_at is not None:
        body["expires_at"] = None if a.expires_at in ("never", "none", "") else a.expires_at
    if a.metadata is not None:
        try:
            body["metadata"] = json.loads(a.metadata)
        except ValueError as e:
            raise CliError(f"--metadata: not JSON: {e}") from None
    if getattr(a, "disable", False):
        body["disabled"] = True
    if getattr(a, "enable", False):
        body["disabled"] = False
    return body


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fproxy", description="Manage a running fproxy gateway through its admin API.")
    p.add_argument("--url", default=os.environ.get("FPROXY_URL", DEFAULT_URL),
                   help=f"the gateway (default $FPROXY_URL or {DEFAULT_URL})")
    p.add_argument("--admin-key", default=os.environ.get("FPROXY_ADMIN_KEY"),
                   help="an access.admin_keys key (default $FPROXY_ADMIN_KEY)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = p.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys", help="virtual client keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key (shown once)")
    _limit_args(create)
    create.add_argument("--disabled", dest="disable", action="store_true")
    keys.add_parser("list", help="list keys (never the keys themselves)")
    keys.add_parser("show", help="one key, with its spend").add_argument("id")
    update = keys.add_parser("update", help="change a key's limits, or disable / enable it")
    update.add_argument("id")
    _limit_args(update)
    onoff = update.add_mutually_exclusive_group()
    onoff.add_argument("--disable", action="store_true")
    onoff.add_argument("--enable", action="store_true")
    keys.add_parser("revoke", help="revoke a key for good").add_argument("id")
    usage = sub.add_parser("usage", help="usage totals from the ledger")
    usage.add_argument("--key")
    usage.add_argument("--model")
    usage.add_argument("--provider")
    usage.add_argument("--since", help="RFC 3339 time or Unix seconds")
    usage.add_argument("--until", help="RFC 3339 time or Unix seconds")
    usage.add_argument("--group-by", choices=["key", "model", "provider", "hour", "day"], default="key")
    return p


# ---------------------------------------------------------------- commands
def run(argv: Sequence[str], out: TextIO) -> None:
    p = parser()
    a = p.parse_args(list(argv))

    def api(method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        return call_api(a.url, a.admin_key, method, path, body, params)

    def emit(obj: Any, text: str) -> None:
        out.write((json.dumps(obj, indent=2) if a.json else text) + "\n")

    if a.command == "usage":
        params = {"key": a.key, "model": a.model, "provider": a.provider, "since": a.since, "until": a.until,
                  "group_by": a.group_by}
        res = api("GET", "/api/usage", params=params)
        total = {"group": "TOTAL", **res.get("total", {})}
        emit(res, table(list(res.get("data", [])) + [total], USAGE_COLUMNS))
        return
    if a.action == "create":
        res = api("POST", "/api/keys", limit_body(a))
        emit(res, show_one(res) + "\n\nThe key is shown only now; store it safely:\n" + str(res.get("key")))
    elif a.action == "list":
        res = api("GET", "/api/keys")
        emit(res, table(res.get("data", []), KEY_COLUMNS))
    elif a.action == "show":
        res = api("GET", f"/api/keys/{urllib.parse.quote(a.id, safe='')}")
        emit(res, show_one(res))
    elif a.action == "update":
        body = limit_body(a)
        if not body:
            raise CliError("nothing to change: give at least one option (see fproxy keys update --help)")
        res = api("PATCH", f"/api/keys/{urllib.parse.quote(a.id, safe='')}", body)
        emit(res, show_one(res))
    elif a.action == "revoke":
        res = api("DELETE", f"/api/keys/{urllib.parse.quote(a.id, safe='')}")
        emit(res, f"revoked {a.id}")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv, sys.stdout)
    except CliError as e:
        sys.stderr.write(f"fproxy: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
