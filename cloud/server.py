"""The gRPC face of the cloud service: a thin servicer over :class:`SessionManager`.

Handlers convert protobuf to domain objects (:mod:`edgecloud.shared.reasoner.wire`), call the
session manager and convert back; they raise edgecloud errors and one
interceptor maps those to status codes. Another checks per-device bearer
tokens; the device a token names is the caller's identity, and the handlers
look sessions up only among that device's (another device's session is
NOT_FOUND). Bytes that do not parse as the request message are INVALID_ARGUMENT.
Health (NOT_SERVING while loading or draining), reflection, TLS/mTLS
and message size limits are set up by :func:`create_server`.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import hmac
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgecloud.cloud.budget import BudgetPolicy
from edgecloud.cloud.config import CloudConfig
from edgecloud.cloud.engine import ReasoningEngine
from edgecloud.cloud.metrics import CloudMetrics
from edgecloud.cloud.sessions import SessionManager
from edgecloud.cloud.spans import SessionSpans
from edgecloud.cloud.stores import SessionStorage, open_session_store
from edgecloud.proto.edgecloud.v1 import reasoner_pb2 as pb
from edgecloud.proto.edgecloud.v1 import reasoner_pb2_grpc as pb_grpc
from edgecloud.shared.base.errors import (
    AuthenticationError,
    ConfigError,
    EdgecloudError,
    InvalidInputError,
    UnavailableError,
)
from edgecloud.shared.base.tracing import context_from_metadata, tracing_enabled
from edgecloud.shared.bundles.manifest import MANIFEST_FILE, verify_bundle
from edgecloud.shared.reasoner.session import ThinkParams
from edgecloud.shared.reasoner.wire import event_to_pb, session_info_to_pb, think_request_from_pb

if TYPE_CHECKING:
    from edgecloud.cloud.transformers_engine import LoadedModel

__all__ = ["CloudService", "create_server", "serve"]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Reasoner"].full_name
_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("edgecloud_caller", default=None)
"""The device the RPC's bearer token belongs to; None when the server checks no tokens."""


def status_for(error: EdgecloudError) -> grpc.StatusCode:
    """The gRPC status of a deliberate error (the table in :mod:`edgecloud.shared.base.errors`)."""
    return getattr(grpc.StatusCode, error.grpc_code, grpc.StatusCode.INTERNAL)


def _wrap_handler(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Callable], Callable],
    stream: Callable[[Callable], Callable],
) -> grpc.RpcMethodHandler:
    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **kw)
    return handler  # no streaming-request RPCs in this service


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Handlers raise edgecloud errors; this turns them into status codes with the message."""

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = await continuation(details)
        if handler is None:
            return None

        def unary(behavior):
            async def run(request, context):
                try:
                    return await behavior(request, context)
                except EdgecloudError as exc:
                    await context.abort(status_for(exc), str(exc))

            return run

        def stream(behavior):
            async def run(request, context):
                try:
                    async for item in behavior(request, context):
                        yield item
                except EdgecloudError as exc:
                    await context.abort(status_for(exc), str(exc))

            return run

        return _wrap_handler(handler, unary, stream)


_MALFORMED = object()
"""What the request deserializer returns for bytes that do not parse (gRPC would answer UNKNOWN)."""


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Malformed request bytes become INVALID_ARGUMENT, raised in the handler's place.

    Innermost, so the bearer token is checked first; the interceptors outside copy its
    tolerant deserializer."""

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> object:
            try:
                return parse(data)
            except DecodeError:
                return _MALFORMED

        def refuse(request: object) -> None:
            if request is _MALFORMED:
                raise InvalidInputError(f"the request is not a valid {details.method.rsplit('/', 1)[-1]} message")

        def unary(behavior):
            async def run(request, context):
                refuse(request)
                return await behavior(request, context)

            return run

        def stream(behavior):
            async def run(request, context):
                refuse(request)
                async for item in behavior(request, context):
                    yield item

            return run

        wrapped = _wrap_handler(handler, unary, stream)
        return wrapped._replace(request_deserializer=deserialize)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Per-device bearer tokens (``authorization: Bearer <token>``) on every Reasoner RPC.

    Health and reflection stay open so load balancers can probe. The device a
    token belongs to is the caller's identity for the handler (:data:`_caller`).
    """

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens

    def _device(self, metadata: tuple) -> str | None:
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                presented = value[len("Bearer ") :].encode()
                for token, device in self.tokens.items():
                    if hmac.compare_digest(presented, token.encode()):
                        return device
        return None

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        if not details.method.startswith(f"/{SERVICE_NAME}/"):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None
        device = self._device(details.invocation_metadata)

        async def deny(context: grpc.aio.ServicerContext) -> None:
            await context.abort(status_for(AuthenticationError()), "missing or invalid bearer token")

        def unary(behavior):
            async def run(request, context):
                if device is None:
                    await deny(context)
                _check_device(request, device)
                _caller.set(device)  # this RPC's task has its own context
                return await behavior(request, context)

            return run

        def stream(behavior):
            async def run(request, context):
                if device is None:
                    await deny(context)
                _check_device(request, device)
                _caller.set(device)
                async for item in behavior(request, context):
                    yield item

            return run

        return _wrap_handler(handler, unary, stream)


def _check_device(request: object, device: str | None) -> None:
    claimed = getattr(request, "device_id", "")
    if claimed and device is not None and claimed != device:
        raise InvalidInputError(f"device_id {claimed!r} does not match the token's device")


def _think_params(request: pb.ThinkRequest) -> ThinkParams:
    """The request, owned by the token's device when tokens are checked (whatever ``device_id`` said)."""
    params = think_request_from_pb(request)
    device = _caller.get()
    return params if device is None else dataclasses.replace(params, device_id=device)


class ReasonerServicer(pb_grpc.ReasonerServicer):
    """Registered before the server starts (gRPC requires it); answers UNAVAILABLE until the model is loaded."""

    def __init__(self) -> None:
        self._sessions: SessionManager | None = None

    @property
    def sessions(self) -> SessionManager:
        if self._sessions is None:
            raise UnavailableError("the model is still loading; retry shortly")
        return self._sessions

    async def Think(self, request: pb.ThinkRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ThinkEvent]:
        session = self.sessions.create(_think_params(request))
        spans = SessionSpans(context_from_metadata(context.invocation_metadata())) if tracing_enabled() else None
        try:
            async for event in self.sessions.follow(session.id):
                if spans is not None:
                    spans.see(event)
                yield event_to_pb(event)
        finally:
            if spans is not None:
                spans.end()

    async def Submit(self, request: pb.ThinkRequest, context: grpc.aio.ServicerContext) -> pb.SessionInfo:
        session = self.sessions.create(_think_params(request))
        return session_info_to_pb(self.sessions.info(session.id))

    async def Attach(
        self, request: pb.AttachRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ThinkEvent]:
        async for event in self.sessions.follow(request.session_id, request.after_seq, device=_caller.get()):
            yield event_to_pb(event)

    async def GetSession(self, request: pb.SessionRef, context: grpc.aio.ServicerContext) -> pb.SessionInfo:
        return session_info_to_pb(self.sessions.info(request.session_id, device=_caller.get()))

    async def Cancel(self, request: pb.SessionRef, context: grpc.aio.ServicerContext) -> pb.SessionInfo:
        return session_info_to_pb(self.sessions.cancel(request.session_id, device=_caller.get()))


@dataclass
class CloudService:
    """Everything :func:`create_server` started; ``stop`` takes it all down in order."""

    server: grpc.aio.Server
    port: int
    sessions: SessionManager
    engine: ReasoningEngine
    store: SessionStorage
    health: health.aio.HealthServicer
    metrics: CloudMetrics
    metrics_port: int | None

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING first (so balancers move away), then let RPCs finish, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.engine.stop()
        await self.sessions.close()  # writes what the engine streamed until it stopped: a restart continues there
        close = getattr(self.engine, "aclose", None)  # a backend with connections of its own (the OpenAI one)
        if close is not None:
            await close()
        self.store.close()
        self.metrics.close()


async def _store_reachable(health_servicer: health.aio.HealthServicer, reachable: bool) -> None:
    """Readiness (the Reasoner service's health) follows the shared store; liveness (the server's,
    ``""``) does not: a store outage takes the replicas out of the load balancer, never restarts them."""
    status = health_pb2.HealthCheckResponse.SERVING if reachable else health_pb2.HealthCheckResponse.NOT_SERVING
    await health_servicer.set(SERVICE_NAME, status)


def _credentials(config: CloudConfig) -> grpc.ServerCredentials | None:
    tls = config.tls
    if tls is None:
        return None
    pair = [(tls.key.read_bytes(), tls.cert.read_bytes())]
    if tls.client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=tls.client_ca.read_bytes(), require_client_auth=True)


def _model_identity(config: CloudConfig) -> tuple[str, int]:
    if (config.model / MANIFEST_FILE).is_file():
        manifest = verify_bundle(config.model) if config.verify_bundle else None
        if manifest is not None:
            return manifest.name, manifest.version
    return config.model.name, 0


def _grpc_server(config: CloudConfig) -> grpc.aio.Server:
    """The gRPC server, its interceptors and message limits set, no service added yet."""
    # The first interceptor wraps the others, so errors raised by auth and decoding are mapped too.
    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor()]
    if config.auth_required:
        interceptors.append(AuthInterceptor(config.auth.tokens))
    interceptors.append(DecodeInterceptor())
    return grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )


async def _transformers_engine(config: CloudConfig, loaded: LoadedModel | None) -> ReasoningEngine:
    """The transformers backend over ``loaded`` or, without it, over the model in ``config.model``."""
    from edgecloud.cloud.transformers_engine import LoadedModel, TransformersEngine  # torch only for this backend

    if loaded is None:
        name, version = _model_identity(config)
        loaded = await asyncio.to_thread(
            LoadedModel.from_dir, config.model, device=config.engine.device, name=name, version=version
        )
    return TransformersEngine(loaded, config.engine)


async def _remote_engine(config: CloudConfig) -> ReasoningEngine:
    """The OpenAI-compatible backend: ``config.model``'s tokenizer, a server that answers."""
    import openai

    from edgecloud.cloud.openai_engine import OpenAIEngine  # the openai client only for this backend

    assert config.remote_engine is not None
    name, version = _model_identity(config)
    engine = OpenAIEngine.from_dir(config.model, config.remote_engine, config.engine, name=name, version=version)
    try:
        served = await engine.served_model()
    except openai.APIError as exc:
        raise ConfigError(f"the serving engine at {config.remote_engine.url} does not answer: {exc}") from exc
    log.info("decoding on %s (model %s) over its OpenAI API", config.remote_engine.url, served)
    return engine


async def create_server(
    config: CloudConfig, *, loaded: LoadedModel | None = None, engine: ReasoningEngine | None = None
) -> tuple[CloudService, int]:
    """Load the model, restore sessions, bind, start. Returns the service and its bound port
    (``config.port=0`` picks a free one).

    The engine is ``engine`` when given (any :class:`~edgecloud.cloud.engine.ReasoningEngine`), else the
    transformers backend over ``loaded`` or, without it, over the model in ``config.model``."""
    if config.auth_required and not config.auth.tokens:
        raise ConfigError(
            f"listening on {config.host} (not loopback) requires device tokens; pass --tokens FILE or --no-auth"
        )
    server = _grpc_server(config)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    servicer = ReasonerServicer()
    pb_grpc.add_ReasonerServicer_to_server(servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME), server)
    address = f"{config.host}:{config.port}"
    credentials = _credentials(config)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise ConfigError(f"cannot bind {address}")
    await server.start()  # health answers NOT_SERVING while the model loads

    if engine is None:
        engine = await (_remote_engine(config) if config.remote_engine else _transformers_engine(config, loaded))
    engine.start()
    metrics = CloudMetrics()
    password = config.store_password_file.read_text().strip() if config.store_password_file else None
    store = open_session_store(config.store, lease_s=config.store_lease_s, password=password)
    sessions = SessionManager(
        engine, store, config=config.sessions, budget=BudgetPolicy(config.budget), metrics=metrics
    )
    resumed = await sessions.start()
    servicer._sessions = sessions
    metrics_port = metrics.serve(config.metrics_port, config.metrics_host) if config.metrics_port is not None else None
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if sessions.replicas is not None:
        sessions.replicas.on_reachable = functools.partial(_store_reachable, health_servicer)
    log.info(
        "reasoner serving %s v%d on %s:%d (tls=%s, auth=%s, metrics=%s, continued %d sessions)",
        engine.name,
        engine.version,
        config.host,
        port,
        config.tls is not None,
        config.auth_required,
        metrics_port,
        resumed,
    )
    return CloudService(server, port, sessions, engine, store, health_servicer, metrics, metrics_port), port


async def serve(config: CloudConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain within ``config.grace_s``."""
    service, _port = await create_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining for up to %.0fs", config.grace_s)
    await service.stop(config.grace_s)
