"""Prometheus metrics of the cloud service, on a registry of their own so tests
can run several servers in one process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["CloudMetrics"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class CloudMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("edgecloud_cloud_queue_depth", "Sessions waiting for an engine slot", registry=r)
        self.active_sessions = Gauge("edgecloud_cloud_active_sessions", "Sessions decoding in the engine", registry=r)
        self.sessions = Counter("edgecloud_cloud_sessions", "Sessions by outcome", ["outcome"], registry=r)
        self.tokens = Counter("edgecloud_cloud_tokens", "Generated tokens by kind", ["kind"], registry=r)
        self.cache_hits = Counter("edgecloud_cloud_cache_hits", "Results served from the result cache", registry=r)
        self.verification_shed = Counter(
            "edgecloud_cloud_verification_shed", "Verification sessions (shadow checks) refused under load", registry=r
        )
        self.reasoning_tokens = Histogram(
            "edgecloud_cloud_reasoning_tokens_per_session",
            "Reasoning tokens per session",
            buckets=(0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            registry=r,
        )
        self.first_answer_token = Histogram(
            "edgecloud_cloud_time_to_first_answer_token_seconds",
            "From acceptance to the first answer token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "edgecloud_cloud_session_seconds", "From acceptance to completion", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.engine_steps = Gauge("edgecloud_cloud_engine_steps", "Decode steps run by the engine", registry=r)
        self.tokens_per_second = Gauge(
            "edgecloud_cloud_tokens_per_second", "Generated tokens per second over the last scrape interval", registry=r
        )

    def bind_engine(self, queue_depth: Callable[[], int], active: Callable[[], int]) -> None:
        self.queue_depth.set_function(queue_depth)
        self.active_sessions.set_function(active)

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Expose ``/metrics`` over HTTP; returns the bound port (0 picks one)."""
        self._http, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(self._http.server_address[1])

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.shutdown()
            http.server_close()
