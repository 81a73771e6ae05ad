"""The DotDigital client's test accounts in an in-process sandbox over real HTTP, on a FakeClock.

The client and the sandbox share the ``clock`` fixture: rate-limit windows, job delays, backoff
and polling all run on it. A fixture module (``tests/conftest.py`` registers it): ``clock`` is a
fresh :class:`FakeClock`, ``sandbox`` the sandbox holding :func:`accounts`; a test module that
needs another sandbox defines its own ``sandbox`` fixture, which overrides this one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from stream.clock import FakeClock
from stream.dotdigital import DotDigitalClient, RetryPolicy
from stream.pipeline.clients import client_config
from stream.sandbox import (
    Sandbox,
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    run_sandbox,
)
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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sandbox(clock: FakeClock) -> AsyncIterator[Sandbox]:
    async with run_sandbox(SandboxSettings(accounts=accounts(), clock=clock)) as sb:
        yield sb


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
    **overrides: Any,
) -> DotDigitalClient:
    return await DotDigitalClient.connect(
        client_config(connector(sb, username, **overrides)),
        clock=clock,
        retry=retry or fast_retry(),
    )
