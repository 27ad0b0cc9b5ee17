"""Serving ASGI apps: the inbound guard in front of every route, a server on a thread, and a daemon
that returns on SIGTERM. A small Starlette app behind the real guard, served by real uvicorn on a
loopback port (``ThreadedServer``, port 0); refusals that need a malformed or unfinished request go
over a raw socket."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edgecloud.shared.base.asgi import (
    Inbound,
    InboundGuard,
    ThreadedServer,
    error_response,
    presented_key,
    response_for,
)
from edgecloud.shared.base.errors import InvalidInputError, NotFoundError, UnavailableError
from tests.helpers.waiting import free_port, wait_for

LIMIT = 100
KEYS = ("first-key-0123456789", "second-key-0123456789")
JSON = frozenset({"application/json"})


def openai_body(status: int, kind: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": kind, "status": status}}


def policy(method: str, path: str) -> Inbound:
    if path in ("/healthz", "/slow"):
        return Inbound(max_body_bytes=0)
    if path == "/open":
        return Inbound(max_body_bytes=LIMIT)
    if path == "/v1/openai":
        return Inbound(max_body_bytes=LIMIT, keys=KEYS, media_types=JSON, error_body=openai_body)
    return Inbound(max_body_bytes=LIMIT, keys=KEYS, media_types=JSON)


class App:
    """The app behind the guard, and what its routes saw."""

    def __init__(self) -> None:
        self.seen: list[object] = []
        self.lifespan: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()

        async def echo(request: Request) -> JSONResponse:
            try:
                body = await request.body()
            except ClientDisconnect:
                self.seen.append("disconnected")
                raise
            self.seen.append(body)
            return JSONResponse({"bytes": len(body)})

        async def slow(request: Request) -> JSONResponse:
            self.entered.set()
            await asyncio.to_thread(self.release.wait, 30)
            return JSONResponse({"finished": True})

        async def healthz(request: Request) -> JSONResponse:
            return JSONResponse({"ok": True})

        @asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            self.lifespan.append("startup")
            yield
            self.lifespan.append("shutdown")

        routes = [Route(p, echo, methods=["POST"]) for p in ("/data", "/open", "/v1/openai")]
        routes += [Route("/slow", slow), Route("/healthz", healthz)]
        self.asgi = InboundGuard(Starlette(routes=routes, lifespan=lifespan), policy)


@pytest.fixture
def served() -> Iterator[tuple[App, ThreadedServer]]:
    app = App()
    server = ThreadedServer(app.asgi, lifespan="on", name="test-guard")
    server.start()
    yield app, server
    app.release.set()
    server.stop()


def raw(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], Any]:
    """Send a request as written (a malformed or unfinished one included); the status, headers and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"{head}\r\nHost: 127.0.0.1\r\n\r\n".encode() + body)
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            assert data, "closed without an answer"
            received += data
        top, _, rest = received.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        while len(rest) < int(headers.get("content-length", "0")):
            data = sock.recv(65536)
            if not data:
                break
            rest += data
    return int(lines[0].split()[1]), headers, json.loads(rest) if rest else None


def api_error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["type"]


def test_a_key_is_presented_as_a_bearer_token_or_an_api_key_header() -> None:
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"authorization": "bearer abc"}) == "abc"  # the scheme is case-insensitive
    assert presented_key({"authorization": "Bearer abc", "x-api-key": "def"}) == "abc"
    assert presented_key({"authorization": "Basic abc", "x-api-key": "def"}) == "def"
    assert presented_key({"x-api-key": "def"}) == "def"
    assert presented_key({}) == ""


def test_a_route_s_keys_any_one_of_them(served: tuple[App, ThreadedServer]) -> None:
    app, server = served
    with httpx.Client(base_url=server.url, timeout=20) as http:
        for headers in ({"Authorization": f"Bearer {KEYS[0]}"}, {"X-API-Key": KEYS[1]}):
            assert http.post("/data", json={"a": 1}, headers=headers).json() == {"bytes": len(b'{"a":1}')}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": KEYS[0][:-1]}, {"Authorization": KEYS[0]}):
            refused = http.post("/data", json={"a": 1}, headers=headers)
            assert api_error(refused) == (401, "unauthenticated"), headers
            assert refused.headers["www-authenticate"] == "Bearer"
            assert refused.headers["connection"] == "close"  # the rest of a refused body is never read
        assert http.post("/open", content=b"x").json() == {"bytes": 1}  # no keys: none needed
        assert http.get("/healthz").json() == {"ok": True}
    assert app.seen == [b'{"a":1}', b'{"a":1}', b"x"]  # the refused requests never reached a route


def test_the_media_type_is_checked_before_the_body(served: tuple[App, ThreadedServer]) -> None:
    app, server = served
    key = {"X-API-Key": KEYS[0]}
    with httpx.Client(base_url=server.url, timeout=20) as http:
        for media in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
            ok = http.post("/data", content=b"{}", headers={**key, "Content-Type": media})
            assert ok.status_code == 200, media
        for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
            refused = http.post("/data", content=b"{}", headers={**key, "Content-Type": media})
            assert api_error(refused) == (415, "unsupported_media_type"), media
            assert "application/json" in refused.json()["error"]["message"]
        assert api_error(http.post("/data", content=b"{}", headers=key)) == (415, "unsupported_media_type")
        # The key comes first: a caller without one learns nothing of the route's media types.
        assert api_error(http.post("/data", content=b"x", headers={"Content-Type": "text/plain"}))[0] == 401
    assert len(app.seen) == 3


def test_a_body_up_to_the_bound_is_read_and_one_past_it_is_refused(served: tuple[App, ThreadedServer]) -> None:
    app, server = served
    port = server.port
    with httpx.Client(base_url=server.url, timeout=20) as http:
        assert http.post("/open", content=b"x" * LIMIT).json() == {"bytes": LIMIT}
        refused = http.post("/open", content=b"x" * (LIMIT + 1))  # declared: refused on the headers
        assert api_error(refused) == (413, "request_too_large") and str(LIMIT) in refused.json()["error"]["message"]
    assert app.seen == [b"x" * LIMIT]

    # Chunked, the body declares no length: the byte past the bound is refused, the route sees the client gone.
    chunks = b"".join(f"{40:x}\r\n".encode() + b"y" * 40 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    status, headers, body = raw(port, "POST /open HTTP/1.1\r\nTransfer-Encoding: chunked", chunks)
    assert (status, body["error"]["type"]) == (413, "request_too_large") and headers["connection"] == "close"
    wait_for(lambda: app.seen[1:] == ["disconnected"], timeout=20, what="the route to see the client gone")

    # A chunked body within the bound goes through whole.
    status, _, body = raw(port, "POST /open HTTP/1.1\r\nTransfer-Encoding: chunked", chunks[: 2 * 46] + b"0\r\n\r\n")
    assert (status, body) == (200, {"bytes": 80})


def test_a_malformed_length_is_refused_without_reaching_the_app() -> None:
    # uvicorn's parser refuses these itself; behind another server (or a proxy) the guard still does.
    app = App()

    async def call(length: str) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/open", "raw_path": b"/open", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), (b"content-length", length.encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        }  # fmt: skip

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app.asgi(scope, receive, send)
        return sent

    for length in ("-5", "1e3", "0x10", "5 "):
        start, body = asyncio.run(call(length))
        assert start["status"] == 400, length
        assert json.loads(body["body"])["error"]["type"] == "invalid_input"
    assert app.seen == []


def test_a_route_may_give_its_refusals_another_shape(served: tuple[App, ThreadedServer]) -> None:
    _, server = served
    with httpx.Client(base_url=server.url, timeout=20) as http:
        refused = http.post("/v1/openai", json={})
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json() == openai_body(401, "unauthenticated", "missing or invalid API key")
        too_large = http.post(
            "/v1/openai", content=b"1" * (LIMIT + 1), headers={"X-API-Key": KEYS[0], "Content-Type": "application/json"}
        )
        assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_too_large"


def test_deliberate_errors_answer_with_their_status_and_type() -> None:
    for error, status, kind in (
        (InvalidInputError("query is empty"), 400, "invalid_input"),
        (NotFoundError("no such session"), 404, "not_found"),
        (UnavailableError("the cloud is down"), 503, "unavailable"),
    ):
        response = response_for(error)
        assert response.status_code == status
        assert json.loads(response.body) == {"error": {"type": kind, "message": str(error)}}
    custom = error_response(429, "rate_limited", "slow down", {"Retry-After": "3"})
    assert custom.status_code == 429 and custom.headers["retry-after"] == "3"
    assert json.loads(custom.body) == {"error": {"type": "rate_limited", "message": "slow down"}}


def test_the_server_runs_the_app_s_lifespan_through_the_guard() -> None:
    app = App()
    server = ThreadedServer(app.asgi, lifespan="on")
    assert server.start() == server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert app.lifespan == ["startup"]
    server.stop()
    assert app.lifespan == ["startup", "shutdown"]


def test_stop_finishes_the_requests_in_flight_then_stops_listening(served: tuple[App, ThreadedServer]) -> None:
    app, server = served
    answers: list[httpx.Response] = []
    request = threading.Thread(target=lambda: answers.append(httpx.get(f"{server.url}/slow", timeout=30)))
    request.start()
    assert app.entered.wait(20), "the slow request never reached its route"
    stopping = threading.Thread(target=server.stop)
    stopping.start()

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", server.port)) == 0

    wait_for(lambda: not listening(), timeout=20, what="the server to stop accepting connections")
    assert not answers  # still in flight while the server shuts down
    app.release.set()
    request.join(20)
    stopping.join(20)
    assert not stopping.is_alive()
    assert [(a.status_code, a.json()) for a in answers] == [(200, {"finished": True})]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn exits its thread
def test_a_server_that_cannot_listen_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = ThreadedServer(App().asgi, port=taken.getsockname()[1], lifespan="off", name="clashing")
        with pytest.raises(UnavailableError, match="clashing did not start listening"):
            server.start(timeout=20)


DAEMON = """
import signal, sys
from starlette.applications import Starlette
from edgecloud.shared.base.asgi import serve_until_signal

try:
    serve_until_signal(Starlette(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    print("returned", flush=True)
finally:
    print("cleanup", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_daemon_returns_on_a_signal_and_runs_its_cleanup(signum: int) -> None:
    port = free_port()
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON, str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:

        def listening() -> bool:
            assert daemon.poll() is None, daemon.stderr.read().decode() if daemon.stderr else ""
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, timeout=30, what="the daemon to listen")
        daemon.send_signal(signum)
        out, err = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    assert daemon.returncode == 0, err.decode()
    # serve_until_signal returned, the caller's cleanup ran, and the default handler is back.
    assert out.decode().split("\n")[:2] == ["returned", "cleanup True"]
