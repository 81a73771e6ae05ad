"""The sandbox in process answers as the sandbox over HTTP does.

One client session (region detection, an import, a removal, a 429 of the rate limits, a 401)
runs against each; the journals, answers included, must be the same: the unit tests on the
in-process transport (``tests/unit/test_sandbox_transport.py``, ``test_revoke.py``) then show
what they would show over HTTP.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from stream.clock import FakeClock
from stream.dotdigital import AuthenticationError, DotDigitalClient
from stream.dotdigital.transport import Transport
from stream.sandbox import (
    Sandbox,
    SandboxSettings,
    run_sandbox,
)
from stream.sandbox.transport import in_process_sandbox
from stream.settings import Secret
from tests.support.client_accounts import (
    BOOK_A,
    PASSWORD,
    TIGHT,
    TIGHT_BOOK,
    USER,
    accounts,
    connect,
)

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

BOOK = BOOK_A


def _settings(clock: FakeClock) -> SandboxSettings:
    return SandboxSettings(accounts=accounts(), clock=clock, seed=1)


async def _session(sandbox: Sandbox, clock: FakeClock, transport: Transport | None) -> None:
    async def connect_as(username: str, password: str = PASSWORD) -> DotDigitalClient:
        return await connect(
            sandbox, clock, username, transport=transport, password=Secret(password)
        )

    async with await connect_as(USER) as client:
        await client.import_contacts(BOOK, ["a@example.com", "b@example.com", "not-an-email"])
        await client.remove_contacts(BOOK, ["A@example.com"])
    async with await connect_as(TIGHT) as client:
        # All three are sent before any answer tells the client that the budget is 2.
        await asyncio.gather(
            *(client.import_contacts(TIGHT_BOOK, [f"y{i}@example.com"]) for i in range(3))
        )
    with pytest.raises(AuthenticationError):
        await connect_as(USER, "wrong-" + PASSWORD)


def _comparable(sandbox: Sandbox) -> list[tuple[Any, ...]]:
    # Ids, times and URLs differ between runs and hosts, and concurrent requests may arrive in
    # either order: what is compared is what was asked and how it was answered.
    return sorted(
        (
            (e.method, _UUID.sub("{id}", e.path), e.region, e.account, e.status, _shape(e.response))
            for e in sandbox.journal
        ),
        key=repr,
    )


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k not in _VARYING}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return value


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_VARYING = {"id", "link", "importId", "dateCreated", "created", "updated", "value"}


async def test_the_in_process_sandbox_answers_as_the_one_over_http() -> None:
    clock = FakeClock()
    async with run_sandbox(_settings(clock)) as over_http:
        await _session(over_http, clock, None)
    clock = FakeClock()
    in_process, transport = in_process_sandbox(_settings(clock))
    await _session(in_process, clock, transport)
    await transport.close()
    assert _comparable(in_process) == _comparable(over_http)
    assert 429 in [e.status for e in in_process.journal]
    assert 401 in [e.status for e in in_process.journal]
