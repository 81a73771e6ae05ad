"""The DotDigital client tests' sandbox accounts, and clients of them.

Data and helpers only, no fixtures: a unit test that runs the sandbox in process
(:mod:`stream.sandbox.transport`) uses them as the fixtures of :mod:`tests.support.client_sandbox`
(the same accounts over real HTTP) do.
"""

from __future__ import annotations

from typing import Any

from stream.clock import FakeClock
from stream.dotdigital import DotDigitalClient, RetryPolicy
from stream.dotdigital.transport import Transport
from stream.pipeline.clients import client_config
from stream.sandbox import Sandbox, SandboxAccount, SandboxAddressBook
from stream.settings import ConnectorSettings, Secret

PASSWORD = "correct-Horse-battery-staple-42"
USER = "apiuser-main@apiconnector.com"  # lives in r2: detection has something to find
TIGHT = "apiuser-tight@apiconnector.com"  # r1, tiny per-minute budgets
FLAT = "apiuser-flat@apiconnector.com"  # r1, flat (hourly) scheme
STUCK = "apiuser-stuck@apiconnector.com"  # r1, imports that never finish
BOOK_A, BOOK_B, TIGHT_BOOK, STUCK_BOOK = 501, 502, 601, 701


def accounts() -> list[SandboxAccount]:
    return [
        SandboxAccount(
            USER,
            PASSWORD,
            region="r2",
            account_id=10,
            import_delay_seconds=0.4,
            deletion_delay_seconds=0.3,
            address_books=(
                SandboxAddressBook(BOOK_A, "Audience A"),
                SandboxAddressBook(BOOK_B, "Audience B", "Public"),
            ),
        ),
        SandboxAccount(
            TIGHT,
            PASSWORD,
            region="r1",
            account_id=11,
            add_per_minute=2,
            remove_per_minute=1,
            address_books=(SandboxAddressBook(TIGHT_BOOK, "Tight"),),
        ),
        SandboxAccount(
            FLAT, PASSWORD, region="r1", account_id=12, rate_limit_scheme="flat", flat_per_hour=3
        ),
        SandboxAccount(
            STUCK,
            PASSWORD,
            region="r1",
            account_id=13,
            import_delay_seconds=1e9,
            address_books=(SandboxAddressBook(STUCK_BOOK, "Stuck"),),
        ),
    ]


def connector(sb: Sandbox, username: str = USER, **overrides: Any) -> ConnectorSettings:
    fields: dict[str, Any] = {
        "name": "test",
        "username": username,
        "password": Secret(PASSWORD),
        "discovery_endpoint": sb.discovery_url,
        # Fail fast if something hangs instead of waiting DotDigital's 121 s.
        "request_timeout_seconds": 10.0,
    }
    fields.update(overrides)
    return ConnectorSettings(**fields)


def fast_retry(**overrides: Any) -> RetryPolicy:
    return RetryPolicy(**{"total_seconds": 600.0, "random": lambda: 0.5, **overrides})


async def connect(
    sb: Sandbox,
    clock: FakeClock,
    username: str = USER,
    retry: RetryPolicy | None = None,
    transport: Transport | None = None,
    **overrides: Any,
) -> DotDigitalClient:
    """A client of ``username`` on ``sb``; over HTTP, or through ``transport`` (the sandbox in
    process)."""
    return await DotDigitalClient.connect(
        client_config(connector(sb, username, **overrides)),
        transport=transport,
        clock=clock,
        retry=retry or fast_retry(),
    )
