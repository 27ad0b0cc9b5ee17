"""The cloud's configuration: what is refused at construction, and when device tokens are required.

(Tokens over plaintext off loopback are covered with a real server in
tests/security/test_cloud_sessions.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.cloud.budget import BudgetConfig
from edgecloud.cloud.config import AuthConfig, CloudConfig, TlsConfig, load_tokens
from edgecloud.cloud.engine import EngineConfig
from edgecloud.shared.base.errors import ConfigError

TOKEN = "a-device-token-of-32-characters!"


def test_a_valid_config_keeps_its_values(tmp_path: Path) -> None:
    config = CloudConfig(model=tmp_path, port=0, metrics_port=None, max_message_bytes=1024)
    assert (config.model, config.port, config.metrics_port, config.max_message_bytes) == (tmp_path, 0, None, 1024)
    assert config.host == "127.0.0.1" and not config.auth_required


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": -1}, "port must be in"),
        ({"port": 65536}, "port must be in"),
        ({"max_message_bytes": 1023}, "max_message_bytes"),
        (
            {"budget": BudgetConfig(maximum=2048), "engine": EngineConfig(max_reasoning_tokens=1024)},
            "budget.maximum exceeds",
        ),
    ],
    ids=["port-negative", "port-too-high", "tiny-messages", "budget-over-engine"],
)
def test_bad_values_are_refused_at_construction(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CloudConfig(model=tmp_path, **changes)


def test_the_model_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        CloudConfig(model=tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        CloudConfig(model=tmp_path / "file")


def test_a_budget_up_to_the_engine_s_ceiling_is_accepted(tmp_path: Path) -> None:
    config = CloudConfig(
        model=tmp_path, budget=BudgetConfig(maximum=1024), engine=EngineConfig(max_reasoning_tokens=1024)
    )
    assert config.budget.maximum == config.engine.max_reasoning_tokens


@pytest.mark.parametrize(
    ("host", "auth", "required"),
    [
        ("127.0.0.1", AuthConfig(), False),  # loopback, no tokens: nobody else can call
        ("::1", AuthConfig(), False),
        ("127.0.0.1", AuthConfig(tokens={TOKEN: "dev-a"}), True),  # tokens configured: checked
        ("0.0.0.0", AuthConfig(), True),  # off loopback: required (the server refuses to start without tokens)
        ("10.0.0.5", AuthConfig(), True),
        ("0.0.0.0", AuthConfig(required=False), False),  # --no-auth says otherwise
        ("127.0.0.1", AuthConfig(tokens={TOKEN: "dev-a"}, required=False), False),
    ],
)
def test_when_device_tokens_are_required(tmp_path: Path, host: str, auth: AuthConfig, required: bool) -> None:
    assert CloudConfig(model=tmp_path, host=host, auth=auth, allow_plaintext_tokens=True).auth_required is required


def test_auth_required_without_tokens_is_refused() -> None:
    with pytest.raises(ConfigError, match="no device tokens"):
        AuthConfig(required=True)
    assert AuthConfig(required=True, tokens={TOKEN: "dev-a"}).required


def test_tls_files_must_exist(tmp_path: Path) -> None:
    pem = tmp_path / "server.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    assert TlsConfig(cert=pem, key=pem, client_ca=pem).client_ca == pem
    with pytest.raises(ConfigError, match="tls.key"):
        TlsConfig(cert=pem, key=tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="tls.client_ca"):
        TlsConfig(cert=pem, key=pem, client_ca=tmp_path)  # a folder is not a file
    with pytest.raises(ConfigError, match="tls.cert"):
        TlsConfig(cert=tmp_path / "missing.pem", key=pem)


def test_tokens_are_read_as_token_to_device(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"dev-a": TOKEN, "dev-b": "b" * 16}))
    assert load_tokens(path) == {TOKEN: "dev-a", "b" * 16: "dev-b"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read device tokens"),
        ("{not json", "cannot read device tokens"),
        (json.dumps(["dev-a", TOKEN]), "expected a JSON object"),
        (json.dumps({"dev-a": 1234567890123456789}), "expected a JSON object"),
        (json.dumps({"dev-a": TOKEN, "dev-b": "short"}), r"at least 16 characters \(devices \['dev-b'\]\)"),
    ],
    ids=["missing", "not-json", "a-list", "a-number", "a-short-token"],
)
def test_bad_token_files_are_refused(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "tokens.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_tokens(path)


@pytest.mark.parametrize(
    ("store", "extra", "message"),
    [
        ("redis://:secret@127.0.0.1:6379/0", {}, "password in a file"),
        ("redis://10.0.0.5:6379/0", {}, "10.0.0.5 .not loopback. needs a password"),
        ("redis://127.0.0.1:6379/0", {"store_lease_s": 0}, "store_lease_s must be > 0"),
        ("redis://127.0.0.1:6379/0", {"store_password_file": Path("/nonexistent/pw")}, "not a readable file"),
    ],
)
def test_a_shared_store_is_checked_at_construction(tmp_path: Path, store: str, extra: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CloudConfig(model=tmp_path, store=store, **extra)


def test_a_shared_store_off_loopback_is_accepted_with_a_password_file(tmp_path: Path) -> None:
    password = tmp_path / "redis-password"
    password.write_text("s3cret\n")
    config = CloudConfig(model=tmp_path, store="rediss://redis.internal:6380/2", store_password_file=password)
    assert config.store_lease_s == 5.0
    assert CloudConfig(model=tmp_path, store="cloud.sqlite3", store_lease_s=0).store == "cloud.sqlite3"  # not used
