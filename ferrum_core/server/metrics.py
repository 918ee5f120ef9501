"""Prometheus metrics of one server: engine gauges read at scrape time, latency histograms."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ServerMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _EngineCollector(Collector):
    """Reads the engine's stats when /metrics is scraped (never stale, no bookkeeping);
    ``stats`` returns None while the engine loads."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        yield GaugeMetricFamily("ferrum_engine_ready",
                                "1 once the engine is loaded and serving, 0 before.",
                                value=int(stats is not None))
        if stats is None:  # still loading: no engine to read
            return
        yield GaugeMetricFamily("ferrum_num_requests_running",
                                "Requests in the running batch.", value=stats.num_running)
        yield GaugeMetricFamily("ferrum_num_requests_waiting",
                                "Requests waiting to be scheduled.", value=stats.num_waiting)
        total, free = stats.kv_blocks_total, stats.kv_blocks_free
        if total is not None and free is not None:
            yield GaugeMetricFamily("ferrum_kv_blocks_total", "KV cache blocks in the pool.",
                                    value=total)
            yield GaugeMetricFamily("ferrum_kv_blocks_free", "Free KV cache blocks.",
                                    value=free)
            yield GaugeMetricFamily("ferrum_kv_blocks_used", "KV cache blocks in use.",
                                    value=total - free)
        yield CounterMetricFamily("ferrum_prompt_tokens", "Prompt tokens processed.",
                                  value=stats.prompt_tokens_total)
        yield CounterMetricFamily("ferrum_generation_tokens", "Tokens generated.",
                                  value=stats.generation_tokens_total)


class ServerMetrics:
    """One registry per app, so that several apps in a process never share counters."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(stats))
        self.ttft = Histogram("ferrum_time_to_first_token_seconds",
                              "Time from request arrival to its first token.",
                              buckets=_TTFT_BUCKETS, registry=self.registry)
        self.tpot = Histogram("ferrum_time_per_output_token_seconds",
                              "Time between consecutive output tokens of a request.",
                              buckets=_TPOT_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
