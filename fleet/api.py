"""The fleet manager's REST API, artifact server and dashboard.

Routes (JSON unless said otherwise; errors are ``{"error": {"type", "message"}}``)::

    GET  /                              HTML dashboard (polls the JSON routes)
    GET  /healthz                       {"status": "ok", "mqtt_connected": bool}
    GET  /metrics                       Prometheus text: messages by leaf, commands, telemetry lag, devices
    POST /v1/bundles                    register an archive: the raw .tar.gz as the body
                                        (Content-Type application/gzip or application/octet-stream)
    GET  /v1/bundles                    registered bundles
    GET  /v1/devices                    devices: online, version, labels, escalation rate, last telemetry
    GET  /v1/quality                    field quality per bundle version over the fleet: counts, agreement
                                        with the cloud, escalation and abstention rates (95% intervals)
    POST /v1/rollouts                   {"bundle", "version", "devices": [..], "labels": {..},
                                         "strategy": {"type": "fixed", "size": n} |
                                                     {"type": "exponential", "base_rate", "increment_factor"},
                                         "abort": {"failure_percent", "min_devices"}, "device_timeout_s",
                                         "success_statuses": [..], "id"}
    GET  /v1/rollouts                   summaries, newest first
    GET  /v1/rollouts/{id}              summary, spec and per-device deliveries
    POST /v1/rollouts/{id}/pause|resume|abort|rollback   abort takes {"reason"}, rollback {"to_version"}
    GET  /artifacts/{sha256}.tar.gz     the archive; supports Range (206) for resumable downloads

Every request passes :class:`~edgecloud.shared.base.asgi.InboundGuard` before any route reads its body.
With ``api_key`` set, ``/v1`` routes need ``Authorization: Bearer <api_key>``; ``/artifacts`` is open
(content-addressed and signed) unless ``artifact_token`` is set. Every other POST needs
``Content-Type: application/json``, even without a body (415 otherwise: a cross-site form cannot
send it); bodies are bounded by ``MAX_JSON_BYTES``, an upload by ``max_bundle_bytes``, on the bytes
read. :func:`create_server` refuses to listen off loopback without ``api_key`` unless told
``allow_unauthenticated``.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgecloud.fleet.dashboard import DASHBOARD_HTML
from edgecloud.fleet.manager import FleetManager
from edgecloud.fleet.quality import QualityGate
from edgecloud.fleet.rollout import AbortCriteria, strategy_from_dict
from edgecloud.shared.base.asgi import Inbound, InboundGuard, ThreadedServer, error_response, response_for
from edgecloud.shared.base.errors import (
    ConfigError,
    EdgecloudError,
    InvalidInputError,
    NotFoundError,
    ResourceExhaustedError,
)
from edgecloud.shared.base.net import is_loopback

__all__ = ["MAX_JSON_BYTES", "UPLOAD_TYPES", "create_app", "create_server", "require_authentication"]

MAX_JSON_BYTES = 64 * 1024
"""The largest body of any request but an upload (a rollout spec is well under a kilobyte)."""
UPLOAD_TYPES = frozenset({"application/gzip", "application/x-gzip", "application/octet-stream"})
"""The media types a bundle upload may declare."""
_JSON = frozenset({"application/json"})


def _body(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInputError("the request body must be a JSON object")
    return data


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return _body(await request.json())
    except ValueError as exc:
        raise InvalidInputError(f"the request body is not JSON: {exc}") from None


def _rollout_arguments(data: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :meth:`FleetService.create_rollout` from a POST /v1/rollouts body."""
    bundle, version = data.get("bundle"), data.get("version")
    if not isinstance(bundle, str) or not isinstance(version, int) or isinstance(version, bool):
        raise InvalidInputError("bundle (string) and version (integer) are required")
    devices = data.get("devices", [])
    labels = data.get("labels", {})
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise InvalidInputError("devices must be a list of device ids")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidInputError("labels must be an object of strings")
    strategy = strategy_from_dict(_body(data["strategy"])) if data.get("strategy") else None
    abort = None
    if data.get("abort"):
        try:
            abort = AbortCriteria(**_body(data["abort"]))
        except TypeError as exc:
            raise InvalidInputError(f"abort: {exc}") from None
    quality = QualityGate.from_dict(data["quality"]) if data.get("quality") is not None else None
    if data.get("id") is not None and not isinstance(data["id"], str):
        raise InvalidInputError("id must be a string")
    timeout = data.get("device_timeout_s", 900.0)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise InvalidInputError("device_timeout_s must be a number")
    return {
        "name": bundle,
        "version": version,
        "devices": devices,
        "labels": labels,
        "strategy": strategy,
        "abort": abort,
        "quality": quality,
        "device_timeout_s": float(timeout),
        "success_statuses": data.get("success_statuses"),
        "rollout_id": data.get("id"),
    }


def _bundle_router(manager: FleetManager) -> APIRouter:
    """Bundles, devices and the artifacts devices download."""
    router = APIRouter()

    @router.post("/v1/bundles", status_code=201)
    async def register_bundle(request: Request) -> dict[str, Any]:
        # The guard has checked the key and the media type (UPLOAD_TYPES) and bounds what is read;
        # the count here also bounds the file written.
        with tempfile.NamedTemporaryFile(suffix=".tar.gz", dir=manager.config.artifact_dir) as tmp:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > manager.config.max_bundle_bytes:
                    raise ResourceExhaustedError(f"upload over max_bundle_bytes ({manager.config.max_bundle_bytes})")
                await run_in_threadpool(tmp.write, chunk)
            tmp.flush()
            if not size:
                raise InvalidInputError("empty upload")
            record = await run_in_threadpool(manager.register_bundle, tmp.name)
        return asdict(record)

    @router.get("/v1/bundles")
    async def list_bundles() -> dict[str, Any]:
        records = await run_in_threadpool(manager.bundles)
        return {"bundles": [{**asdict(r), "url": manager.config.artifact_url(r.sha256)} for r in records]}

    @router.get("/v1/devices")
    async def list_devices() -> dict[str, Any]:
        return {"devices": await run_in_threadpool(manager.devices)}

    @router.get("/v1/quality")
    async def field_quality() -> dict[str, Any]:
        return {"versions": await run_in_threadpool(manager.quality)}

    @router.get("/artifacts/{name}")
    async def artifact(name: str) -> FileResponse:
        if not name.endswith(".tar.gz"):
            raise NotFoundError(f"no artifact {name[:80]!r}")
        path = manager.artifact_path(name.removesuffix(".tar.gz"))
        return FileResponse(path, media_type="application/gzip", filename=name)  # Range -> 206

    return router


def _rollout_router(manager: FleetManager) -> APIRouter:
    router = APIRouter(prefix="/v1/rollouts")

    @router.post("", status_code=201)
    async def create_rollout(request: Request) -> dict[str, Any]:
        arguments = _rollout_arguments(await _json(request))
        name, version = arguments.pop("name"), arguments.pop("version")
        rollout = await run_in_threadpool(lambda: manager.create_rollout(name, version, **arguments))
        return await run_in_threadpool(manager.rollout, rollout.id)

    @router.get("")
    async def list_rollouts() -> dict[str, Any]:
        return {"rollouts": await run_in_threadpool(manager.rollouts)}

    @router.get("/{rollout_id}")
    async def get_rollout(rollout_id: str) -> dict[str, Any]:
        return await run_in_threadpool(manager.rollout, rollout_id)

    @router.post("/{rollout_id}/pause")
    async def pause(rollout_id: str) -> dict[str, Any]:
        return await run_in_threadpool(manager.pause_rollout, rollout_id)

    @router.post("/{rollout_id}/resume")
    async def resume(rollout_id: str) -> dict[str, Any]:
        return await run_in_threadpool(manager.resume_rollout, rollout_id)

    @router.post("/{rollout_id}/abort")
    async def abort_rollout(rollout_id: str, request: Request) -> dict[str, Any]:
        reason = (await _json(request)).get("reason") or "aborted by an operator"
        return await run_in_threadpool(manager.abort_rollout, rollout_id, str(reason))

    @router.post("/{rollout_id}/rollback")
    async def rollback(rollout_id: str, request: Request) -> dict[str, Any]:
        to_version = (await _json(request)).get("to_version")
        if to_version is not None and (not isinstance(to_version, int) or isinstance(to_version, bool)):
            raise InvalidInputError("to_version must be an integer")
        return await run_in_threadpool(manager.rollback_rollout, rollout_id, to_version)

    return router


def _policy(manager: FleetManager, api_key: str | None, artifact_token: str | None) -> Any:
    """What each request must bring (:class:`Inbound`), by method and path."""
    keys = (api_key,) if api_key else ()
    upload = Inbound(max_body_bytes=manager.config.max_bundle_bytes, keys=keys, media_types=UPLOAD_TYPES)
    reads = Inbound(max_body_bytes=MAX_JSON_BYTES, keys=keys)
    writes = Inbound(max_body_bytes=MAX_JSON_BYTES, keys=keys, media_types=_JSON)
    artifacts = Inbound(max_body_bytes=MAX_JSON_BYTES, keys=(artifact_token,) if artifact_token else ())
    open_reads = Inbound(max_body_bytes=MAX_JSON_BYTES)
    open_writes = Inbound(max_body_bytes=MAX_JSON_BYTES, media_types=_JSON)
    safe = ("GET", "HEAD")

    def inbound(method: str, path: str) -> Inbound:
        if path.startswith("/v1/"):
            if method in safe:
                return reads
            return upload if path == "/v1/bundles" else writes
        if path.startswith("/artifacts/"):
            return artifacts
        return open_reads if method in safe else open_writes

    return inbound


def require_authentication(host: str, api_key: str | None, *, allow_unauthenticated: bool = False) -> None:
    """Refuse (ConfigError) to serve the API on ``host`` off loopback without ``api_key``, unless allowed."""
    if api_key is None and not allow_unauthenticated and not is_loopback(host):
        raise ConfigError(
            f"the fleet API on {host} (not loopback) would let anyone who reaches it start rollouts: "
            "pass --api-key-file FILE, or --allow-unauthenticated"
        )


def create_app(manager: FleetManager, *, api_key: str | None = None, artifact_token: str | None = None) -> FastAPI:
    app = FastAPI(title="edgecloud fleet manager", version="1")
    app.state.manager = manager
    app.add_middleware(InboundGuard, policy=_policy(manager, api_key, artifact_token))

    @app.exception_handler(EdgecloudError)
    async def _edgecloud_error(_request: Request, exc: EdgecloudError) -> JSONResponse:
        return response_for(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid_input", str(exc.errors()))

    @app.get("/", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(DASHBOARD_HTML)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "mqtt_connected": manager.connected}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(manager.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(_bundle_router(manager))
    app.include_router(_rollout_router(manager))
    return app


def create_server(
    manager: FleetManager,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    artifact_token: str | None = None,
    allow_unauthenticated: bool = False,
) -> tuple[ThreadedServer, int]:
    """Serve the API on ``host:port`` (0 picks a free port) in the background; returns the server and port.

    Off loopback, ``api_key`` is required unless ``allow_unauthenticated`` (:func:`require_authentication`)."""
    require_authentication(host, api_key, allow_unauthenticated=allow_unauthenticated)
    app = create_app(manager, api_key=api_key, artifact_token=artifact_token)
    server = ThreadedServer(app, host, port, lifespan="off", name="fleet-api")
    return server, server.start()
