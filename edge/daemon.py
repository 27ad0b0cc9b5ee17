"""Assembling and running the edge daemon: model slot, cloud client, outbox, HTTP app."""

from __future__ import annotations

import logging
from dataclasses import replace

from fastapi import FastAPI

from edgecloud.edge.agent import AgentConfig, DeviceAgent, resume_bundle
from edgecloud.edge.api.app import create_app
from edgecloud.edge.api.response_store import ResponseStore
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.escalation import CloudClient, CloudClientConfig
from edgecloud.edge.metrics import EdgeMetrics
from edgecloud.edge.outbox import Outbox
from edgecloud.edge.runtime import EdgeBundle, ModelSlot
from edgecloud.edge.service import EdgeService
from edgecloud.shared.base.asgi import serve_until_signal

__all__ = ["create_daemon", "serve"]

log = logging.getLogger(__name__)


def create_daemon(config: EdgeConfig) -> tuple[FastAPI, EdgeService]:
    """Load the bundle (verified), open the outbox (and the stored responses, in its file), and
    build the app. Nothing listens yet."""
    bundle = EdgeBundle.load(config.bundle, threads=config.threads)
    client = None
    if config.cloud:
        client = CloudClient(
            CloudClientConfig(
                target=config.cloud,
                token=config.cloud_token,
                tls=config.cloud_tls,
                ca_file=config.cloud_ca,
                deadline_s=config.cloud_timeout_s,
            )
        )
    service = EdgeService(config, ModelSlot(bundle), client=client, outbox=Outbox(config.outbox), metrics=EdgeMetrics())
    log.info(
        "edge daemon %s: %s v%d, cloud %s, threshold %.3f",
        config.device_id,
        bundle.name,
        bundle.version,
        config.cloud or "none",
        service.policy(bundle).threshold,
    )
    return create_app(service, ResponseStore(config.outbox)), service


def serve(config: EdgeConfig, agent: AgentConfig | None = None) -> None:
    """Serve HTTP until SIGTERM/SIGINT; with ``agent``, also join the fleet over MQTT."""
    if agent is not None:
        config = replace(config, bundle=resume_bundle(agent, config.bundle))
    app, service = create_daemon(config)
    device_agent = DeviceAgent(agent, service) if agent is not None else None
    if device_agent is not None:
        device_agent.start()
    try:
        serve_until_signal(app, host=config.host, port=config.port)
    finally:
        if device_agent is not None:
            device_agent.stop()
