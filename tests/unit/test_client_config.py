"""The DotDigital client library's configuration, and its independence of the application."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from stream.dotdigital.config import ClientConfig
from stream.pipeline.clients import client_config
from stream.settings import ConnectorSettings, Secret

LIBRARY = Path(__file__).resolve().parents[2] / "stream" / "dotdigital"
# What of ddsync the client library may import besides itself: time as a dependency.
ALLOWED = ("stream.clock", "stream.dotdigital")


def test_a_connectors_settings_become_the_clients_config() -> None:
    connector = ConnectorSettings(
        name="eu",
        username="apiuser",
        password=Secret("hunter2"),
        api_endpoint="https://r2-api.dotdigital.com",
        add_requests_per_minute=10,
        remove_requests_per_minute=11,
        other_requests_per_minute=12,
        max_active_imports=3,
        request_timeout_seconds=4.5,
        contact_cache_size=6,
        contact_cache_ttl_seconds=7.0,
    )
    config = client_config(connector)
    assert config.password() == "hunter2"
    for name in (f.name for f in dataclasses.fields(ClientConfig) if f.name != "password"):
        assert getattr(config, name) == getattr(connector, name), name


def test_the_defaults_agree_with_the_connectors() -> None:
    # Two layers, two sets of defaults: they must not drift apart.
    defaulted = client_config(ConnectorSettings(name="n", username="u", password=Secret("p")))
    assert defaulted == ClientConfig(name="n", username="u", password=lambda: "p")


def test_the_config_never_shows_the_password() -> None:
    config = client_config(ConnectorSettings(name="n", username="u", password=Secret("hunter2")))
    assert "hunter2" not in repr(config)
    assert "hunter2" not in str(config)


def test_the_client_library_imports_nothing_of_the_application() -> None:
    offending = []
    for path in sorted(LIBRARY.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                if module.startswith("stream") and not module.startswith(ALLOWED):
                    offending.append(f"{path.name}: {module}")
    assert offending == []
