"""Incremental Server-Sent Events decoder and encoder (WHATWG grammar).

The decoder keeps each event's raw bytes so that the passthrough path can relay an event
exactly as the upstream wrote it, while still reading its fields.
"""
from __future__ import annotations

from typing import NamedTuple

#: cap on one event, so a peer that never sends a blank line cannot grow memory forever
MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSEEvent(NamedTuple):
    """One event (a tuple: made once per upstream event, it must be cheap to build)."""

    event: str | None
    data: str
    raw: bytes = b""
    id: str | None = None


class SSETooLarge(ValueError):
    pass


class SSEDecoder:
    """Feed bytes, get complete events.  Any split of the same bytes gives the same events.

    Handles LF, CRLF and lone CR line ends (a CR at a chunk's end waits for the next byte),
    comments, multi-line ``data``, a leading BOM, and ``id``/``retry`` fields.
    """

    __slots__ = ("_buf", "_raw", "_data", "_event", "_id", "_last_id", "_started", "_pending_cr", "_size")

    def __init__(self) -> None:
        self._buf = b""
        self._raw: list[bytes] = []
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._last_id: str | None = None
        self._started = False
        self._pending_cr = False
        self._size = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if self._raw:
                    self._raw[-1] += b"\n"
        buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            started = self._after_bom(buf)
            if started is None:
                return []
            buf = started
        out: list[SSEEvent] = []
        pos = 0
        if not self._raw and b"\r" not in buf:
            pos = self._fast(buf, out)
            if pos == len(buf):
                self._buf = b""
                self._size = 0
                return out
        n = len(buf)
        while pos < n:
            lf = buf.find(b"\n", pos)
            cr = buf.find(b"\r", pos, lf if lf >= 0 else n)
            if cr >= 0:
                end = cr
                if cr + 1 < n:
                    nxt = cr + 2 if buf[cr + 1 : cr + 2] == b"\n" else cr + 1
                else:
                    # CR at the end of the buffer: the line is complete; a following LF belongs to it
                    nxt = n
                    self._pending_cr = True
            elif lf >= 0:
                end, nxt = lf, lf + 1
            else:
                break
            self._line(buf[pos:end], buf[pos:nxt], out)
            pos = nxt
        self._buf = buf[pos:]
        self._size = len(self._buf) + sum(map(len, self._raw))
        if self._size > MAX_EVENT_BYTES:
            raise SSETooLarge(f"an SSE event exceeded {MAX_EVENT_BYTES} bytes")
        return out

    def _after_bom(self, buf: bytes) -> bytes | None:
        """The stream's first bytes without a leading BOM; None (kept) while they may still be one."""
        if len(buf) < 3 and b"\xef\xbb\xbf".startswith(buf):
            self._buf = buf
            return None
        self._started = True
        return buf[3:] if buf.startswith(b"\xef\xbb\xbf") else buf

    def feed_relay(self, chunk: bytes, markers: tuple[bytes, ...], data_lines: bool) -> list[bytes | SSEEvent]:
        """For a relay that reads only some events: runs of raw bytes and parsed events, in order.

        A ``bytes`` item is a run of whole events holding none of ``markers`` (LF-only input, no
        comments; with ``data_lines``, exactly one ``data:`` line per event): the caller relays
        it as it is, unparsed.  Every other event comes back parsed, as `feed` gives it.
        """
        if self._raw or self._pending_cr or not chunk:
            return list(self.feed(chunk))
        buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            started = self._after_bom(buf)
            if started is None:
                return []
            buf = started
        self._buf = b""
        last = buf.rfind(b"\n\n")
        if last < 0 or b"\r" in buf:
            return list(self.feed(buf))
        end = last + 2
        out: list[bytes | SSEEvent] = []
        # where each marker next occurs (-1: not before `end`); each is searched for once per pass
        nxt = {m: buf.find(m, 0, end) for m in (markers if data_lines else markers + _COMMENT)}
        pos = 0
        while pos < end:
            stop = end
            for m, p in nxt.items():
                if 0 <= p < pos:
                    p = nxt[m] = buf.find(m, pos, end)
                if 0 <= p < stop:
                    cut = buf.rfind(b"\n\n", pos, p + 1)
                    stop = cut + 2 if cut >= 0 else pos
            if stop > pos:
                if _plain_run(buf, pos, stop, data_lines):
                    out.append(buf[pos:stop])
                else:
                    out.extend(self.feed(buf[pos:stop]))
                pos = stop
            if pos < end:  # the event holding a marker
                stop = buf.find(b"\n\n", pos) + 2
                out.extend(self.feed(buf[pos:stop]))
                pos = stop
        if end < len(buf):
            out.extend(self.feed(buf[end:]))
        return out

    def _fast(self, buf: bytes, out: list[SSEEvent]) -> int:
        """LF-only input at an event boundary (what every LLM API sends): split on blank lines.

        A one-line ``data:`` event becomes an event directly; anything else goes through
        `_line`, so the result is the same as the general loop's.  Returns where it stopped.
        """
        pos = 0
        while True:
            end = buf.find(b"\n\n", pos)
            if end < 0:
                return pos
            block = buf[pos:end]
            raw = buf[pos:end + 2]
            if block[:5] == b"data:" and b"\n" not in block:
                value = block[6:] if block[5:6] == b" " else block[5:]
                if self._id is not None:
                    self._last_id = self._id
                out.append(SSEEvent(None, value.decode("utf-8", "replace"), raw, self._last_id))
            elif block[:6] == b"event:" and (nl := block.find(b"\n")) > 0 and block[nl + 1:nl + 6] == b"data:" \
                    and block.find(b"\n", nl + 1) < 0:
                # "event: NAME\ndata: JSON", Anthropic's and the Responses API's shape
                name = block[7:nl] if block[6:7] == b" " else block[6:nl]
                value = block[nl + 7:] if block[nl + 6:nl + 7] == b" " else block[nl + 6:]
                if self._id is not None:
                    self._last_id = self._id
                out.append(SSEEvent(name.decode("utf-8", "replace"), value.decode("utf-8", "replace"), raw,
                                    self._last_id))
            else:
                start = pos
                for line in block.split(b"\n"):
                    self._line(line, buf[start:start + len(line) + 1], out)
                    start += len(line) + 1
                self._line(b"", b"\n", out)
            pos = end + 2

    def _line(self, line: bytes, raw: bytes, out: list[SSEEvent]) -> None:
        if not line:
            raw_event = b"".join(self._raw) + raw
            self._raw = []
            if self._data:
                self._last_id = self._id if self._id is not None else self._last_id
                out.append(SSEEvent(self._event, "\n".join(self._data), raw_event, self._last_id))
            self._data = []
            self._event = None
            return
        self._raw.append(raw)
        if line[:1] == b":":
            return
        text = line.decode("utf-8", "replace")
        name, sep, value = text.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._id = value


#: a comment line: its event is parsed (and dropped) on its own (with one data line per event,
#: the run check already sends a comment down that path)
_COMMENT = (b"\n:",)


def _plain_run(buf: bytes, start: int, stop: int, data_lines: bool) -> bool:
    """Whether ``buf[start:stop]`` (whole LF-only events) may be relayed without parsing."""
    if data_lines:
        # every newline is in a "\n\ndata:" or the final "\n\n": one data line per event, no comments
        return buf.startswith(b"data:", start) and \
            buf.count(b"\n", start, stop) == 2 * buf.count(b"\n\ndata:", start, stop) + 2
    return buf[start:start + 1] != b":" and buf.find(b"\n:", start, stop) < 0  # comments: parsed (dropped)


def encode_event(data: bytes | str, event: str | None = None) -> bytes:
    """One SSE event; ``data`` must not contain newlines (compact JSON never does)."""
    if isinstance(data, str):
        data = data.encode()
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


KEEPALIVE_COMMENT = b": keep-alive\n\n"
