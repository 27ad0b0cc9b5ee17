"""``is_loopback``: which bind addresses only this machine can reach (the cloud and the edge refuse
plaintext tokens, or require them, on the others)."""

from __future__ import annotations

import pytest

from edgecloud.shared.base.net import is_loopback


@pytest.mark.parametrize(
    "host",
    ["localhost", "127.0.0.1", "127.0.0.53", "127.255.255.254", "::1", "[::1]", "0:0:0:0:0:0:0:1"],
)
def test_loopback_addresses_are_loopback(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",  # every interface
        "::",  # every interface, v6
        "[::]",
        "10.1.2.3",
        "192.168.0.10",
        "128.0.0.1",  # one past 127.0.0.0/8
        "::ffff:10.0.0.1",
        "fe80::1",
        "example.com",  # a host name resolves to who knows what: not loopback
        "localhost.example.com",
        "",
    ],
)
def test_every_other_address_or_name_is_not(host: str) -> None:
    assert not is_loopback(host)
