"""Metrics: the attempts log -> upstream errors, bounded model labels, rendering."""
from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from fproxy.metrics import Metrics, upstream_failures
from fproxy.store.base import UsageRecord

PROVIDERS = {"a": object(), "b-c": object(), "m": object()}


def test_upstream_failures_from_attempts():
    # key #1 of a got 429 (rotated), key #2 a 500 -> target failed (mapped 502, not counted twice);
    # b-c could not be reached (target-level only); m (no key) answered 400
    attempts = ["a#1:429", "a#2:500", "a:502", "b-c:502", "m-:400", "junk", "zz#1:500"]
    assert upstream_failures(attempts, PROVIDERS) == [("a", "429"), ("a", "500"), ("b-c", "502"), ("m", "400")]


class _Pool:
    def snapshot(self):
        return {"healthy": 2, "cooling": 1, "disabled": 0}


class _Limiter:
    waiting = [1, 2]
    active = 3


def test_observe_and_render():
    providers = {"a": SimpleNamespace(pool=_Pool(), limiter=_Limiter())}
    m = Metrics(providers, known_model=lambda name: name == "good", in_flight=lambda: (4, 5))
    call = SimpleNamespace(attempts=["a#1:503", "a:503"], stream=True)
    rec = UsageRecord(request_id="r", ts=0, key_id="k", route_model="good", provider="a", upstream_model="u",
                      prompt_tokens=10, completion_tokens=4, cached_tokens=2, status=200, latency_ms=1500,
                      ttft_ms=200)
    m.observe(call, rec, "/v1/chat/completions")
    m.observe(SimpleNamespace(attempts=[], stream=False),
              UsageRecord(request_id="r2", ts=0, key_id="k", route_model="made-up-123", provider=None,
                          upstream_model=None, status=404), "/v1/chat/completions")
    m.refused("/v1/messages", "good", 429, "tpm_exceeded")
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}

    def v(family, sample, **labels):
        return sum(s.value for s in fams[family].samples
                   if s.name == sample and all(s.labels.get(k) == x for k, x in labels.items()))

    assert v("fproxy_requests", "fproxy_requests_total", model="good", provider="a", status="200") == 1
    assert v("fproxy_requests", "fproxy_requests_total", model="-", status="404") == 1
    assert v("fproxy_requests", "fproxy_requests_total", route="/v1/messages", status="429") == 1
    assert v("fproxy_tokens", "fproxy_tokens_total", kind="cached") == 2
    assert v("fproxy_upstream_errors", "fproxy_upstream_errors_total", provider="a", status="503") == 1
    assert v("fproxy_request_duration_seconds", "fproxy_request_duration_seconds_sum") == 1.5
    assert v("fproxy_time_to_first_token_seconds", "fproxy_time_to_first_token_seconds_count") == 1
    assert v("fproxy_limit_rejections", "fproxy_limit_rejections_total", limit="tpm") == 1
    assert v("fproxy_upstream_keys", "fproxy_upstream_keys", provider="a", state="healthy") == 2
    assert v("fproxy_queue_depth", "fproxy_queue_depth", provider="a") == 2
    assert v("fproxy_active_streams", "fproxy_active_streams") == 4
    assert v("fproxy_in_flight_requests", "fproxy_in_flight_requests") == 5
