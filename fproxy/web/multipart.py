"""``multipart/form-data`` chat requests: a ``payload`` JSON field plus files.

Files are appended, in the order sent, to the last user message (one is created if there is
none): images as ``image_url`` parts with data URLs, text files as text parts (a label line
with the file name and type, then the content in a fenced block), anything else as a
labelled base64 text part.
"""
from __future__ import annotations

import base64
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson

from fproxy.ir.errors import bad_request

_TEXT_TYPES = ("application/json", "application/xml", "application/x-yaml", "application/yaml",
               "application/javascript", "application/toml", "application/x-sh", "application/csv")


def parse(body: bytes, content_type: str) -> dict[str, Any]:
    msg = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body)
    if not msg.is_multipart():
        raise bad_request("multipart body could not be parsed", code="invalid_multipart")
    payload: dict[str, Any] | None = None
    files: list[tuple[str, str, bytes]] = []
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        data = part.get_payload(decode=True) or b""
        if filename:
            files.append((filename, part.get_content_type(), data))
        elif name == "payload":
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise bad_request("payload: not valid JSON", param="payload") from None
    if not isinstance(payload, dict):
        raise bad_request("payload: a multipart chat request needs a JSON object field named 'payload'",
                          param="payload")
    if files:
        attach(payload, files)
    return payload


def _file_part(filename: str, ctype: str, data: bytes) -> dict[str, Any]:
    if ctype.startswith("image/"):
        return {"type": "image_url",
                "image_url": {"url": f"data:{ctype};base64,{base64.b64encode(data).decode()}"}}
    if ctype.startswith("text/") or ctype in _TEXT_TYPES:
        text = data.decode("utf-8", "replace")
        return {"type": "text", "text": f"File: {filename} ({ctype})\n```\n{text}\n```"}
    return {"type": "text",
            "text": f"File: {filename} ({ctype}, base64)\n{base64.b64encode(data).decode()}"}


def attach(payload: dict[str, Any], files: list[tuple[str, str, bytes]]) -> None:
    messages = payload.get("messages")
    if not isinstance(messages, list):
        messages = payload["messages"] = []
    target = None
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            target = m
            break
    if target is None:
        target = {"role": "user", "content": []}
        messages.append(target)
    content = target.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    elif not isinstance(content, list):
        content = []
    content.extend(_file_part(*f) for f in files)
    target["content"] = content
