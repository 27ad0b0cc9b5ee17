"""The cloud's Prometheus metrics: a registry of their own per server, the names a scrape sees, and
the engine's gauges read live at scrape time."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from edgecloud.cloud.metrics import CloudMetrics

#: Every family a scrape of the cloud shows, with its type (the names dashboards and alerts use).
FAMILIES = {
    "edgecloud_cloud_verification_shed": "counter",
    "edgecloud_cloud_queue_depth": "gauge",
    "edgecloud_cloud_active_sessions": "gauge",
    "edgecloud_cloud_sessions": "counter",
    "edgecloud_cloud_tokens": "counter",
    "edgecloud_cloud_cache_hits": "counter",
    "edgecloud_cloud_reasoning_tokens_per_session": "histogram",
    "edgecloud_cloud_time_to_first_answer_token_seconds": "histogram",
    "edgecloud_cloud_session_seconds": "histogram",
    "edgecloud_cloud_engine_steps": "gauge",
    "edgecloud_cloud_tokens_per_second": "gauge",
}


def scrape(port: int) -> dict[str, dict[object, object]]:
    """``/metrics`` as family -> {(sample name, labels): value}, with each family's type under ``type``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    families = {}
    for family in text_string_to_metric_families(text):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        families[family.name] = {"type": family.type, **samples}
    return families


@pytest.fixture
def metrics():
    made: list[CloudMetrics] = []
    yield made
    for m in made:
        m.close()


def test_a_scrape_shows_every_family_with_its_type(metrics: list[CloudMetrics]) -> None:
    cloud = CloudMetrics()
    metrics.append(cloud)
    port = cloud.serve(0)
    assert port > 0
    families = scrape(port)
    # (prometheus_client adds a ``*_created`` timestamp beside each counter and histogram)
    shown = {name: f["type"] for name, f in families.items() if name.startswith("edgecloud_")}
    assert {name: kind for name, kind in shown.items() if not name.endswith("_created")} == FAMILIES


def test_what_the_service_records_is_what_a_scrape_reads(metrics: list[CloudMetrics]) -> None:
    cloud = CloudMetrics()
    metrics.append(cloud)
    port = cloud.serve(0)
    cloud.sessions.labels("completed").inc(3)
    cloud.sessions.labels("failed").inc()
    cloud.tokens.labels("reasoning").inc(40)
    cloud.cache_hits.inc()
    cloud.reasoning_tokens.observe(12)  # in the bucket up to 16
    cloud.latency.observe(0.3)
    families = scrape(port)
    sessions = families["edgecloud_cloud_sessions"]
    assert sessions[("edgecloud_cloud_sessions_total", (("outcome", "completed"),))] == 3
    assert sessions[("edgecloud_cloud_sessions_total", (("outcome", "failed"),))] == 1
    assert families["edgecloud_cloud_tokens"][("edgecloud_cloud_tokens_total", (("kind", "reasoning"),))] == 40
    assert families["edgecloud_cloud_cache_hits"][("edgecloud_cloud_cache_hits_total", ())] == 1
    histogram = families["edgecloud_cloud_reasoning_tokens_per_session"]
    bucket = "edgecloud_cloud_reasoning_tokens_per_session_bucket"
    assert histogram[(bucket, (("le", "8.0"),))] == 0 and histogram[(bucket, (("le", "16.0"),))] == 1
    assert families["edgecloud_cloud_session_seconds"][("edgecloud_cloud_session_seconds_sum", ())] == 0.3


def test_the_engine_s_gauges_are_read_when_scraped(metrics: list[CloudMetrics]) -> None:
    cloud = CloudMetrics()
    metrics.append(cloud)
    port = cloud.serve(0)
    engine = {"queued": 2, "active": 5}
    cloud.bind_engine(lambda: engine["queued"], lambda: engine["active"])

    def gauges() -> tuple[float, float]:
        families = scrape(port)
        return (
            families["edgecloud_cloud_queue_depth"][("edgecloud_cloud_queue_depth", ())],
            families["edgecloud_cloud_active_sessions"][("edgecloud_cloud_active_sessions", ())],
        )

    assert gauges() == (2, 5)
    engine.update(queued=0, active=16)
    assert gauges() == (0, 16)


def test_each_instance_has_a_registry_of_its_own(metrics: list[CloudMetrics]) -> None:
    # Two servers in one process (the tests, the benchmarks) count apart and never touch the global registry.
    a, b = CloudMetrics(), CloudMetrics()
    metrics += [a, b]
    a.cache_hits.inc(7)
    port_a, port_b = a.serve(0), b.serve(0)
    assert port_a != port_b
    assert scrape(port_a)["edgecloud_cloud_cache_hits"][("edgecloud_cloud_cache_hits_total", ())] == 7
    assert scrape(port_b)["edgecloud_cloud_cache_hits"][("edgecloud_cloud_cache_hits_total", ())] == 0
    assert REGISTRY.get_sample_value("edgecloud_cloud_cache_hits_total") is None


def test_close_stops_serving(metrics: list[CloudMetrics]) -> None:
    cloud = CloudMetrics()
    port = cloud.serve(0)
    scrape(port)
    cloud.close()
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    CloudMetrics().close()  # closing one that never served is fine
