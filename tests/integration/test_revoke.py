"""A revoked partition's records: after the revoke returned, no DotDigital request for them.

Two pipelines, the old and the new owner of a partition, run in-process on the test's loop; the
records are handed to them directly (in-memory, in partition order, as the consumer thread
would), so each test decides exactly when a partition changes hands. DotDigital is the
in-process sandbox over real HTTP, on a fake clock: its imports finish only when the test
advances it, so a "slow" flush is slow for as long as the test says, without sleeping. The
dead-letter producer writes to the real broker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from stream.clock import FakeClock
from stream.config import Settings, load_settings
from stream.core.windowing import Trigger
from stream.demo.generator import Target, transition
from stream.kafka.backend import KafkaRecord
from stream.kafka.client_config import producer_config
from stream.kafka.deadletters import DeadLetterPublisher
from stream.kafka.topics import ensure_topics
from stream.pipeline.processor import Pipeline
from stream.sandbox import (
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    run_sandbox,
)
from stream.sandbox.server import Sandbox
from tests.conftest import KafkaCluster
from tests.support.processes import PASSWORD, password_env, write_config

pytestmark = pytest.mark.integration

USER = "revoke@apiconnector.com"
BOOK = 77
NEVER = 1_000_000_000  # windows that do not close during a test (next boundary in 2033)
JOB_SECONDS = 60.0  # sandbox time an import takes: until the test advances the clock


def record(
    topic: str,
    partition: int,
    offset: int,
    email: str,
    action: str,
    profile: str | None = None,
) -> KafkaRecord:
    """A consumed record, as the consumer hands it over."""
    profile = profile or email.split("@")[0]
    value = transition(
        event_id=uuid.uuid4().hex,
        profile_id=profile,
        email=email,
        target=Target("main", BOOK),
        action=action,
        occurred_at=datetime.now(UTC),
    )
    return KafkaRecord(topic, partition, offset, profile.encode(), orjson.dumps(value))


class Owner:
    """One instance's pipeline, fed by the test instead of a consumer thread."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.pipeline = Pipeline(settings)
        self.pipeline.dead_letters = DeadLetterPublisher(
            producer_config(settings.kafka),
            settings.kafka.dead_letter_topic,
            self.pipeline._dead_lettered,
            self.pipeline.metrics,
        )

    def assign(self, *partitions: int) -> None:
        self.pipeline._assign([(self.topic, p) for p in partitions])

    def read(self, *records: KafkaRecord) -> None:
        """Records consumed; what they buffer is sent at once."""
        self.pipeline._ingest(records)
        for batch in self.pipeline.windows.drain(Trigger.PRESSURE):
            self.pipeline.dispatcher.submit(batch)

    async def revoke(self, *partitions: int) -> dict[tuple[str, int], int]:
        return await self.pipeline._revoke([(self.topic, p) for p in partitions])

    async def idle(self) -> None:
        assert await self.pipeline.dispatcher.wait(60), "flushes still running after 60 s"

    async def close(self) -> None:
        await self.pipeline.dispatcher.cancel()
        await self.pipeline.clients.close()


async def eventually(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds} s")
        await asyncio.sleep(0.02)


def imported(sandbox: Sandbox) -> list[str]:
    """Every email an accepted import carried, in order."""
    return [
        contact["identifiers"]["email"]
        for entry in sandbox.journal
        if entry.method == "PUT" and entry.path == "/contacts/v3/import" and entry.status == 202
        for contact in entry.body["contacts"]
    ]


@pytest.fixture
async def world(
    kafka: KafkaCluster, tmp_path: Path
) -> AsyncIterator[tuple[Sandbox, FakeClock, Callable[[], Owner]]]:
    clock = FakeClock()
    account = SandboxAccount(
        username=USER,
        password=PASSWORD,
        region="r1",
        import_delay_seconds=JOB_SECONDS,
        address_books=(SandboxAddressBook(BOOK, "revoke"),),
    )
    owners: list[Owner] = []
    async with run_sandbox(SandboxSettings(accounts=(account,), port=0, clock=clock)) as sandbox:
        topic = kafka.create_topic(partitions=2)
        config = write_config(
            tmp_path / "ddsync.toml",
            bootstrap=kafka.bootstrap_servers,
            topics=[topic],
            dead_letter_topic=kafka.unique_topic("dlq"),
            group="unused",
            connectors={"main": (USER, sandbox.discovery_url)},
            window_seconds=NEVER,
            requests_per_minute=10_000,
        )
        settings = load_settings(config, {password_env("main"): PASSWORD})
        settings = dataclasses.replace(
            settings,
            batching=dataclasses.replace(
                settings.batching, revoke_flush_seconds=0.2, revoke_job_seconds=5.0
            ),
        )
        ensure_topics(settings.kafka)

        def owner() -> Owner:
            owners.append(Owner(settings, topic))
            return owners[-1]

        try:
            yield sandbox, clock, owner
        finally:
            for each in owners:
                await each.close()


async def test_a_batch_queued_behind_a_slow_flush_sends_nothing_of_a_revoked_partition(
    world: tuple[Sandbox, FakeClock, Callable[[], Owner]],
) -> None:
    sandbox, clock, owner = world
    old = owner()
    old.assign(0, 1)
    topic = old.topic
    # A slow flush ahead: y's import is accepted and runs until the clock moves.
    old.read(record(topic, 1, 0, "y@example.com", "add"))
    await eventually(lambda: imported(sandbox) == ["y@example.com"], "y's import accepted")
    # x enters on partition 0: its batch queues behind y's, in the same address book.
    old.read(record(topic, 0, 0, "x@example.com", "add"))
    positions = await old.revoke(0)
    assert positions == {(topic, 0): 0}, "x's record is not final: nothing committed past it"

    # The new owner of partition 0 reads x's entry and its later exit, and removes x.
    new = owner()
    new.assign(0)
    new.read(
        record(topic, 0, 0, "x@example.com", "add"),
        record(topic, 0, 1, "x@example.com", "remove"),
    )
    await new.idle()
    assert new.pipeline.tracker.committable() == {(topic, 0): 2}

    # The slow flush ends; the old owner's queued batch must not add x back.
    clock.advance(JOB_SECONDS + 1)
    await old.idle()
    assert sandbox.members(USER, BOOK) == {"y@example.com"}
    assert imported(sandbox) == ["y@example.com"], "x was sent after its partition was revoked"
    assert old.pipeline.tracker.open_records == 0


async def test_a_job_already_accepted_is_awaited_inside_the_revoke(
    world: tuple[Sandbox, FakeClock, Callable[[], Owner]],
) -> None:
    sandbox, clock, owner = world
    old = owner()
    old.assign(0)
    old.read(record(old.topic, 0, 0, "x@example.com", "add"))
    await eventually(lambda: imported(sandbox) == ["x@example.com"], "x's import accepted")
    revoking = asyncio.create_task(old.revoke(0))
    # Past the flush bound the revoke stops new requests, and waits for the accepted job.
    guards = old.pipeline.dispatcher._guards
    await eventually(lambda: bool(guards) and all(g.revoked for g in guards), "guards revoked")
    assert not revoking.done()
    clock.advance(JOB_SECONDS + 1)
    # The import finished inside the revoke: x's record is final and committed with it.
    assert await asyncio.wait_for(revoking, 30) == {(old.topic, 0): 1}
    assert sandbox.members(USER, BOOK) == {"x@example.com"}


async def test_a_job_that_does_not_end_is_awaited_for_the_bound_only(
    world: tuple[Sandbox, FakeClock, Callable[[], Owner]], caplog: pytest.LogCaptureFixture
) -> None:
    sandbox, _, owner = world
    old = owner()
    old.assign(0)
    old.read(record(old.topic, 0, 0, "x@example.com", "add"))
    await eventually(lambda: imported(sandbox) == ["x@example.com"], "x's import accepted")
    started = time.monotonic()
    # The job never ends (the sandbox clock stands still): the revoke gives up at its bound
    # (0.2 s of flush, 5 s for jobs) and leaves x's record uncommitted for the new owner.
    assert await old.revoke(0) == {(old.topic, 0): 0}
    print(f"\nrevoke returned after {time.monotonic() - started:.1f} s (bound 5.2 s)")
    (guard,) = old.pipeline.dispatcher._guards
    assert guard.revoked
    assert guard.busy, "it returned at the bound, with the job still being polled"
    assert any("still running after 5 s" in r.getMessage() for r in caplog.records)


async def test_an_operation_still_retrying_stops_at_the_revoke(
    world: tuple[Sandbox, FakeClock, Callable[[], Owner]],
) -> None:
    sandbox, clock, owner = world
    old = owner()
    old.assign(0, 1)
    sandbox.faults.update({"fail_next": 1_000_000})  # every call answered 503: retried
    old.read(record(old.topic, 0, 0, "x@example.com", "add"))
    await eventually(lambda: len(sandbox.journal) >= 2, "x's import retried")
    assert await old.revoke(0) == {(old.topic, 0): 0}
    sent = len(sandbox.journal)  # what was sent before the revoke returned
    # The import stops before its next attempt instead of retrying for its 60 s budget, and
    # reports nothing: x is neither synced nor dead-lettered by this instance.
    await asyncio.wait_for(old.idle(), 30)
    # Nothing of x after the revoke; partition 1 is still ours and its records go out.
    sandbox.faults.update({"fail_next": 0})
    old.read(record(old.topic, 1, 0, "y@example.com", "add"))
    await eventually(lambda: imported(sandbox) == ["y@example.com"], "y's import accepted")
    clock.advance(JOB_SECONDS + 1)
    await old.idle()
    assert sandbox.members(USER, BOOK) == {"y@example.com"}
    assert all("x@example.com" not in orjson.dumps(e.body).decode() for e in sandbox.journal[sent:])
    assert old.pipeline.dead_letters is not None
    assert old.pipeline.dead_letters.pending == 0, "x must not be dead-lettered by the old owner"


async def test_a_request_in_the_air_at_the_revoke_is_followed_into_its_job(
    world: tuple[Sandbox, FakeClock, Callable[[], Owner]],
) -> None:
    sandbox, clock, owner = world
    old = owner()
    old.assign(0, 1)
    # The client connects first (region detection), with y on partition 1.
    old.read(record(old.topic, 1, 0, "y@example.com", "add"))
    await eventually(lambda: imported(sandbox) == ["y@example.com"], "y's import accepted")
    clock.advance(JOB_SECONDS + 1)
    await old.idle()
    # x's import is in the air when the revoke comes; DotDigital accepts it meanwhile.
    sandbox.faults.update({"latency_seconds": 1.0})
    old.read(record(old.topic, 0, 0, "x@example.com", "add"))
    guards = old.pipeline.dispatcher._guards
    await eventually(lambda: any(g._in_air for g in guards), "x's import in the air")
    revoking = asyncio.create_task(old.revoke(0))
    await eventually(lambda: imported(sandbox)[-1:] == ["x@example.com"], "x's import accepted")
    # The revoke now waits for the accepted job (its bound is 5 s), not for the request alone.
    clock.advance(JOB_SECONDS + 1)
    assert await asyncio.wait_for(revoking, 30) == {(old.topic, 0): 1}
    assert sandbox.members(USER, BOOK) == {"x@example.com", "y@example.com"}


async def test_a_lost_partition_is_not_sent_for_any_more(
    world: tuple[Sandbox, FakeClock, Callable[[], Owner]],
) -> None:
    sandbox, _, owner = world
    old = owner()
    old.assign(0)
    sandbox.faults.update({"fail_next": 1_000_000})  # every call answered 503: retried
    old.read(record(old.topic, 0, 0, "x@example.com", "add"))
    await eventually(lambda: len(sandbox.journal) >= 2, "x's import retried")
    # Lost, not revoked: another member may own it already. Nothing is waited for, and the
    # retrying import stops before its next attempt instead of retrying for its budget.
    old.pipeline._lose([(old.topic, 0)])
    sent = len(sandbox.journal)
    await asyncio.wait_for(old.idle(), 30)
    assert len(sandbox.journal) <= sent + 1, "at most the request already in the air"
    assert old.pipeline.tracker.open_records == 0
    assert old.pipeline.dead_letters is not None
    assert old.pipeline.dead_letters.pending == 0


@pytest.mark.parametrize("batches", [1, 2], ids=["one contact", "two batches"])
async def test_a_record_superseded_from_a_kept_partition_is_committed_with_the_revoke(
    world: tuple[Sandbox, FakeClock, Callable[[], Owner]], batches: int
) -> None:
    """One email under two profiles on two partitions: the newer transition, on the partition
    kept, must stay the last one applied when the older one's partition changes hands."""
    sandbox, clock, owner = world
    old = owner()
    old.assign(0, 1)
    topic = old.topic
    # A slow flush ahead keeps x's batch queued past the revoke bound.
    old.read(record(topic, 1, 0, "y@example.com", "add"))
    await eventually(lambda: imported(sandbox) == ["y@example.com"], "y's import accepted")
    partition_0 = [record(topic, 0, 0, "x@example.com", "add", profile="a")]
    # x enters as profile a (partition 0), then leaves as profile b (partition 1): one contact
    # (its winner the removal, the entry superseded) or two batches, the removal's queued behind.
    leaves = record(topic, 1, 1, "x@example.com", "remove", profile="b")
    if batches == 1:
        old.read(*partition_0, leaves)
    else:
        old.read(*partition_0)
        old.read(leaves)
    assert old.pipeline.dispatcher.in_flight == 1 + batches
    positions = await old.revoke(0)
    # The old owner applies the newer transition (x leaves) after the revoke.
    clock.advance(JOB_SECONDS + 1)
    await old.idle()
    assert old.pipeline.tracker.open_records == 0

    # The new owner of partition 0 reads from the committed position; what it re-reads there
    # would be applied after the old owner's removal.
    new = owner()
    new.assign(0)
    new.read(*[r for r in partition_0 if r.offset >= positions[(topic, 0)]])
    await eventually(
        lambda: new.pipeline.dispatcher.in_flight == 0 or "x@example.com" in imported(sandbox),
        "the new owner idle or its import accepted",
    )
    clock.advance(JOB_SECONDS + 1)
    await new.idle()
    assert sandbox.members(USER, BOOK) == {"y@example.com"}, "x's older entry applied last"
    assert positions == {(topic, 0): 1}, "x's entry is superseded by a record still ours"


@pytest.mark.parametrize("lost", [False, True], ids=["revoked", "lost"])
async def test_an_older_record_kept_is_not_sent_after_a_newer_one_revoked(
    world: tuple[Sandbox, FakeClock, Callable[[], Owner]], lost: bool
) -> None:
    """The other way round: the newer transition is on the revoked partition, so its new owner
    applies it; the older one, on the partition kept and queued, must not be sent after it."""
    sandbox, clock, owner = world
    old = owner()
    old.assign(0, 1)
    topic = old.topic
    old.read(record(topic, 1, 0, "y@example.com", "add"))
    await eventually(lambda: imported(sandbox) == ["y@example.com"], "y's import accepted")
    # x enters as profile b (partition 1), then leaves as profile a (partition 0): two batches
    # queued behind y's slow import, the entry's first.
    old.read(record(topic, 1, 1, "x@example.com", "add", profile="b"))
    partition_0 = [record(topic, 0, 0, "x@example.com", "remove", profile="a")]
    old.read(*partition_0)
    if lost:
        old.pipeline._lose([(topic, 0)])
    else:
        positions = await old.revoke(0)
        assert positions == {(topic, 0): 0}, "x's exit is for the new owner to apply"

    new = owner()
    new.assign(0)
    new.read(*partition_0)
    await new.idle()  # a removal: no job to wait for
    # The old owner's queue moves on; nothing it sends may bring x back.
    deadline = time.monotonic() + 30
    while old.pipeline.dispatcher.in_flight:
        assert time.monotonic() < deadline, "the old owner's flushes still running after 30 s"
        clock.advance(JOB_SECONDS + 1)
        await asyncio.sleep(0.05)
    assert sandbox.members(USER, BOOK) == {"y@example.com"}, "x's older entry applied last"
    assert old.pipeline.tracker.committable() == {(topic, 1): 2}


async def test_a_job_accepted_for_a_yielded_record_is_awaited_inside_the_revoke(
    world: tuple[Sandbox, FakeClock, Callable[[], Owner]],
) -> None:
    sandbox, clock, owner = world
    old = owner()
    old.assign(0, 1)
    topic = old.topic
    # x enters as profile b (partition 1): its import is accepted and runs until the clock moves.
    old.read(record(topic, 1, 0, "x@example.com", "add", profile="b"))
    await eventually(lambda: imported(sandbox) == ["x@example.com"], "x's import accepted")
    # x leaves as profile a (partition 0), queued behind; then partition 0 changes hands.
    partition_0 = [record(topic, 0, 0, "x@example.com", "remove", profile="a")]
    old.read(*partition_0)
    revoking = asyncio.create_task(old.revoke(0))
    guards = old.pipeline.dispatcher._guards
    await eventually(lambda: bool(guards) and all(g.revoked for g in guards), "guards revoked")
    # The entry's job would land after the new owner's removal: the revoke waits for it.
    assert not revoking.done()
    clock.advance(JOB_SECONDS + 1)
    assert await asyncio.wait_for(revoking, 30) == {(topic, 0): 0}
    new = owner()
    new.assign(0)
    new.read(*partition_0)
    await new.idle()
    await old.idle()
    assert sandbox.members(USER, BOOK) == set()
    assert old.pipeline.tracker.committable() == {(topic, 1): 1}


async def test_a_superseded_record_below_an_open_one_is_reread_and_says_so(
    world: tuple[Sandbox, FakeClock, Callable[[], Owner]], caplog: pytest.LogCaptureFixture
) -> None:
    """What the handover cannot help: the revoked partition's commit stays below the superseded
    record, so its new owner reads it again. The revoke says so."""
    sandbox, _, owner = world
    old = owner()
    old.assign(0, 1)
    topic = old.topic
    sandbox.faults.update({"fail_next": 1_000_000})  # every call answered 503: retried
    old.read(record(topic, 0, 0, "z@example.com", "add"))
    old.read(
        record(topic, 0, 1, "x@example.com", "add", profile="a"),
        record(topic, 1, 0, "x@example.com", "remove", profile="b"),
    )
    await eventually(lambda: len(sandbox.journal) >= 2, "z's import retried")
    assert await old.revoke(0) == {(topic, 0): 0}
    assert any("1 records superseded" in r.getMessage() for r in caplog.records)
