"""Prometheus metrics of the edge daemon, on a registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["EdgeMetrics"]


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "edgecloud_edge_requests", "Answered requests by route and reason", ["route", "reason"], registry=r
        )
        self.latency = Histogram(
            "edgecloud_edge_request_seconds",
            "Request latency by route",
            ["route"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.escalations = Counter("edgecloud_edge_escalations", "Queries sent to the cloud", registry=r)
        self.degraded = Counter("edgecloud_edge_degraded", "Answers given locally because the cloud failed", registry=r)
        self.accepted = Counter("edgecloud_edge_accepted", "Requests accepted into the outbox", registry=r)
        self.errors = Counter("edgecloud_edge_errors", "Failed requests by kind", ["kind"], registry=r)
        self.bytes_sent = Counter(
            "edgecloud_edge_escalation_bytes", "Bytes sent per escalation by part", ["part"], registry=r
        )
        self.outbox_depth = Gauge("edgecloud_edge_outbox_depth", "Requests waiting in the outbox", registry=r)
        self.model_version = Gauge(
            "edgecloud_edge_model_version", "Version of the serving edge model", ["name"], registry=r
        )
        self.field_queries = Counter(
            "edgecloud_edge_field_queries",
            "auto queries the model read, by bundle version and what triage did (kept, escalated, abstained)",
            ["version", "outcome"],
            registry=r,
        )
        self.shadow_checks = Counter(
            "edgecloud_edge_shadow_checks",
            "Shadow checks of kept answers by bundle version and outcome (agreed, disagreed, shed)",
            ["version", "outcome"],
            registry=r,
        )
        self.cloud_up = Gauge("edgecloud_edge_cloud_up", "1 when the cloud answered its last health check", registry=r)
