"""The contact-id cache settings of a connector (``[connectors.NAME]``)."""

from __future__ import annotations

import pytest

from stream.config import parse_connector
from stream.settings import ConfigError

ENV = {"PW": "secret-pw"}


def test_the_contact_cache_defaults() -> None:
    settings = parse_connector("eu", {"username": "u@x", "password_env": "PW"}, ENV)
    assert settings.contact_cache_size == 1_000_000
    assert settings.contact_cache_ttl_seconds == 3600.0


def test_the_contact_cache_is_configurable() -> None:
    raw = {
        "username": "u@x",
        "password_env": "PW",
        "contact_cache_size": 5000,
        "contact_cache_ttl_seconds": 90,
    }
    settings = parse_connector("eu", raw, ENV)
    assert settings.contact_cache_size == 5000
    assert settings.contact_cache_ttl_seconds == 90.0


@pytest.mark.parametrize(
    ("key", "value"),
    [("contact_cache_size", 0), ("contact_cache_ttl_seconds", -1), ("contact_cache_size", "x")],
)
def test_a_bad_contact_cache_setting_is_named(key: str, value: object) -> None:
    raw = {"username": "u@x", "password_env": "PW", key: value}
    with pytest.raises(ConfigError, match=f"connectors.eu.{key}"):
        parse_connector("eu", raw, ENV)
