"""The edge API's error bodies: edgecloud's own and OpenAI's, by path, with the error's code."""

from __future__ import annotations

import json

import pytest

from edgecloud.edge.api.errors import error_body, is_openai_path, openai_error, openai_error_body
from edgecloud.shared.base.asgi import error_response
from edgecloud.shared.base.errors import (
    EdgecloudError,
    InvalidInputError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)


@pytest.mark.parametrize(
    ("path", "openai"),
    [("/v1/chat/completions", True), ("/v1/models/x", True), ("/v1/responses/r/cancel", True),
     ("/v1/query", False), ("/healthz", False)],
)  # fmt: skip
def test_the_openai_routes_are_known_by_their_path(path: str, openai: bool) -> None:
    assert is_openai_path(path) is openai


def test_edgecloud_s_body_is_the_json_error_response_s() -> None:
    exc = UnavailableError("no cloud configured")
    response = error_response(exc.http_status, exc.code, str(exc))
    assert (
        error_body(exc, openai=False)
        == json.loads(response.body)
        == {"error": {"type": "unavailable", "message": "no cloud configured"}}
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (InvalidInputError("bad"), "invalid_request_error"),
        (NotFoundError("gone"), "invalid_request_error"),
        (ResourceExhaustedError("full"), "rate_limit_error"),
        (UnavailableError("down"), "server_error"),
    ],
)
def test_openai_s_body_carries_the_error_s_code_and_the_type_its_clients_expect(exc: EdgecloudError, kind: str) -> None:
    body = error_body(exc, openai=True)
    assert body == {"error": {"message": str(exc), "type": kind, "param": None, "code": exc.code}}
    assert body == openai_error_body(exc.http_status, exc.code, str(exc))


def test_an_openai_error_response_names_the_parameter() -> None:
    response = openai_error(404, "no model", param="model", code="model_not_found", headers={"Retry-After": "5"})
    assert response.status_code == 404 and response.headers["retry-after"] == "5"
    assert json.loads(response.body)["error"] == {
        "message": "no model",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
