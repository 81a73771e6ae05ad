"""A revoked partition's records: after the revoke returned, no DotDigital request for them.

The old and the new owner of a partition are two pipelines in one consumer group of an in-memory
broker (:mod:`stream.kafka.memory`), on the test's loop, each polled turn by turn
(:meth:`~stream.pipeline.processor.Pipeline.poll`): a partition changes hands when the test makes
the new owner join (the broker moves partition 0 to it) or the old one's session expire, and
the revoke runs inside the old owner's next poll, as librdkafka runs it. What the revoke
committed is read back from the broker, and the new owner reads from there.

DotDigital is the sandbox in process (:mod:`stream.sandbox.transport`: each request goes through
its aiohttp application, no socket) on a fake clock: its imports finish only when the test
advances it, so a "slow" flush is slow for as long as the test says. Nothing here sleeps. A wait
for DotDigital's side wakes at each request the sandbox receives or answers
(:meth:`~stream.sandbox.transport.SandboxTransport.until`); the only waits in real time are for
the revoke's own bounds, which are real time, as in production, and for what the pipeline does
on them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.clock import FakeClock
from stream.core.windowing import Trigger
from stream.demo.generator import Target, transition
from stream.dotdigital.transport import Request
from stream.kafka.memory import MemoryBroker
from stream.pipeline.processor import Pipeline
from stream.sandbox import Sandbox, SandboxAddressBook
from stream.sandbox.journal import JournalEntry
from stream.sandbox.transport import SandboxTransport
from stream.settings import Settings
from tests.support.memory_pipeline import NEVER, TOPIC, memory_world
from tests.support.waiting import eventually

USER = "revoke@apiconnector.com"
BOOK = 77
OTHER_BOOK = 78  # a second book of the account: its flushes run beside BOOK's
GROUP = "ddsync"
JOB_SECONDS = 60.0  # sandbox time an import takes: until the test advances the clock
# The broker's sticky assignment gives a second member partition 0 and leaves 1 to the first.
MOVED, KEPT = 0, 1


class Owner:
    """One instance's pipeline, polled by the test instead of a consumer thread."""

    def __init__(
        self, settings: Settings, broker: MemoryBroker, transport: SandboxTransport
    ) -> None:
        self.pipeline = Pipeline(settings, kafka=broker, transport=transport)

    async def poll(self) -> None:
        """One turn of its consumer: rebalances are served, records read."""
        await self.pipeline.poll()

    async def read(self) -> None:
        """A turn of its consumer; what the records read buffer is sent at once."""
        await self.poll()
        self.send_buffered()

    def send_buffered(self) -> None:
        for batch in self.pipeline.windows.drain(Trigger.PRESSURE):
            self.pipeline.dispatcher.submit(batch)

    async def idle(self) -> None:
        """Its flushes are done and their outcomes acknowledged (the records final)."""
        assert await self.pipeline.dispatcher.wait(60), "flushes still running after 60 s"
        self.pipeline.outputs.poll()

    async def close(self) -> None:
        await self.pipeline.dispatcher.cancel()
        await self.pipeline.clients.close()


@dataclasses.dataclass
class World:
    sandbox: Sandbox
    transport: SandboxTransport
    clock: FakeClock
    broker: MemoryBroker
    settings: Settings
    owners: list[Owner] = dataclasses.field(default_factory=list)

    async def owner(self, **batching: Any) -> Owner:
        """A pipeline that joined the group and took its first turn."""
        settings = self.settings
        if batching:
            settings = dataclasses.replace(
                settings, batching=dataclasses.replace(settings.batching, **batching)
            )
        owner = Owner(settings, self.broker, self.transport)
        self.owners.append(owner)
        owner.pipeline.open()
        await owner.poll()
        return owner

    def produce(
        self,
        partition: int,
        email: str,
        action: str,
        profile: str | None = None,
        book: int = BOOK,
    ) -> None:
        profile = profile or email.split("@")[0]
        value = transition(
            event_id=uuid.uuid4().hex,
            profile_id=profile,
            email=email,
            target=Target("main", book),
            action=action,
            occurred_at=datetime.now(UTC),
        )
        self.broker.write(TOPIC, partition, key=profile.encode(), value=orjson.dumps(value))

    def committed(self, partition: int) -> int | None:
        return self.broker.committed(GROUP, (TOPIC, partition))

    def imported(self) -> list[str]:
        """Every email an accepted import carried, in order."""
        return [
            contact["identifiers"]["email"]
            for entry in self.sandbox.journal
            if entry.method == "PUT" and entry.path == "/contacts/v3/import" and entry.status == 202
            for contact in entry.body["contacts"]
        ]

    def members(self) -> set[str]:
        return self.sandbox.members(USER, BOOK)

    async def until(self, check: Callable[[], object], what: str) -> None:
        """Wait for DotDigital's side: ``check()`` is tried again at each request the sandbox
        receives or answers."""
        await self.transport.until(check, what)


def _carries(entry: JournalEntry | Request, email: str) -> bool:
    body = entry.body if isinstance(entry, JournalEntry) else entry.json()
    return email in orjson.dumps(body).decode()


async def pipeline_until(check: Callable[[], object], what: str) -> None:
    """Wait for what the pipeline does on the revoke's real-time bounds (its guards stopped,
    its flushes over): no request marks it, so it is polled."""
    await eventually(check, 30, what, interval=0.01)


async def guards_revoked(owner: Owner) -> None:
    """Wait until the revoke under way in ``owner`` has stopped every send guard it holds."""
    guards = owner.pipeline.dispatcher._guards
    await pipeline_until(lambda: guards and all(g.revoked for g in guards), "guards revoked")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock()
    books = [SandboxAddressBook(BOOK, "revoke"), SandboxAddressBook(OTHER_BOOK, "revoke-other")]
    async with memory_world(
        tmp_path,
        user=USER,
        books=books,
        clock=clock,
        partitions=2,
        group=GROUP,
        import_delay_seconds=JOB_SECONDS,
    ) as (sandbox, transport, broker, settings):
        settings = dataclasses.replace(
            settings,
            batching=dataclasses.replace(
                settings.batching, revoke_flush_seconds=0.2, revoke_job_seconds=5.0
            ),
            # Commits come from revokes only: what is committable stays the test's to read.
            dispatch=dataclasses.replace(settings.dispatch, commit_interval_seconds=NEVER),
        )
        world = World(sandbox, transport, clock, broker, settings)
        try:
            yield world
        finally:
            for each in world.owners:
                await each.close()


async def test_a_batch_queued_behind_a_slow_flush_sends_nothing_of_a_revoked_partition(
    world: World,
) -> None:
    old = await world.owner()
    # A slow flush ahead: y's import is accepted and runs until the clock moves.
    world.produce(KEPT, "y@example.com", "add")
    await old.read()
    await world.until(lambda: world.imported() == ["y@example.com"], "y's import accepted")
    # x enters on the partition that moves: its batch queues behind y's, in the same book.
    world.produce(MOVED, "x@example.com", "add")
    await old.read()
    new = await world.owner()  # joins: the broker moves a partition to it
    await old.poll()  # the revoke
    assert world.broker.assignment(GROUP) == {world.broker.members(GROUP)[0]: [(TOPIC, KEPT)]}
    assert world.committed(MOVED) == 0, "x's record is not final: nothing committed past it"

    # The new owner reads x's entry again, and its later exit, and removes x.
    world.produce(MOVED, "x@example.com", "remove")
    await new.read()
    await new.idle()
    assert new.pipeline.ledger.committable() == {(TOPIC, MOVED): 2}

    # The slow flush ends; the old owner's queued batch must not add x back.
    world.clock.advance(JOB_SECONDS + 1)
    await old.idle()
    assert world.members() == {"y@example.com"}
    assert world.imported() == ["y@example.com"], "x was sent after its partition was revoked"
    assert old.pipeline.ledger.open_records == 0


async def test_a_job_already_accepted_is_awaited_inside_the_revoke(world: World) -> None:
    old = await world.owner()
    world.produce(MOVED, "x@example.com", "add")
    await old.read()
    await world.until(lambda: world.imported() == ["x@example.com"], "x's import accepted")
    await world.owner()
    revoking = asyncio.create_task(old.poll())
    # Past the flush bound the revoke stops new requests, and waits for the accepted job.
    await guards_revoked(old)
    assert not revoking.done()
    world.clock.advance(JOB_SECONDS + 1)
    await asyncio.wait_for(revoking, 30)
    # The import finished inside the revoke: x's record is final and committed with it.
    assert world.committed(MOVED) == 1
    assert world.members() == {"x@example.com"}


async def test_a_job_that_does_not_end_is_awaited_for_the_bound_only(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    old = await world.owner(revoke_job_seconds=1.0)
    world.produce(MOVED, "x@example.com", "add")
    await old.read()
    await world.until(lambda: world.imported() == ["x@example.com"], "x's import accepted")
    await world.owner()
    started = time.monotonic()
    # The job never ends (the sandbox clock stands still): the revoke gives up at its bound
    # (0.2 s of flush, 1 s for jobs) and leaves x's record uncommitted for the new owner.
    await old.poll()
    print(f"\nrevoke returned after {time.monotonic() - started:.1f} s (bound 1.2 s)")
    assert world.committed(MOVED) == 0
    (guard,) = old.pipeline.dispatcher._guards
    assert guard.revoked
    assert guard.busy, "it returned at the bound, with the job still being polled"
    assert any("still running after 1 s" in r.getMessage() for r in caplog.records)


async def test_an_operation_still_retrying_stops_at_the_revoke(world: World) -> None:
    old = await world.owner()
    world.sandbox.faults.update({"fail_next": 1_000_000})  # every call answered 503: retried
    world.produce(MOVED, "x@example.com", "add")
    await old.read()
    await world.until(lambda: len(world.sandbox.journal) >= 2, "x's import retried")
    await world.owner()
    await old.poll()
    assert world.committed(MOVED) == 0
    sent = len(world.sandbox.journal)  # what was sent before the revoke returned
    # The import stops before its next attempt instead of retrying for its 60 s budget, and
    # reports nothing: x is neither synced nor dead-lettered by this instance.
    await asyncio.wait_for(old.idle(), 30)
    # Nothing of x after the revoke; the kept partition's records still go out.
    world.sandbox.faults.update({"fail_next": 0})
    world.produce(KEPT, "y@example.com", "add")
    await old.read()
    await world.until(lambda: world.imported() == ["y@example.com"], "y's import accepted")
    world.clock.advance(JOB_SECONDS + 1)
    await old.idle()
    assert world.members() == {"y@example.com"}
    journal = world.sandbox.journal[sent:]
    assert all("x@example.com" not in orjson.dumps(e.body).decode() for e in journal)
    assert old.pipeline.dead_letters is not None
    assert old.pipeline.dead_letters.pending == 0, "x must not be dead-lettered by the old owner"
    assert world.broker.records("dlq", 0) == []


async def test_a_request_in_the_air_at_the_revoke_is_followed_into_its_job(world: World) -> None:
    old = await world.owner()
    # The client connects first (region detection), with y on the kept partition.
    world.produce(KEPT, "y@example.com", "add")
    await old.read()
    await world.until(lambda: world.imported() == ["y@example.com"], "y's import accepted")
    world.clock.advance(JOB_SECONDS + 1)
    await old.idle()
    # x's import is in the air when the revoke comes (sent, held short of the sandbox);
    # DotDigital accepts it once the revoke has stopped new requests.
    world.transport.hold()
    world.produce(MOVED, "x@example.com", "add")
    await old.read()
    await world.until(
        lambda: any(_carries(r, "x@example.com") for r in world.transport.received),
        "x's import sent",
    )
    assert any(g._in_air for g in old.pipeline.dispatcher._guards)
    await world.owner()
    revoking = asyncio.create_task(old.poll())
    await guards_revoked(old)
    assert not revoking.done(), "the revoke waits for the request in the air"
    world.transport.release()
    await world.until(lambda: world.imported()[-1:] == ["x@example.com"], "x's import accepted")
    # The revoke now waits for the accepted job (its bound is 5 s), not for the request alone.
    world.clock.advance(JOB_SECONDS + 1)
    await asyncio.wait_for(revoking, 30)
    assert world.committed(MOVED) == 1
    assert world.members() == {"x@example.com", "y@example.com"}


async def test_an_operation_stopped_by_the_revoke_restarts_without_the_revoked_contacts(
    world: World,
) -> None:
    """An operation the revoke stopped may start again while the revoke still waits (here for
    an accepted job of another book): from then on the revoked partitions' contacts are no
    longer ours, although their records are still open until the revoke forgets them."""
    old = await world.owner(revoke_job_seconds=3.0)
    # x's import is accepted and runs until the clock moves: the revoke will wait for it.
    world.produce(MOVED, "x@example.com", "add")
    await old.read()
    await world.until(lambda: world.imported() == ["x@example.com"], "x's import accepted")
    # w's import, in another book, is retried (every call answered 503): between its attempts
    # it is stopped without anything to wait for, and its next attempt starts it again.
    world.sandbox.faults.update({"fail_next": 1_000_000})
    world.produce(MOVED, "w@example.com", "add", book=OTHER_BOOK)
    await old.read()
    await world.until(
        lambda: any(_carries(e, "w@example.com") for e in world.sandbox.journal), "w sent"
    )
    await world.owner()
    await old.poll()  # the revoke: 0.2 s of flush, then up to 3 s for x's job
    sent = len(world.sandbox.journal)
    world.sandbox.faults.update({"fail_next": 0})
    await pipeline_until(
        lambda: (
            "w@example.com" in world.imported()
            or all(b.address_book_id != OTHER_BOOK for b in old.pipeline.dispatcher.batches)
        ),
        "w's flush over",
    )
    assert not any(_carries(e, "w@example.com") for e in world.sandbox.journal[sent:])
    assert "w@example.com" not in world.imported(), "w was sent after its partition was revoked"
    assert world.committed(MOVED) == 0


async def test_a_lost_partition_is_not_sent_for_any_more(world: World) -> None:
    old = await world.owner()
    world.sandbox.faults.update({"fail_next": 1_000_000})  # every call answered 503: retried
    world.produce(MOVED, "x@example.com", "add")
    await old.read()
    await world.until(lambda: len(world.sandbox.journal) >= 2, "x's import retried")
    # Lost, not revoked: its session expired, another member may own its partitions already.
    # Nothing is waited for, and the retrying import stops before its next attempt instead of
    # retrying for its budget.
    (member,) = world.broker.members(GROUP)
    world.broker.expire(GROUP, member)
    await old.poll()
    assert not old.pipeline.ledger.owned
    sent = len(world.sandbox.journal)
    await asyncio.wait_for(old.idle(), 30)
    assert len(world.sandbox.journal) <= sent + 1, "at most the request already in the air"
    assert old.pipeline.ledger.open_records == 0
    assert old.pipeline.dead_letters is not None
    assert old.pipeline.dead_letters.pending == 0
    assert world.committed(MOVED) is None


@pytest.mark.parametrize("batches", [1, 2], ids=["one contact", "two batches"])
async def test_a_record_superseded_from_a_kept_partition_is_committed_with_the_revoke(
    world: World, batches: int
) -> None:
    """One email under two profiles on two partitions: the newer transition, on the partition
    kept, must stay the last one applied when the older one's partition changes hands."""
    old = await world.owner()
    # A slow flush ahead keeps x's batch queued past the revoke bound.
    world.produce(KEPT, "y@example.com", "add")
    await old.read()
    await world.until(lambda: world.imported() == ["y@example.com"], "y's import accepted")
    # x enters as profile a (partition moving), then leaves as profile b (partition kept): one
    # contact (its winner the removal, the entry superseded) or two batches, the removal's
    # queued behind.
    world.produce(MOVED, "x@example.com", "add", profile="a")
    if batches == 2:
        await old.read()
    world.produce(KEPT, "x@example.com", "remove", profile="b")
    await old.read()
    assert old.pipeline.dispatcher.in_flight == 1 + batches
    new = await world.owner()
    await old.poll()
    assert world.committed(MOVED) == 1, "x's entry is superseded by a record still ours"
    # The old owner applies the newer transition (x leaves) after the revoke.
    world.clock.advance(JOB_SECONDS + 1)
    await old.idle()
    assert old.pipeline.ledger.open_records == 0

    # The new owner reads from the committed offset; what it read again there would be applied
    # after the old owner's removal.
    await new.read()
    await pipeline_until(
        lambda: new.pipeline.dispatcher.in_flight == 0 or "x@example.com" in world.imported(),
        "the new owner idle or its import accepted",
    )
    world.clock.advance(JOB_SECONDS + 1)
    await new.idle()
    assert world.members() == {"y@example.com"}, "x's older entry applied last"


@pytest.mark.parametrize("lost", [False, True], ids=["revoked", "lost"])
async def test_an_older_record_kept_is_not_sent_after_a_newer_one_revoked(
    world: World, lost: bool
) -> None:
    """The other way round: the newer transition is on the partition that moves, so its new
    owner applies it; the older one, on the partition kept and queued, must not be sent after
    it."""
    old = await world.owner()
    world.produce(KEPT, "y@example.com", "add")
    await old.read()
    await world.until(lambda: world.imported() == ["y@example.com"], "y's import accepted")
    # x enters as profile b (partition kept), then leaves as profile a (partition moving): two
    # batches queued behind y's slow import, the entry's first.
    world.produce(KEPT, "x@example.com", "add", profile="b")
    await old.read()
    world.produce(MOVED, "x@example.com", "remove", profile="a")
    await old.read()
    if lost:
        # librdkafka reports a whole assignment lost; the handler's contract takes any part of
        # it, so the consumer thread's call is made here, for the moving partition alone.
        await asyncio.to_thread(old.pipeline.on_lost, [(TOPIC, MOVED)])
    new = await world.owner()
    await old.poll()  # the revoke (of a partition already given up, when lost)
    assert world.committed(MOVED) == (None if lost else 0), "x's exit is for the new owner"

    await new.read()
    await new.idle()  # a removal: no job to wait for
    # The old owner's queue moves on; nothing it sends may bring x back.
    world.clock.advance(JOB_SECONDS + 1)
    await old.idle()
    assert world.members() == {"y@example.com"}, "x's older entry applied last"
    assert old.pipeline.ledger.committable() == {(TOPIC, KEPT): 2}


async def test_a_job_accepted_for_a_yielded_record_is_awaited_inside_the_revoke(
    world: World,
) -> None:
    old = await world.owner()
    # x enters as profile b (partition kept): its import is accepted and runs until the clock
    # moves.
    world.produce(KEPT, "x@example.com", "add", profile="b")
    await old.read()
    await world.until(lambda: world.imported() == ["x@example.com"], "x's import accepted")
    # x leaves as profile a (partition moving), queued behind; then that partition moves.
    world.produce(MOVED, "x@example.com", "remove", profile="a")
    await old.read()
    new = await world.owner()
    revoking = asyncio.create_task(old.poll())
    await guards_revoked(old)
    # The entry's job would land after the new owner's removal: the revoke waits for it.
    assert not revoking.done()
    world.clock.advance(JOB_SECONDS + 1)
    await asyncio.wait_for(revoking, 30)
    assert world.committed(MOVED) == 0
    await new.read()
    await new.idle()
    await old.idle()
    assert world.members() == set()
    assert old.pipeline.ledger.committable() == {(TOPIC, KEPT): 1}


async def test_a_superseded_record_below_an_open_one_is_reread_and_says_so(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """What the handover cannot help: the revoked partition's commit stays below the superseded
    record, so its new owner reads it again. The revoke says so."""
    old = await world.owner()
    world.sandbox.faults.update({"fail_next": 1_000_000})  # every call answered 503: retried
    world.produce(MOVED, "z@example.com", "add")
    await old.read()
    world.produce(MOVED, "x@example.com", "add", profile="a")
    world.produce(KEPT, "x@example.com", "remove", profile="b")
    await old.read()
    await world.until(lambda: len(world.sandbox.journal) >= 2, "z's import retried")
    await world.owner()
    await old.poll()
    assert world.committed(MOVED) == 0
    assert any("1 records superseded" in r.getMessage() for r in caplog.records)
