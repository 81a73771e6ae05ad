"""Dispatch against the in-process sandbox over real HTTP: one dead-letter reason per cause.

No Kafka here: the dispatcher's input is a batch and its output the listener's calls, so a
tiny listener records them. The sandbox and the dispatcher share one FakeClock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime

import aiohttp
import pytest

from stream.clock import FakeClock
from stream.core.events import Action, Kind, Transition
from stream.core.offsets import RecordRef
from stream.core.reasons import Reason
from stream.core.suspensions import Suspensions
from stream.core.windowing import Batch, Contact, Trigger
from stream.dotdigital import DotDigitalClient, Operation, RetryPolicy
from stream.observability.metrics import Metrics
from stream.pipeline.clients import ClientPool, client_config
from stream.pipeline.dispatch import Dispatcher, Failure, Sent
from stream.sandbox import (
    Sandbox,
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    run_sandbox,
)
from stream.settings import ConnectorSettings, Secret
from tests.support import basic_auth

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

USER = "apiuser-dispatch@apiconnector.com"
PASSWORD = "dispatch-Password-7"
CONNECTOR = "eu"
BOOK = 801


class Recorder:
    """A dispatch listener that keeps what it is told."""

    def __init__(self) -> None:
        self.done: list[tuple[Operation, str]] = []
        self.failures: dict[str, Failure] = {}

    def synced(
        self,
        batch: Batch,
        operation: Operation,
        contacts: Sequence[Contact],
        sent: Mapping[str, Sent],
    ) -> None:
        self.done.extend((operation, c.email) for c in contacts)

    def failed(self, batch: Batch, contact: Contact, failure: Failure) -> None:
        assert contact.email not in self.failures  # exactly one outcome per contact
        self.failures[contact.email] = failure

    def holds(self, contact: Contact) -> bool:
        return True  # one owner, no rebalance

    def released(self, contact: Contact) -> bool:
        return False

    def dropped(self, batch: Batch, contact: Contact) -> None:
        raise AssertionError(f"{contact.email} dropped without a revoke")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sandbox(clock: FakeClock) -> AsyncIterator[Sandbox]:
    account = SandboxAccount(
        USER,
        PASSWORD,
        region="r1",
        account_id=21,
        import_delay_seconds=0.4,
        deletion_delay_seconds=0.3,
        address_books=(SandboxAddressBook(BOOK, "Leaving soon"),),
    )
    async with run_sandbox(SandboxSettings(accounts=[account], clock=clock)) as sb:
        yield sb


def settings(sb: Sandbox) -> ConnectorSettings:
    return ConnectorSettings(
        name=CONNECTOR,
        username=USER,
        password=Secret(PASSWORD),
        discovery_endpoint=sb.discovery_url,
        request_timeout_seconds=10.0,
    )


def contact(email: str, action: Action, offset: int) -> Contact:
    transition = Transition(
        event_id=f"e-{offset}",
        kind=Kind.AUDIENCE,
        source_id="aud-1",
        action=action,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        connector_id=CONNECTOR,
        address_book_id=BOOK,
        profile_id=f"p-{offset}",
        email=email,
    )
    ref = RecordRef("transitions", 0, offset)
    return Contact(email=email, transition=transition, winner=ref, refs=(ref,))


async def test_a_deleted_book_dead_letters_adds_and_removes_alike(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await DotDigitalClient.connect(
        client_config(settings(sandbox)), clock=clock, retry=RetryPolicy(random=lambda: 0.5)
    ) as client:
        await client.import_contacts(BOOK, ["leaving@example.com", "other@example.com"])
    # Someone deletes the address book in DotDigital.
    async with (
        aiohttp.ClientSession(headers={"Authorization": basic_auth(USER, PASSWORD)}) as session,
        session.delete(f"{sandbox.urls['r1']}/v2/address-books/{BOOK}") as response,
    ):
        assert response.status == 204

    recorder = Recorder()
    pool = ClientPool({CONNECTOR: settings(sandbox)}, clock=clock)
    dispatcher = Dispatcher(
        pool,
        recorder,
        retry_timeout=60.0,
        clock=clock,
        metrics=Metrics(),
        suspensions=Suspensions((CONNECTOR,), clock, 60.0),
    )
    batch = Batch(
        connector_id=CONNECTOR,
        address_book_id=BOOK,
        window_start=0.0,
        sequence=1,
        adds=(contact("new@example.com", Action.ADD, 1),),
        removes=(contact("leaving@example.com", Action.REMOVE, 2),),
        trigger=Trigger.WINDOW,
    )
    try:
        await dispatcher.submit(batch)
    finally:
        await pool.close()

    assert recorder.done == []
    assert set(recorder.failures) == {"new@example.com", "leaving@example.com"}
    for failure in recorder.failures.values():
        assert failure.reason is Reason.ADDRESS_BOOK_NOT_FOUND
        assert failure.code == "ERROR_ADDRESSBOOK_NOT_FOUND"
