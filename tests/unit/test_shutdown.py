"""The bound on a shutdown: its deadlines, a revoke cut short by it, a consumer or a final commit
that the broker does not let end, and the watchdog of last resort.

The pipeline runs on the fake clock with stand-ins for what talks to the network: a dispatcher
whose flushes and DotDigital jobs never end (a stuck or throttled DotDigital), a dead-letter
publisher with nothing pending, and a Kafka source whose thread or close can be made to hang.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Collection, Mapping
from typing import TypedDict, Unpack, cast

from stream.clock import FakeClock
from stream.config import parse_settings
from stream.core.offsets import RecordRef, TopicPartitionKey
from stream.kafka.deadletters import DeadLetterPublisher
from stream.kafka.source import KafkaSource
from stream.pipeline.dispatch import Dispatcher
from stream.pipeline.processor import Pipeline
from stream.pipeline.shutdown import ABANDONED, EXIT_MARGIN_SECONDS, ShutdownBudget, Watchdog
from stream.settings import BatchingSettings, Settings

TP: TopicPartitionKey = ("t", 0)
OTHER: TopicPartitionKey = ("t", 1)
# A real-time guard only: without the cut the awaited revoke never ends.
GUARD_SECONDS = 5.0


class Bounds(TypedDict, total=False):
    """The settings these tests shorten or lengthen: the bounds of a revoke and a shutdown."""

    revoke_flush_seconds: float
    revoke_job_seconds: float
    shutdown_flush_seconds: float
    shutdown_timeout_seconds: float


def settings(**batching: Unpack[Bounds]) -> Settings:
    raw = {
        "kafka": {"bootstrap_servers": "127.0.0.1:1", "topics": ["t"]},
        "connectors": {"main": {"username": "u@apiconnector.com", "password_env": "PW"}},
    }
    parsed = parse_settings(raw, {"PW": "pw"})
    return dataclasses.replace(parsed, batching=dataclasses.replace(parsed.batching, **batching))


class StuckDispatcher:
    """DotDigital never answers: no flush and no job ends (waits end at their own bound)."""

    def __init__(self) -> None:
        self.cancelled = False
        self.batches: list[object] = []  # nothing in flight to hand over

    def probe(self) -> list[object]:
        return []

    async def stop_probes(self) -> None:
        pass

    async def wait(
        self, seconds: float, partitions: Collection[TopicPartitionKey] | None = None
    ) -> bool:
        await asyncio.sleep(seconds)
        return False

    async def revoke(self, partitions: Collection[TopicPartitionKey], seconds: float) -> bool:
        await asyncio.sleep(seconds)
        return False

    def submit(self, batch: object) -> None:
        raise AssertionError("nothing is buffered in these tests")

    async def cancel(self) -> None:
        self.cancelled = True


class IdleDispatcher(StuckDispatcher):
    async def wait(
        self, seconds: float, partitions: Collection[TopicPartitionKey] | None = None
    ) -> bool:
        return True


class NoDeadLetters:
    pending = 0

    def poll(self, timeout: float = 0.0) -> int:
        return 0


class FakeSource:
    """A consumer whose thread may not end (stuck in a commit) or whose close may hang."""

    def __init__(self, *, thread_ends: bool = True, close_hangs: bool = False) -> None:
        self.running = True
        self._thread_ends = thread_ends
        self._close_hangs = close_hangs
        self.released = threading.Event()
        self.committed: list[Mapping[TopicPartitionKey, int]] = []

    def stop(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        if self._thread_ends:
            self.running = False

    def where(self) -> str:
        return "in commit_and_close, waiting for the broker"

    def commit_and_close(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        self.committed.append(dict(offsets))
        if self._close_hangs:
            self.released.wait()


def pipeline_with(
    clock: FakeClock, dispatcher: StuckDispatcher, **batching: Unpack[Bounds]
) -> Pipeline:
    # Stand-ins with the members the pipeline reaches in these tests.
    pipeline = Pipeline(
        settings(**batching),
        clock=clock,
        dispatcher=lambda _outcomes: cast(Dispatcher, dispatcher),
    )
    pipeline.dead_letters = cast(DeadLetterPublisher, NoDeadLetters())
    pipeline.rebalance.assign([TP, OTHER])
    # Offsets 0..2 read; 0 is final, 1 and 2 are still being sent.
    for offset in range(3):
        assert pipeline.ledger.open(RecordRef("t", 0, offset), (None, b"{}", ()))
    pipeline.ledger.settle(RecordRef("t", 0, 0))
    return pipeline


# -- the budget ----------------------------------------------------------------------------------


def test_the_budget_splits_the_bound_from_the_moment_of_the_stop() -> None:
    clock = FakeClock()
    budget = ShutdownBudget.starting(clock, BatchingSettings())
    start = clock.monotonic()
    assert budget.deadline == start + 50
    assert budget.flush_deadline == start + 30
    assert budget.commit_deadline == start + 50 - EXIT_MARGIN_SECONDS
    # Dead letters get 5 s of their own after flushes that used their 30 s up ...
    assert budget.drain_deadline(start + 30) == start + 35
    # ... and no more than the final commit leaves them.
    assert budget.drain_deadline(start + 42) == start + 50 - EXIT_MARGIN_SECONDS - 5
    # Flushes done early: the drain may use the rest of the flush time.
    assert budget.drain_deadline(start + 1) == start + 30
    # Past every deadline, nothing is waited for.
    assert budget.drain_deadline(start + 60) == start + 60


# -- a revoke inside a shutdown ------------------------------------------------------------------


async def test_a_stop_cuts_a_revoke_waiting_for_a_stuck_dotdigital_short() -> None:
    clock = FakeClock()
    # A revoke would wait a day for its flushes and a day for DotDigital's jobs.
    pipeline = pipeline_with(
        clock, StuckDispatcher(), revoke_flush_seconds=86_400, revoke_job_seconds=86_400
    )
    started = clock.monotonic()
    revoke = asyncio.ensure_future(pipeline.rebalance.revoke([TP]))
    await asyncio.sleep(0)
    assert not revoke.done()
    pipeline.stop()
    positions = await asyncio.wait_for(revoke, GUARD_SECONDS)
    # What is final is committed with the revoke; the records still being sent are not.
    assert positions == {TP: 1}
    assert clock.monotonic() - started <= BatchingSettings.shutdown_flush_seconds
    assert not pipeline.ledger.owns(TP)


async def test_a_revoke_starting_during_a_shutdown_waits_no_longer_than_its_flush_deadline() -> (
    None
):
    clock = FakeClock()
    pipeline = pipeline_with(clock, StuckDispatcher(), revoke_job_seconds=86_400)
    pipeline.stop()
    clock.advance(BatchingSettings.shutdown_flush_seconds + 1)
    positions = await asyncio.wait_for(pipeline.rebalance.revoke([TP]), GUARD_SECONDS)
    assert positions == {TP: 1}


# -- the end of a shutdown -----------------------------------------------------------------------

# Real seconds: the waits on the consumer's threads are real; the bound is made short.
SHORT: Bounds = {"shutdown_flush_seconds": 0.05, "shutdown_timeout_seconds": 0.6}


async def test_a_final_commit_and_close_that_hang_are_abandoned_at_the_bound() -> None:
    pipeline = pipeline_with(FakeClock(), IdleDispatcher(), **SHORT)
    source = FakeSource(close_hangs=True)
    pipeline.source = cast(KafkaSource, source)
    started = time.monotonic()
    try:
        await asyncio.wait_for(pipeline.close(), GUARD_SECONDS)
    finally:
        source.released.set()
    assert time.monotonic() - started < SHORT["shutdown_timeout_seconds"] + 0.5
    assert pipeline.abandoned
    assert source.committed == [{TP: 1}], "only what is final was offered"


async def test_a_consumer_thread_that_does_not_end_is_not_committed_for() -> None:
    pipeline = pipeline_with(FakeClock(), IdleDispatcher(), **SHORT)
    source = FakeSource(thread_ends=False)
    pipeline.source = cast(KafkaSource, source)
    await asyncio.wait_for(pipeline.close(), GUARD_SECONDS)
    assert pipeline.abandoned
    assert source.committed == [], "the consumer is still in use by its thread"


async def test_a_shutdown_with_stuck_flushes_abandons_them_and_commits_what_is_final() -> None:
    clock = FakeClock()
    dispatcher = StuckDispatcher()
    pipeline = pipeline_with(clock, dispatcher, **SHORT)
    source = FakeSource()
    pipeline.source = cast(KafkaSource, source)
    await asyncio.wait_for(pipeline.close(), GUARD_SECONDS)
    assert dispatcher.cancelled
    assert not pipeline.abandoned
    assert source.committed == [{TP: 1}]


# -- the watchdog --------------------------------------------------------------------------------


def test_the_watchdog_ends_the_process_at_the_bound_with_the_documented_status() -> None:
    exited: list[int] = []
    done = threading.Event()

    def exit_(status: int) -> None:
        exited.append(status)
        done.set()

    watchdog = Watchdog(0.05, exit_)
    watchdog.arm()
    watchdog.arm()  # a second signal does not restart the count
    assert done.wait(GUARD_SECONDS)
    assert exited == [ABANDONED] == [3]
