"""Backpressure and the dead-letter breaker, through the pipeline's public turns.

One pipeline on the in-memory broker (:mod:`stream.kafka.memory`), polled by the test, with the
sandbox in process (:mod:`stream.sandbox.transport`): what the consumer takes and when it
stops taking is read off the ledger, the broker and the sandbox.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from stream.clock import FakeClock
from stream.core.deadletter_format import DeadLetter
from stream.core.reasons import Reason
from stream.demo.generator import Target, transition
from stream.kafka.memory import MemoryBroker
from stream.pipeline.processor import Pipeline
from stream.sandbox import Sandbox, SandboxAddressBook
from stream.sandbox.transport import SandboxTransport
from stream.settings import Settings
from tests.support.memory_pipeline import DLQ, TOPIC, memory_world

USER = "pressure@apiconnector.com"
BOOK = 91
CAP = 10  # batching.max_buffered_records


@dataclass
class World:
    sandbox: Sandbox
    transport: SandboxTransport
    broker: MemoryBroker
    settings: Settings

    def add(self, email: str) -> None:
        value = transition(
            event_id=uuid.uuid4().hex,
            profile_id=email.split("@")[0],
            email=email,
            target=Target("main", BOOK),
            action="add",
            occurred_at=datetime.now(UTC),
        )
        self.broker.write(TOPIC, 0, key=email.encode(), value=orjson.dumps(value))

    def garbage(self, n: int) -> None:
        for i in range(n):
            self.broker.write(TOPIC, 0, key=f"k{i}".encode(), value=b"not json")

    def letters(self) -> list[DeadLetter]:
        return [DeadLetter.from_headers(r.headers or ()) for r in self.broker.records(DLQ, 0)]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    # The sandbox's clock is fake: its jobs end at once.
    async with memory_world(
        tmp_path,
        user=USER,
        books=[SandboxAddressBook(BOOK, "pressure")],
        clock=FakeClock(),
        max_buffered_records=CAP,
    ) as (sandbox, transport, broker, settings):
        yield World(sandbox, transport, broker, settings)


async def test_past_the_cap_the_consumer_pauses_flushes_at_once_and_resumes_when_drained(
    world: World,
) -> None:
    first = [f"first{i}@example.com" for i in range(3 * CAP)]
    for email in first:
        world.add(email)
    pipeline = Pipeline(world.settings, kafka=world.broker, transport=world.transport)
    pipeline.open()
    while pipeline.ledger.open_records == 0:
        await pipeline.poll()
    # Past the cap: paused, and the window (which would not close before 2033) sent at once.
    assert pipeline.ledger.open_records == 3 * CAP
    assert pipeline.ingest.paused
    second = [f"second{i}@example.com" for i in range(CAP)]
    for email in second:
        world.add(email)
    await pipeline.poll()
    assert pipeline.ledger.open_records <= 3 * CAP, "a paused consumer takes nothing more"

    assert await pipeline.dispatcher.wait(30), "the pressure flush did not end"
    assert world.sandbox.members(USER, BOOK) == set(first)
    # Drained below half the cap: it resumes and takes the rest.
    for _ in range(5):
        await pipeline.poll()
    assert not pipeline.ingest.paused
    pipeline.stop()
    await pipeline.close()
    assert world.sandbox.members(USER, BOOK) == set(first) | set(second)
    assert world.broker.committed("ddsync", (TOPIC, 0)) == 4 * CAP


async def test_mostly_bad_input_opens_the_breaker_and_stops_consumption_for_good(
    world: World,
) -> None:
    settings = dataclasses.replace(
        world.settings,
        dead_letter=dataclasses.replace(
            world.settings.dead_letter, breaker_window=100, breaker_min_records=50
        ),
        batching=dataclasses.replace(world.settings.batching, max_buffered_records=50_000),
    )
    world.garbage(200)
    world.add("after@example.com")
    pipeline = Pipeline(settings, kafka=world.broker, transport=world.transport)
    pipeline.open()
    for _ in range(5):
        await pipeline.poll()
    assert pipeline.breaker.is_open
    assert pipeline.ingest.paused
    letters = world.letters()
    # What was read before it opened is dead-lettered with its reason; nothing after it is taken.
    assert 50 <= len(letters) < 200
    assert {letter.reason for letter in letters} == {Reason.INVALID_EVENT}
    for _ in range(5):
        await pipeline.poll()
    assert len(world.letters()) == len(letters), "consumption stays stopped"
    pipeline.stop()
    await pipeline.close()
    assert world.sandbox.members(USER, BOOK) == set()
    committed = world.broker.committed("ddsync", (TOPIC, 0))
    assert committed == len(letters), "records after the breaker opened stay uncommitted"
