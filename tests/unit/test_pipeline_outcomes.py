"""The outcomes topic and the mass-removal guard, through the pipeline's public turns.

One pipeline on the in-memory broker, the sandbox in process: what reaches the outcomes topic is
read off the broker, what DotDigital holds off the sandbox, and when the records are final off
the committed offsets.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from stream.clock import FakeClock
from stream.core.outcome_format import Outcome, decode, key_of
from stream.demo.generator import Target, transition
from stream.kafka.memory import MemoryBroker
from stream.pipeline.processor import Pipeline
from stream.sandbox import Sandbox, SandboxAddressBook
from stream.sandbox.transport import SandboxTransport
from stream.settings import RemovalGuardSettings, Settings
from tests.support.memory_pipeline import DLQ, OUTCOMES, TOPIC, memory_world

USER = "outcomes@apiconnector.com"
BOOK = 92


@dataclass
class World:
    sandbox: Sandbox
    transport: SandboxTransport
    broker: MemoryBroker
    settings: Settings
    clock: FakeClock
    offset: int = 0

    def produce(self, email: str, action: str) -> int:
        value = transition(
            event_id=f"evt-{self.offset}",
            profile_id=email.split("@")[0],
            email=email,
            target=Target("main", BOOK),
            action=action,
            occurred_at=datetime(2024, 5, 1, 12, tzinfo=UTC),
        )
        self.broker.write(TOPIC, 0, key=email.encode(), value=orjson.dumps(value))
        self.offset += 1
        return self.offset - 1

    def outcomes(self) -> list[Outcome]:
        found = []
        for record in self.broker.records(OUTCOMES, 0):
            outcome = decode(record.value)
            assert record.key == key_of(outcome.connector, outcome.address_book_id, outcome.email)
            found.append(outcome)
        return found

    def latest(self) -> dict[str, Outcome]:
        return {outcome.email: outcome for outcome in self.outcomes()}

    def pipeline(self, settings: Settings | None = None) -> Pipeline:
        return Pipeline(
            settings or self.settings, kafka=self.broker, transport=self.transport, clock=self.clock
        )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock()
    books = [SandboxAddressBook(BOOK, "outcomes")]
    # No outcomes topic yet: the first test creates it when it wants its records taken.
    async with memory_world(
        tmp_path, user=USER, books=books, clock=clock, outcomes_topic=False
    ) as (sandbox, transport, broker, settings):
        yield World(sandbox, transport, broker, settings, clock)


async def flush(pipeline: Pipeline) -> None:
    """A turn, everything buffered sent, and the delivery reports served."""
    await pipeline.poll()
    for batch in pipeline.windows.drain():
        pipeline.dispatcher.submit(batch)
    assert await pipeline.dispatcher.wait(30), "the flush did not end"
    pipeline.outputs.poll()


async def test_each_contact_s_outcome_is_published_before_its_records_are_committed(
    world: World,
) -> None:
    # No outcomes topic yet: the broker refuses the outcomes, so nothing may be committed.
    pipeline = world.pipeline()
    pipeline.open()
    world.produce("ada@example.com", "add")
    world.produce("bob@example.com", "add")
    await flush(pipeline)
    assert world.sandbox.members(USER, BOOK) == {"ada@example.com", "bob@example.com"}
    assert pipeline.ledger.open_records == 2, "final before the outcomes were published"
    assert pipeline.ledger.position((TOPIC, 0)) == 0
    assert pipeline.metrics.outcome_errors._value.get() >= 1

    # The topic appears; the outcomes go out on their retry, and the records become final.
    world.broker.create_topic(OUTCOMES)
    world.clock.advance(2)
    pipeline.outputs.poll()
    pipeline.outputs.poll()
    assert pipeline.ledger.open_records == 0
    assert pipeline.ledger.position((TOPIC, 0)) == 2

    world.produce("ada@example.com", "remove")
    world.produce("cyd@example.com", "remove")  # never in the book
    await flush(pipeline)
    await pipeline.close()
    assert world.broker.committed("ddsync", (TOPIC, 0)) == 4

    latest = world.latest()
    assert {email: (o.action, o.state.value, o.reported.value) for email, o in latest.items()} == {
        "ada@example.com": ("remove", "not_member", "removed"),
        "bob@example.com": ("add", "member", "created"),
        "cyd@example.com": ("remove", "not_member", "not_found"),
    }
    bob = latest["bob@example.com"]
    assert (bob.connector, bob.address_book_id, bob.origin) == ("main", BOOK, "stream")
    assert (bob.source_topic, bob.source_partition, bob.source_offset) == (TOPIC, 0, 1)
    assert bob.event_id == "evt-1"
    assert bob.contact_id is not None
    assert latest["ada@example.com"].contact_id not in (None, bob.contact_id)


async def guarded_book_of_six(world: World) -> tuple[Pipeline, list[str]]:
    """A pipeline whose guard allows half a book (at least 2), and a book of six synced."""
    world.broker.create_topic(OUTCOMES)
    settings = dataclasses.replace(
        world.settings,
        removal_guard=RemovalGuardSettings(share=0.5, min_contacts=2, window_seconds=60),
    )
    pipeline = world.pipeline(settings)
    pipeline.open()
    emails = [f"p{i}@example.com" for i in range(6)]
    for email in emails:
        world.produce(email, "add")
    await flush(pipeline)
    return pipeline, emails


async def test_a_held_removal_is_dead_lettered_with_its_outcome_and_a_replay_releases_it(
    world: World,
) -> None:
    pipeline, emails = await guarded_book_of_six(world)
    for email in emails[:4]:  # 4 of 6 leave: the allowance is 3
        world.produce(email, "remove")
    await flush(pipeline)
    assert world.sandbox.members(USER, BOOK) == set(emails), "the removals were sent"
    letters = world.broker.records(DLQ, 0)
    assert len(letters) == 4
    assert {o.email: (o.state.value, o.reason) for o in world.outcomes()[6:]} == {
        email: ("dead_lettered", "removal_guard") for email in emails[:4]
    }
    assert pipeline.ledger.position((TOPIC, 0)) == 10, "held records are final"
    assert pipeline.metrics.removals_held.labels("main")._value.get() == 4

    # The operator replays them: the same records with the replay's headers, then released.
    for letter in letters:
        headers = [
            (name, value)
            for name, value in (letter.headers or ())
            if not name.startswith("ddsync.")
        ]
        headers += [("ddsync.replay_count", b"1"), ("ddsync.replayed_reason", b"removal_guard")]
        world.broker.write(TOPIC, 0, key=letter.key, value=letter.value, headers=headers)
    await flush(pipeline)
    await pipeline.close()
    assert world.sandbox.members(USER, BOOK) == set(emails[4:])
    assert {o.email: o.state.value for o in world.outcomes()[10:]} == {
        email: "not_member" for email in emails[:4]
    }


async def test_a_shadow_connector_sends_nothing_and_records_its_plans(world: World) -> None:
    world.broker.create_topic(OUTCOMES)
    main = dataclasses.replace(world.settings.connectors["main"], mode="shadow")
    pipeline = world.pipeline(dataclasses.replace(world.settings, connectors={"main": main}))
    pipeline.open()
    world.produce("ada@example.com", "add")
    world.produce("bob@example.com", "add")
    world.produce("bob@example.com", "remove")
    world.produce("cyd@example.com", "remove")
    await flush(pipeline)
    await pipeline.close()
    assert list(world.sandbox.journal) == [], "a shadow connector called DotDigital"
    assert world.broker.committed("ddsync", (TOPIC, 0)) == 4
    assert {e: (o.state.value, o.reported.value) for e, o in world.latest().items()} == {
        "ada@example.com": ("would_add", "not_sent"),
        "bob@example.com": ("would_remove", "not_sent"),
        "cyd@example.com": ("would_remove", "not_sent"),
    }
    planned = pipeline.metrics.records_planned
    assert planned.labels("main", "add")._value.get() == 1
    assert planned.labels("main", "remove")._value.get() == 3


async def test_a_shutdown_the_broker_did_not_acknowledge_says_so(world: World) -> None:
    # The outcomes topic is missing: the broker never acknowledges the outcomes.
    pipeline = world.pipeline()
    pipeline.open()
    world.produce("ada@example.com", "add")
    await flush(pipeline)
    closing = asyncio.create_task(pipeline.close())
    # The shutdown waits for the acknowledgements on the fake clock (until its flush deadline,
    # then in the revoke of the final close): time moves, slowly enough for the real-time
    # waits computed from it (the final commit's) to stay long.
    while not closing.done():
        world.clock.advance(0.5)
        await asyncio.sleep(0.01)
    assert world.sandbox.members(USER, BOOK) == {"ada@example.com"}
    assert pipeline.unacknowledged == 1
    assert not pipeline.abandoned
    assert world.broker.committed("ddsync", (TOPIC, 0)) in (None, 0), "committed past it"


async def test_a_held_removal_is_reported_once_when_its_flush_is_stopped_and_restarted(
    world: World,
) -> None:
    # A flush of released and held removals, stopped mid-removal (as a revoke stops it) and
    # restarted: the held contacts were reported already and must not be judged again.
    pipeline, emails = await guarded_book_of_six(world)
    released = [("ddsync.replay_count", b"1"), ("ddsync.replayed_reason", b"removal_guard")]
    value = transition(
        event_id="evt-released",
        profile_id="p0",
        email="p0@example.com",
        target=Target("main", BOOK),
        action="remove",
        occurred_at=datetime(2024, 5, 1, 12, tzinfo=UTC),
    )
    world.broker.write(TOPIC, 0, key=b"p0", value=orjson.dumps(value), headers=released)
    for email in emails[1:5]:
        world.produce(email, "remove")
    await pipeline.poll()
    world.transport.hold()
    for batch in pipeline.windows.drain():
        pipeline.dispatcher.submit(batch)
    # The guard asks the book's size first; the removal that follows is the one held.
    await world.transport.until(
        lambda: any(r.url.endswith(f"/address-books/{BOOK}") for r in world.transport.received),
        "the book's size asked",
    )
    world.transport.release()
    world.transport.hold()
    await world.transport.until(
        lambda: any(r.url.endswith("/contacts/delete") for r in world.transport.received),
        "the removal sent",
    )
    pipeline.dispatcher.stop_sending({(TOPIC, 0)})
    world.transport.release()
    assert await pipeline.dispatcher.wait(30)
    pipeline.outputs.poll()
    await pipeline.close()
    assert world.sandbox.members(USER, BOOK) == set(emails) - {"p0@example.com"}
    letters = world.broker.records(DLQ, 0)
    assert sorted(r.key or b"" for r in letters) == [e.encode() for e in emails[1:5]], "once each"
