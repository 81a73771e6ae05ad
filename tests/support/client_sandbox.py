"""The DotDigital client's test accounts in an in-process sandbox over real HTTP, on a FakeClock.

The client and the sandbox share the ``clock`` fixture: rate-limit windows, job delays, backoff
and polling all run on it. A fixture module (``tests/conftest.py`` registers it): ``clock`` is a
fresh :class:`FakeClock`, ``sandbox`` the sandbox holding
:func:`tests.support.client_accounts.accounts`; a test module that needs another sandbox
defines its own ``sandbox`` fixture, which overrides this one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stream.clock import FakeClock
from stream.sandbox import Sandbox, SandboxSettings, run_sandbox
from tests.support.client_accounts import accounts


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sandbox(clock: FakeClock) -> AsyncIterator[Sandbox]:
    async with run_sandbox(SandboxSettings(accounts=accounts(), clock=clock)) as sb:
        yield sb
