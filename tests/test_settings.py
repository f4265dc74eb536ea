"""Settings: what the SSRF guard's networks setting accepts and refuses."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from pydantic import ValidationError

from dispatcher.settings import Settings


@pytest.mark.parametrize(
    ("text", "networks"),
    [
        ("", ()),
        ("127.0.0.0/8", (ip_network("127.0.0.0/8"),)),
        (" 10.0.0.0/8 , ::1/128 ,", (ip_network("10.0.0.0/8"), ip_network("::1/128"))),
        ("192.0.2.7", (ip_network("192.0.2.7/32"),)),
    ],
)
def test_allowed_networks_are_parsed(text: str, networks: tuple[object, ...]) -> None:
    assert Settings(allowed_networks=text).networks() == networks


@pytest.mark.parametrize("text", ["10.0.0.0/33", "example.com", "10.0.0.1/8"])
def test_a_bad_network_is_refused_when_settings_are_read(text: str) -> None:
    with pytest.raises(ValidationError, match="is not a CIDR network"):
        Settings(allowed_networks=text)
