"""SSE decoder: any split of the same bytes gives the same events; WHATWG line rules."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fproxy.codecs.sse import SSEDecoder, encode_event

STREAM = (
    b"\xef\xbb\xbf: comment first\r\n"
    b"event: message_start\r\ndata: {\"a\": 1}\r\n\r\n"
    b"data: line one\ndata: line two\n\n"
    b"data:no-space\rdata:  two spaces\r\r"
    b": keep-alive\n\n"
    b"id: 7\nevent: x\ndata: \xc3\xa9t\xc3\xa9\n\n"
    b"data: partial never dispatched"
)
EXPECTED = [("message_start", '{"a": 1}'), (None, "line one\nline two"), (None, "no-space\n two spaces"),
            ("x", "été")]


def _events(chunks):
    d = SSEDecoder()
    out = []
    for c in chunks:
        out.extend((e.event, e.data) for e in d.feed(c))
    return out


def test_whole_stream():
    assert _events([STREAM]) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_gives_same_events(cuts):
    cuts = sorted(set(cuts))
    chunks, prev = [], 0
    for c in cuts + [len(STREAM)]:
        chunks.append(STREAM[prev:c])
        prev = c
    assert _events(chunks) == EXPECTED


def test_byte_by_byte():
    assert _events([STREAM[i:i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_raw_bytes_kept_for_relay():
    d = SSEDecoder()
    evs = d.feed(b"data: {\"x\":1}\n\n: ping\n\ndata: [DONE]\n\n")
    assert [e.raw for e in evs] == [b"data: {\"x\":1}\n\n", b"data: [DONE]\n\n"]


def test_crlf_split_between_chunks_is_one_line_end():
    assert _events([b"data: a\r", b"\n\r\n"]) == [(None, "a")]


def test_encode_event():
    assert encode_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_event("{}", "ping") == b"event: ping\ndata: {}\n\n"


LF_STREAM = (
    b": hello\n\n"
    b"data: {\"a\": 1}\n\n"
    b"event: message_delta\ndata: {\"b\": 2}\n\n"
    b"data:\n\n"
    b"data: x\ndata: y\n\n"
    b"id: 5\ndata: z\n\n"
    b"event:tight\ndata:{}\n\n"
    b"event: three\nid: 7\ndata: q\n\n"
    b"event: \xc3\xa9t\xc3\xa9\ndata:  two spaces\n\n"
    b"data: [DONE]\n\n"
)


@given(st.lists(st.integers(min_value=0, max_value=len(LF_STREAM)), max_size=10))
def test_lf_only_fast_path_matches_the_general_parser(cuts):
    """LF-only streams take a fast path; CRLF ones the general loop: both give the same events."""
    cuts = sorted(set(cuts))
    chunks, prev = [], 0
    for c in cuts + [len(LF_STREAM)]:
        chunks.append(LF_STREAM[prev:c])
        prev = c
    fast = []
    d = SSEDecoder()
    for c in chunks:
        fast.extend((e.event, e.data, e.id) for e in d.feed(c))
    general = [(e.event, e.data, e.id) for e in SSEDecoder().feed(LF_STREAM.replace(b"\n", b"\r\n"))]
    assert fast == general == [(None, '{"a": 1}', None), ("message_delta", '{"b": 2}', None), (None, "", None),
                               (None, "x\ny", None), (None, "z", "5"), ("tight", "{}", "5"), ("three", "q", "7"),
                               ("\u00e9t\u00e9", " two spaces", "7"), (None, "[DONE]", "7")]
    raws = [e.raw for e in SSEDecoder().feed(LF_STREAM)]
    assert b"".join(raws) == LF_STREAM[len(b": hello\n\n"):]
