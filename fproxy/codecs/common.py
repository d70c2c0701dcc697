"""Small pure helpers shared by the dialect codecs."""
from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Any

import orjson

from fproxy.ir.errors import GatewayError, bad_request

_DATA_URL = re.compile(r"^data:([^;,]+)?((?:;[^;,]+)*?)(;base64)?,(.*)$", re.S)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def new_id(prefix: str, n: int = 24) -> str:
    """A random id such as ``chatcmpl-3f9c...`` (hex of os.urandom: no state, no clock)."""
    return prefix + binascii.hexlify(os.urandom(n // 2)).decode()


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:MIME;base64,DATA`` -> (mime, base64 data); None if not a data URL.

    Non-base64 data URLs are percent-decoded text; they are re-encoded as base64.
    """
    if not url.startswith("data:"):
        return None
    m = _DATA_URL.match(url)
    if m is None:
        raise bad_request("invalid data URL in an image or file part", code="invalid_data_url")
    mime = m.group(1) or "text/plain"
    if m.group(3):
        return mime, m.group(4)
    from urllib.parse import unquote_to_bytes

    return mime, base64.b64encode(unquote_to_bytes(m.group(4))).decode()


def data_url(mime: str, data_b64: str) -> str:
    return f"data:{mime};base64,{data_b64}"


def expect_type(value: Any, typ: type | tuple[type, ...], where: str, what: str) -> Any:
    """Return ``value`` if it has the type, else raise a 400 naming ``where``."""
    if isinstance(value, bool) and typ in (int, float, (int, float)):
        raise bad_request(f"{where}: expected {what}, got a boolean", param=where)
    if not isinstance(value, typ):
        raise bad_request(f"{where}: expected {what}, got {type_name(value)}", param=where)
    return value


def type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def opt_number(body: dict[str, Any], name: str) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    return float(expect_type(v, (int, float), name, "a number"))


def opt_int(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return int(expect_type(v, int, name, "an integer"))


def upstream_malformed(what: str) -> GatewayError:
    return GatewayError(502, f"the upstream answered with a malformed body: {what}", retryable=True)
