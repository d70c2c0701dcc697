"""Prometheus metrics (prometheus-client), in a registry of the gateway's own.

Counters and histograms are updated once per finished call (`Metrics.observe`), from the
same hook that writes the usage ledger; gauges (key pools, queues, active streams) are read
when scraped, so they cost nothing between scrapes.  Label values are bounded: a model the
router does not know is labelled ``-``, so clients cannot create series at will.

    fproxy_requests_total{route,model,provider,status}
    fproxy_request_duration_seconds{route,model,provider}        histogram
    fproxy_time_to_first_token_seconds{model,provider}           histogram (streams)
    fproxy_tokens_total{kind}                                     prompt|completion|reasoning|cached
    fproxy_upstream_errors_total{provider,status}
    fproxy_limit_rejections_total{limit}                          rpm|tpm|concurrency|budget|model|...
    fproxy_upstream_keys{provider,state}                          healthy|cooling|disabled
    fproxy_queue_depth{provider}                                  calls waiting for a provider slot
    fproxy_active_streams, fproxy_in_flight_requests
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fproxy.store.base import UsageRecord

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 60)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Live(Collector):
    """Gauges read at scrape time from the live objects."""

    def __init__(self, providers: dict[str, Any], in_flight: Callable[[], tuple[int, int]]) -> None:
        self._providers = providers
        self._in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        keys = GaugeMetricFamily("fproxy_upstream_keys", "Upstream keys per provider by state",
                                 labels=["provider", "state"])
        queue = GaugeMetricFamily("fproxy_queue_depth", "Calls waiting for a provider's concurrency slot",
                                  labels=["provider"])
        active = GaugeMetricFamily("fproxy_provider_active", "Calls holding a provider's concurrency slot",
                                   labels=["provider"])
        for name, p in self._providers.items():
            for state, n in p.pool.snapshot().items():
                keys.add_metric([name, state], n)
            queue.add_metric([name], len(p.limiter.waiting))
            active.add_metric([name], p.limiter.active)
        streams, requests = self._in_flight()
        yield keys
        yield queue
        yield active
        yield GaugeMetricFamily("fproxy_active_streams", "Streams being relayed to clients", value=streams)
        yield GaugeMetricFamily("fproxy_in_flight_requests", "Model calls in progress (waiting or running)",
                                value=requests)


def upstream_failures(attempts: list[str], providers: dict[str, Any]) -> list[tuple[str, str]]:
    """(provider, status) for each failed upstream attempt in a call's ``attempts`` log.

    The gateway logs ``NAME#K:STATUS`` (key K got STATUS from the upstream) and
    ``NAME:STATUS`` (the target failed; counted only when no upstream answer was logged
    for it, i.e. the upstream could not be reached or timed out).
    """
    out: list[tuple[str, str]] = []
    answered: set[str] = set()
    for a in attempts:
        left, _, status = a.rpartition(":")
        if not status.isdigit():
            continue
        if left in providers:
            if left not in answered:
                out.append((left, status))
            answered.discard(left)
            continue
        name = left.split("#", 1)[0] if "#" in left else left[:-1] if left.endswith("-") else left
        if name in providers:
            out.append((name, status))
            answered.add(name)
    return out


class Metrics:
    def __init__(self, providers: dict[str, Any], known_model: Callable[[str], bool],
                 in_flight: Callable[[], tuple[int, int]]) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._providers = providers
        self._known = known_model
        self.requests = Counter("fproxy_requests", "Model calls finished, by client route, model asked for, "
                                "provider and HTTP status", ["route", "model", "provider", "status"], registry=r)
        self.duration = Histogram("fproxy_request_duration_seconds", "Model call duration, arrival to last byte",
                                  ["route", "model", "provider"], buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram("fproxy_time_to_first_token_seconds", "Streams: arrival to first token",
                              ["model", "provider"], buckets=TTFT_BUCKETS, registry=r)
        self.tokens = Counter("fproxy_tokens", "Tokens used by finished calls", ["kind"], registry=r)
        self.upstream_errors = Counter("fproxy_upstream_errors", "Failed upstream attempts by provider and status",
                                       ["provider", "status"], registry=r)
        self.limited = Counter("fproxy_limit_rejections", "Calls refused by a per-key limit", ["limit"],
                               registry=r)
        r.register(_Live(providers, in_flight))

    def model_label(self, model: str | None) -> str:
        return model if model and self._known(model) else "-"

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus-client locks and validates on every call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > 10_000:  # label sets are bounded by config, but stay safe
                self._children.clear()
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, call: Any, rec: UsageRecord, route: str) -> None:
        """One finished call (from the on_finished hook)."""
        model = self.model_label(rec.route_model)
        provider = rec.provider or "-"
        child = self._child
        child(self.requests, route, model, provider, str(rec.status)).inc()
        child(self.duration, route, model, provider).observe(rec.latency_ms / 1000.0)
        if rec.ttft_ms is not None:
            child(self.ttft, model, provider).observe(rec.ttft_ms / 1000.0)
        for kind, n in (("prompt", rec.prompt_tokens), ("completion", rec.completion_tokens),
                        ("reasoning", rec.reasoning_tokens), ("cached", rec.cached_tokens)):
            if n:
                child(self.tokens, kind).inc(n)
        for prov, status in upstream_failures(list(call.attempts), self._providers):
            self.upstream_errors.labels(prov, status).inc()
        if rec.outcome == "error" and rec.provider and call.stream and rec.status == 200:
            self.upstream_errors.labels(rec.provider, "stream").inc()

    def refused(self, route: str, model: str | None, status: int, code: str | None) -> None:
        """A call refused before routing (a per-key limit or the model allow-list)."""
        self.requests.labels(route, self.model_label(model), "-", str(status)).inc()
        limit = (code or "other").removesuffix("_exceeded").removesuffix("_not_allowed")
        self.limited.labels(limit).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
