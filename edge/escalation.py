"""The edge's client of the cloud Reasoner: deadlines, retries, resume.

:meth:`CloudClient.think` gives the caller one seamless stream of a session's
events. When the stream breaks (connection reset, server restart, a stalled
link caught by keepalive), the client waits a jittered backoff and re-attaches
with ``Attach(session_id, after_seq=<last seq seen>)``; if it broke before the
first event, it repeats ``Think`` with the same ``request_id``, which the
server answers with the session it already created. The caller sees every
``seq`` exactly once, in order, ending with a COMPLETED or FAILED event.

A failed call becomes the error the table in :mod:`edgecloud.shared.base.errors` names for
its status code (:func:`map_rpc_error`), after the retries the code allows::

    INVALID_ARGUMENT                     -> InvalidInputError
    NOT_FOUND                            -> NotFoundError (UnavailableError when a re-attach finds
                                            the session gone: the caller named no session)
    RESOURCE_EXHAUSTED (after retries)   -> ResourceExhaustedError
    UNAUTHENTICATED, PERMISSION_DENIED   -> AuthenticationError (a ConfigError: a bad token is a
                                            config problem)
    UNAVAILABLE, DEADLINE_EXCEEDED, ...  -> UnavailableError (after retries)
    anything else                        -> UnavailableError, with the details
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecloud.proto.edgecloud.v1 import reasoner_pb2 as pb
from edgecloud.proto.edgecloud.v1 import reasoner_pb2_grpc as pb_grpc
from edgecloud.shared.base.errors import (
    ConfigError,
    EdgecloudError,
    InvalidInputError,
    ResourceExhaustedError,
    UnavailableError,
    error_for_grpc_code,
)
from edgecloud.shared.reasoner.session import Event, SessionInfo, ThinkParams
from edgecloud.shared.reasoner.wire import event_from_pb, session_info_from_pb, think_request_to_pb

__all__ = ["SERVICE_NAME", "CloudClient", "CloudClientConfig", "map_rpc_error"]

log = logging.getLogger(__name__)

SERVICE_NAME = "edgecloud.v1.Reasoner"
"""The name the server's health service reports the Reasoner under."""

_T = TypeVar("_T")

_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,  # no connection, connection reset, server draining
        grpc.StatusCode.DEADLINE_EXCEEDED,  # of one attempt, while the whole deadline has time left
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # queue full: recoverable after a backoff
        grpc.StatusCode.CANCELLED,  # cancelled by the server or the transport, never by us mid-call
        grpc.StatusCode.ABORTED,
    }
)


def map_rpc_error(error: grpc.RpcError, what: str = "cloud call") -> EdgecloudError:
    """The edgecloud error for a failed RPC (:func:`edgecloud.shared.base.errors.error_for_grpc_code`)."""
    has_status = isinstance(error, grpc.Call | grpc.aio.AioRpcError)
    code = error.code() if has_status else grpc.StatusCode.UNKNOWN
    details = error.details() if has_status else str(error)
    return error_for_grpc_code(code.name)(f"{what}: {code.name}: {details or 'no details'}")


def _retryable(error: grpc.aio.AioRpcError) -> bool:
    if error.code() in _RETRYABLE:
        return True
    # A stream reset by the peer or the transport surfaces as INTERNAL with these details.
    details = (error.details() or "").lower()
    return error.code() is grpc.StatusCode.INTERNAL and ("rst_stream" in details or "stream removed" in details)


@dataclass(frozen=True, kw_only=True)
class CloudClientConfig:
    target: str
    """``host:port`` of the Reasoner (any gRPC target such as ``dns:///host:port`` also works)."""
    token: str | None = None
    """Device token, sent as ``authorization: Bearer <token>``."""
    tls: bool = False
    ca_file: Path | None = None
    """CA bundle that signed the server's certificate; None uses the system roots."""
    cert_file: Path | None = None
    """Client certificate, with ``key_file``, for mTLS."""
    key_file: Path | None = None
    deadline_s: float = 120.0
    """The most one call may take, re-attaches and backoffs included: an escalation's one deadline
    (the daemon sets it from :attr:`EdgeConfig.cloud_timeout_s`; the service runs no timer of its own)."""
    connect_timeout_s: float = 3.0
    """How long one connection attempt may take."""
    max_attempts: int = 6
    """Consecutive failed attempts (no event received) before giving up."""
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    """Full-jitter exponential backoff: attempt n waits uniform(0, min(max, base * 2**(n-1)))."""
    keepalive_s: float = 20.0
    """Ping interval on an open connection; a peer silent for longer than that plus a timeout is dead."""
    max_message_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target.strip():
            raise ConfigError("target must be host:port")
        if "://" not in self.target and not self.target.startswith("unix:"):
            host, _, port = self.target.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"target must be host:port with a port in [1, 65535], got {self.target!r}")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ConfigError("token must be a non-empty string without whitespace")
        files = {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        for name, path in files.items():
            if path is None:
                continue
            if not self.tls:
                raise ConfigError(f"{name} is set but tls is off")
            if not Path(path).is_file():
                raise ConfigError(f"{name}: {path} is not a readable file")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("cert_file and key_file go together (mTLS)")
        for name in ("deadline_s", "connect_timeout_s", "backoff_base_s", "backoff_max_s", "keepalive_s"):
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.backoff_base_s > self.backoff_max_s:
            raise ConfigError("backoff_base_s must be <= backoff_max_s")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_message_bytes < 1024:
            raise ConfigError("max_message_bytes must be >= 1024")

    def channel_options(self) -> list[tuple[str, int | str]]:
        def ms(seconds: float) -> int:
            return max(1, int(seconds * 1000))

        return [
            ("grpc.enable_retries", 0),  # we retry (and resume) ourselves
            ("grpc.keepalive_time_ms", ms(self.keepalive_s)),
            ("grpc.keepalive_timeout_ms", ms(min(self.keepalive_s, 10.0))),
            ("grpc.http2.max_pings_without_data", 0),  # long thoughts may send nothing for a while
            # The connect timeout is max(min_reconnect_backoff, backoff) in gRPC core.
            ("grpc.min_reconnect_backoff_ms", ms(self.connect_timeout_s)),
            ("grpc.initial_reconnect_backoff_ms", ms(self.backoff_base_s)),
            ("grpc.max_reconnect_backoff_ms", ms(self.backoff_max_s)),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.primary_user_agent", "edgecloud-edge"),
            ("grpc.use_local_subchannel_pool", 1),  # connections die with the channel that made them
        ]


STATUS_WAIT_S = 0.5


async def _let_status_arrive(call: grpc.aio.UnaryStreamCall) -> None:
    """After the terminal event, wait (briefly) for the server's status before the call is
    cancelled: cancelling at once races the status the server is sending, and the server's gRPC
    then logs an ExecuteBatchError traceback for an RPC that went well."""
    try:
        await asyncio.wait_for(call.code(), STATUS_WAIT_S)
    except (TimeoutError, grpc.RpcError):
        pass


class _Retries:
    """One call's retries, the one backoff loop of this client: its deadline (``deadline_s`` from
    the first attempt, re-attaches and backoffs included), its consecutive failed attempts, the
    jittered backoff between them and the error it gives up with."""

    def __init__(self, config: CloudClientConfig, what: str) -> None:
        self.config, self.what = config, what
        self._loop = asyncio.get_running_loop()
        self.deadline = self._loop.time() + config.deadline_s
        self.failures = 0

    def remaining(self) -> float:
        """Seconds left before the deadline: the timeout of the next attempt."""
        return self.deadline - self._loop.time()

    async def pause(self, error: grpc.aio.AioRpcError | None, *, progressed: bool = False, where: str = "") -> None:
        """Wait out the backoff before the next attempt, or raise the error to give up with: after
        ``max_attempts`` failures in a row, or when the pause would pass the deadline.
        ``progressed``: the failed attempt got somewhere (events), so the count starts again."""
        c = self.config
        self.failures = 1 if progressed else self.failures + 1
        if self.failures >= c.max_attempts:
            raise _give_up(self.what, error, f"gave up after {self.failures} failed attempts{where}")
        pause = random.uniform(0.0, min(c.backoff_max_s, c.backoff_base_s * 2 ** (self.failures - 1)))
        if self._loop.time() + pause >= self.deadline:
            raise _give_up(self.what, error, f"no success within {c.deadline_s:g}s{where}")
        cause = error.code().name if error is not None else "ended early"
        log.info("%s: attempt failed%s (%s); retrying in %.2fs", self.what, where, cause, pause)
        await asyncio.sleep(pause)


def _give_up(what: str, error: grpc.aio.AioRpcError | None, reason: str) -> EdgecloudError:
    if error is not None and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhaustedError(f"{what}: {reason}: {error.details()}")
    detail = f"{error.code().name}: {error.details()}" if error is not None else "no terminal event"
    return UnavailableError(f"{what}: {reason} ({detail})")


def _shed(error: grpc.aio.AioRpcError, params: ThinkParams, session_id: str | None) -> bool:
    """A verification the cloud refused under load is dropped, not retried: checks are the first
    work to shed, and retrying them would add to the load that shed them."""
    refused = error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and session_id is None
    return refused and params.priority == "verification"


class CloudClient:
    """A grpc.aio client of the Reasoner. The channel is opened lazily on the
    event loop that first uses the client (and reopened if another loop does)."""

    def __init__(self, config: CloudClientConfig) -> None:
        self.config = config
        self.reconnects = 0
        """Streams resumed after a break (re-attaches, and Think retries before the first event)."""
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {config.token}"),) if config.token else ()
        )
        self._channel: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stub: pb_grpc.ReasonerStub | None = None
        self._health: health_pb2_grpc.HealthStub | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- channel -----------------------------------------------------------------------

    def _credentials(self) -> grpc.ChannelCredentials:
        c = self.config
        try:
            ca, key, cert = (
                Path(p).read_bytes() if p is not None else None for p in (c.ca_file, c.key_file, c.cert_file)
            )
            return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        except OSError as exc:
            raise ConfigError(f"cannot read TLS files: {exc}") from exc

    def _stubs(self) -> tuple[pb_grpc.ReasonerStub, health_pb2_grpc.HealthStub]:
        loop = asyncio.get_running_loop()
        if self._channel is None or self._loop is not loop:
            options = self.config.channel_options()
            if self.config.tls:
                channel = grpc.aio.secure_channel(self.config.target, self._credentials(), options=options)
            else:
                channel = grpc.aio.insecure_channel(self.config.target, options=options)
            self._channel, self._loop = channel, loop  # a channel of another loop is left to the GC
            self._stub = pb_grpc.ReasonerStub(channel)
            self._health = health_pb2_grpc.HealthStub(channel)
        assert self._stub is not None and self._health is not None
        return self._stub, self._health

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and self._loop is asyncio.get_running_loop():
            await channel.close()
        self._stub = self._health = None

    # -- retries -----------------------------------------------------------------------

    async def _unary(self, what: str, call: Callable[[float], Awaitable[_T]]) -> _T:
        """One unary RPC, retried (it is idempotent) on the recoverable codes."""
        retries = _Retries(self.config, what)
        while True:
            try:
                return await call(retries.remaining())
            except grpc.aio.AioRpcError as exc:
                if not _retryable(exc):
                    raise map_rpc_error(exc, what) from None
                await retries.pause(exc)

    # -- the Reasoner ------------------------------------------------------------------

    async def think(
        self, params: ThinkParams, *, trace_headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[Event]:
        """The session's events from seq 1 to its COMPLETED or FAILED event, resumed across breaks.
        ``trace_headers`` (W3C trace context) go with the call, so the cloud's spans join the trace."""
        request = think_request_to_pb(params)
        what = f"think {params.request_id}"
        retries = _Retries(self.config, what)
        metadata = (*self._metadata, *(trace_headers or {}).items())
        session_id: str | None = None
        last_seq = 0
        while True:
            stub, _ = self._stubs()
            remaining = retries.remaining()
            if session_id is None:
                call = stub.Think(request, timeout=remaining, metadata=metadata)
            else:
                resume = pb.AttachRequest(session_id=session_id, after_seq=last_seq)
                call = stub.Attach(resume, timeout=remaining, metadata=metadata)
            progressed = ended = False
            error: grpc.aio.AioRpcError | None = None
            try:
                async for message in call:
                    try:
                        event = event_from_pb(message)
                    except InvalidInputError as exc:
                        raise UnavailableError(f"{what}: the cloud sent a malformed event: {exc}") from exc
                    if event.seq <= last_seq:
                        continue  # already seen (defensive: the server never repeats)
                    if event.seq != last_seq + 1 or (session_id is not None and event.session_id != session_id):
                        log.warning(
                            "%s: expected seq %d of %s, got %d of %s; re-attaching",
                            what,
                            last_seq + 1,
                            session_id,
                            event.seq,
                            event.session_id,
                        )
                        break
                    session_id, last_seq, progressed = event.session_id, event.seq, True
                    ended = event.kind.terminal
                    yield event
                    if ended:
                        return
            except grpc.aio.AioRpcError as exc:
                if session_id is not None and exc.code() is grpc.StatusCode.NOT_FOUND:
                    # The caller named no session; the cloud forgot the one it made (restarted
                    # without its store, or expired it). Asking again later starts afresh.
                    raise UnavailableError(f"{what}: the cloud lost session {session_id} at seq {last_seq}") from None
                if not _retryable(exc) or _shed(exc, params, session_id):
                    raise map_rpc_error(exc, what) from None
                error = exc
            finally:
                if ended:
                    await _let_status_arrive(call)
                call.cancel()  # no-op once finished; frees the RPC when the caller stops early
            await retries.pause(error, progressed=progressed, where=f" at seq {last_seq}")
            self.reconnects += 1

    async def submit(self, params: ThinkParams) -> SessionInfo:
        """Create the session (or find the one with this request_id) and return at once."""
        stub, _ = self._stubs()
        request = think_request_to_pb(params)
        message = await self._unary(
            f"submit {params.request_id}",
            lambda timeout: stub.Submit(request, timeout=timeout, metadata=self._metadata),
        )
        return session_info_from_pb(message)

    async def get(self, session_id: str) -> SessionInfo:
        stub, _ = self._stubs()
        ref = pb.SessionRef(session_id=session_id)
        message = await self._unary(
            f"get {session_id}", lambda timeout: stub.GetSession(ref, timeout=timeout, metadata=self._metadata)
        )
        return session_info_from_pb(message)

    async def cancel(self, session_id: str) -> SessionInfo:
        stub, _ = self._stubs()
        ref = pb.SessionRef(session_id=session_id)
        message = await self._unary(
            f"cancel {session_id}", lambda timeout: stub.Cancel(ref, timeout=timeout, metadata=self._metadata)
        )
        return session_info_from_pb(message)

    async def healthy(self, timeout: float = 1.0) -> bool:
        """Whether the server reports the Reasoner SERVING; False on any error, never raises."""
        try:
            _, health = self._stubs()
            response = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - a probe answers yes or no
            log.debug("health check of %s failed: %s", self.config.target, exc)
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING
