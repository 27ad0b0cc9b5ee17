"""The edge API's error bodies, the same in a JSON response and in a stream's error event.

Two shapes, chosen by the path: edgecloud's own, ``{"error": {"type": <code>, "message"}}``
(:func:`edgecloud.shared.base.asgi.error_body`), and OpenAI's, ``{"error": {"message", "type",
"param", "code"}}``, on the routes OpenAI's clients call (:func:`is_openai_path`), whose clients pick
their exception by the HTTP status and show the message. A deliberate error's code is
:attr:`EdgecloudError.code <edgecloud.shared.base.errors.EdgecloudError.code>` in both.
:func:`add_error_handlers` answers every error of the app's routes with its body; the streaming
routes end a broken stream with the same body (:mod:`edgecloud.edge.api.sse`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgecloud.shared.base.asgi import error_body as edgecloud_error_body
from edgecloud.shared.base.asgi import error_response
from edgecloud.shared.base.errors import EdgecloudError

__all__ = ["add_error_handlers", "error_body", "is_openai_path", "openai_error", "openai_error_body"]

_OPENAI_PATHS = ("/v1/chat/", "/v1/models", "/v1/responses")
# OpenAI's error types by HTTP status; its clients pick their exception by the status, show the message
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                 429: "rate_limit_error", 503: "server_error"}  # fmt: skip


def is_openai_path(path: str) -> bool:
    """Whether errors on ``path`` take OpenAI's shape (the routes OpenAI clients call)."""
    return path.startswith(_OPENAI_PATHS)


def openai_error_body(status: int, code: str | None, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A response with :func:`openai_error_body`."""
    return JSONResponse(openai_error_body(status, code, message, param), status_code=status, headers=headers)


def error_body(exc: EdgecloudError, *, openai: bool) -> dict[str, Any]:
    """The body of ``exc``: OpenAI's shape when ``openai``, edgecloud's otherwise."""
    if openai:
        return openai_error_body(exc.http_status, exc.code, str(exc))
    return edgecloud_error_body(exc.code, str(exc))


def add_error_handlers(app: FastAPI) -> None:
    """Every error of ``app``'s routes answered with its body: a deliberate error with its status
    (and ``Retry-After`` for OpenAI's clients on 429 and 503), a body that does not validate with
    422 (OpenAI's 400, naming the parameter), any other HTTP error with its status."""

    @app.exception_handler(EdgecloudError)
    async def on_edgecloud_error(request: Request, exc: EdgecloudError) -> JSONResponse:
        openai = is_openai_path(request.url.path)
        retry = {"Retry-After": "5"} if openai and exc.http_status in (429, 503) else None
        return JSONResponse(error_body(exc, openai=openai), status_code=exc.http_status, headers=retry)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        if is_openai_path(request.url.path):  # OpenAI clients expect 400, naming the parameter
            first = exc.errors()[0]["loc"] if exc.errors() else ()
            param = ".".join(str(p) for p in first[1:]) if first[:1] == ("body",) else None
            return openai_error(400, problems or "invalid request", param=param or None, code="invalid_value")
        return error_response(422, "invalid_request", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail))
