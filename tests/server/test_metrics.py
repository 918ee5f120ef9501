"""The server's lock-free latency histogram renders exactly as prometheus_client's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ferrum_core.server.metrics import LatencyHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.1, 1.0)
VALUES = [0.0, 0.004, 0.005, 0.0051, 0.01, 0.02, 0.1, 0.5, 1.0, 3.0, 3.0, 0.025]


def test_matches_prometheus_client_histogram() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("lat_seconds", "Latency.", buckets=BUCKETS, registry=theirs)
    mine = LatencyHistogram("lat_seconds", "Latency.", BUCKETS)
    ours.register(mine)
    for value in VALUES:
        reference.observe(value)
    for value in VALUES[:-2]:
        mine.observe(value)
    mine.observe(3.0, 1)  # the same observation given as a count
    mine.observe(0.025, 1)
    expected = [line for line in generate_latest(theirs).decode().splitlines()
                if "lat_seconds_created" not in line]  # a timestamp we do not keep
    assert generate_latest(ours).decode().splitlines() == expected


def test_repeated_observations_count_each_token() -> None:
    mine = LatencyHistogram("tpot_seconds", "Per token.", BUCKETS)
    mine.observe(0.02, 3)
    family = next(iter(mine.collect()))
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("tpot_seconds_bucket", "0.01")] == 0
    assert samples[("tpot_seconds_bucket", "0.025")] == 3
    assert samples[("tpot_seconds_count", None)] == 3
    assert abs(samples[("tpot_seconds_sum", None)] - 0.06) < 1e-12
