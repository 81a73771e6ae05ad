"""Connector suspension through the dispatcher, against the in-process sandbox over real HTTP.

Two accounts; one's API user is locked (every call answers 401, as DotDigital does for a locked
user or a disabled account). The dispatcher and the sandbox share one FakeClock, so the retry
budget and the probe interval pass without waiting.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import cast

import pytest

from stream.clock import FakeClock
from stream.core.events import Action, Kind, Transition
from stream.core.offsets import RecordRef
from stream.core.reasons import Reason
from stream.core.suspensions import Suspensions
from stream.core.windowing import Batch, Contact, Trigger
from stream.dotdigital import (
    AuthenticationError,
    DotDigitalClient,
    Operation,
    RetriesExhausted,
    RetryPolicy,
    TransientError,
)
from stream.observability.metrics import Metrics
from stream.pipeline.clients import ClientPool
from stream.pipeline.dispatch import Dispatcher, Failure, Sent
from stream.sandbox import (
    Sandbox,
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    run_sandbox,
)
from stream.settings import ConnectorSettings, Secret

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

PASSWORD = "suspension-Password-3"
USERS = {"good": "apiuser-good@apiconnector.com", "locked": "apiuser-locked@apiconnector.com"}
BOOKS = {"good": 901, "locked": 902}
PROBE = 60.0


class Recorder:
    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []
        self.failures: dict[str, Failure] = {}

    def synced(
        self,
        batch: Batch,
        operation: Operation,
        contacts: Sequence[Contact],
        sent: Mapping[str, Sent],
    ) -> None:
        self.done.extend((batch.connector_id, c.email) for c in contacts)

    def failed(self, batch: Batch, contact: Contact, failure: Failure) -> None:
        self.failures[contact.email] = failure

    def holds(self, contact: Contact) -> bool:
        return True

    def released(self, contact: Contact) -> bool:
        return False

    def dropped(self, batch: Batch, contact: Contact) -> None:
        raise AssertionError("no revoke here")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sandbox(clock: FakeClock) -> AsyncIterator[Sandbox]:
    accounts = [
        SandboxAccount(
            user,
            PASSWORD,
            region="r1",
            account_id=40 + n,
            import_delay_seconds=0.2,
            address_books=(SandboxAddressBook(BOOKS[name], "members"),),
        )
        for n, (name, user) in enumerate(USERS.items())
    ]
    async with run_sandbox(SandboxSettings(accounts=accounts, clock=clock)) as sb:
        yield sb


def batch(connector: str, *emails: str, sequence: int = 1) -> Batch:
    contacts = []
    for n, email in enumerate(emails):
        ref = RecordRef("transitions", 0, sequence * 100 + n)
        transition = Transition(
            event_id=f"e-{ref.offset}",
            kind=Kind.AUDIENCE,
            source_id="aud-1",
            action=Action.ADD,
            occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
            connector_id=connector,
            address_book_id=BOOKS[connector],
            profile_id=f"p-{ref.offset}",
            email=email,
        )
        contacts.append(Contact(email=email, transition=transition, winner=ref, refs=(ref,)))
    return Batch(connector, BOOKS[connector], 0.0, sequence, tuple(contacts), (), Trigger.WINDOW)


def api_calls(sandbox: Sandbox) -> int:
    return len(sandbox.journal)


async def test_a_locked_account_is_suspended_not_called_then_resumed_by_a_probe(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    connectors = {
        name: ConnectorSettings(
            name=name,
            username=user,
            password=Secret(PASSWORD),
            discovery_endpoint=sandbox.discovery_url,
            request_timeout_seconds=10.0,
        )
        for name, user in USERS.items()
    }
    sandbox.lock(USERS["locked"])
    recorder = Recorder()
    metrics = Metrics()
    suspensions = Suspensions(connectors, clock, PROBE)
    pool = ClientPool(connectors, clock=clock)
    dispatcher = Dispatcher(
        pool, recorder, retry_timeout=30.0, clock=clock, metrics=metrics, suspensions=suspensions
    )
    try:
        # Credentials refused through the retry budget: auth_failed, and the connector is
        # suspended before its contacts are reported.
        await dispatcher.submit(batch("locked", "first@example.com"))
        assert recorder.failures["first@example.com"].reason is Reason.AUTH_FAILED
        suspension = suspensions.of("locked")
        assert suspension is not None
        assert suspension.cause is Reason.AUTH_FAILED
        assert metrics.connector_suspended.labels("locked")._value.get() == 1

        # Suspended: failed at once, no request made; the other connector is served.
        calls = api_calls(sandbox)
        await dispatcher.submit(batch("locked", "second@example.com", sequence=2))
        failure = recorder.failures["second@example.com"]
        assert failure.reason is Reason.CONNECTOR_SUSPENDED
        assert failure.code == Reason.AUTH_FAILED.value
        assert PASSWORD not in failure.message
        assert api_calls(sandbox) == calls
        await dispatcher.submit(batch("good", "healthy@example.com", sequence=3))
        assert ("good", "healthy@example.com") in recorder.done

        # A probe while still locked changes nothing; after the unlock the next one resumes.
        assert dispatcher.probe() == [], "not due yet"
        clock.advance(PROBE)
        await asyncio.gather(*dispatcher.probe())
        assert suspensions.of("locked") is not None
        sandbox.lock(USERS["locked"], locked=False)
        clock.advance(PROBE)
        await asyncio.gather(*dispatcher.probe())
        assert suspensions.of("locked") is None
        assert metrics.connector_suspended.labels("locked")._value.get() == 0
        await dispatcher.submit(batch("locked", "third@example.com", sequence=4))
        assert ("locked", "third@example.com") in recorder.done
        assert sandbox.members(USERS["locked"], BOOKS["locked"]) == {"third@example.com"}
    finally:
        await dispatcher.cancel()
        await pool.close()


class _Client:
    """The add is refused (401); the remove, waiting meanwhile, then runs out of budget on 503s."""

    def __init__(self) -> None:
        self.removing = asyncio.Event()
        self.refused = asyncio.Event()

    async def import_contacts(self, *args: object, **kwargs: object) -> object:
        await self.removing.wait()
        self.refused.set()
        raise RetriesExhausted(AuthenticationError("401", status=401), attempts=5, elapsed=30)

    async def remove_contacts(self, *args: object, **kwargs: object) -> object:
        self.removing.set()
        await self.refused.wait()
        raise RetriesExhausted(TransientError("503", status=503), attempts=1, elapsed=30)


class _Pool:
    def __init__(self) -> None:
        self.client = _Client()

    async def get(
        self, connector_id: str, *, retry: RetryPolicy, deadline: float
    ) -> DotDigitalClient:
        # A stand-in client with the two calls the dispatcher makes of it.
        return cast(DotDigitalClient, self.client)


async def test_a_budget_spent_while_the_account_fails_is_not_sent_not_exhausted() -> None:
    # Found by the chaos run: the remove of the batch whose add was refused spent its budget
    # waiting (for the connection the refused add held) and then met a 503; dead-lettered as
    # retries_exhausted, it was left out of the replay of the connector's records.
    clock = FakeClock()
    recorder = Recorder()
    suspensions = Suspensions(("locked", "good"), clock, PROBE)
    dispatcher = Dispatcher(
        _Pool(),
        recorder,
        retry_timeout=30.0,
        clock=clock,
        metrics=Metrics(),
        suspensions=suspensions,
    )
    contacts = batch("locked", "joining@example.com", "leaving@example.com")
    leaving = contacts.adds[1]
    split = dataclasses.replace(contacts, adds=contacts.adds[:1], removes=(leaving,))
    await dispatcher.submit(split)
    assert recorder.failures["joining@example.com"].reason is Reason.AUTH_FAILED
    assert recorder.failures["leaving@example.com"].reason is Reason.CONNECTOR_SUSPENDED
