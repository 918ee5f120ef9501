"""Prometheus metrics of one server: engine gauges read at scrape time, latency histograms."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["ServerMetrics", "LatencyHistogram", "CONTENT_TYPE"]

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


class LatencyHistogram(Collector):
    """A Prometheus histogram observed from the event loop thread only: no lock and one
    bisect per observation (``prometheus_client.Histogram`` takes a lock and walks every
    bucket, a cost paid per streamed token). Rendered as the same metric family."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((_bound(bound), cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets,
                                    sum_value=self.sum)


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


class ServerMetrics:
    """One registry per app, so that several apps in a process never share counters."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(stats))
        self.ttft = LatencyHistogram("ferrum_time_to_first_token_seconds",
                                     "Time from request arrival to its first token.",
                                     _TTFT_BUCKETS)
        self.tpot = LatencyHistogram("ferrum_time_per_output_token_seconds",
                                     "Time between consecutive output tokens of a request.",
                                     _TPOT_BUCKETS)
        self.registry.register(self.ttft)
        self.registry.register(self.tpot)

    def render(self) -> bytes:
        return generate_latest(self.registry)
