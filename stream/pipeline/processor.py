"""The pipeline: consume, window per address book, dispatch, dead-letter, commit.

Threads: the Kafka consumer runs in its own thread (:mod:`stream.kafka.source`); everything else —
windows, offset tracker, dispatcher, dead-letter producer — lives on one asyncio event loop and
is touched only from it. The consumer thread hands over records and rebalance events by running
a coroutine on the loop and waiting for it, so the two never race and the consumer cannot run
ahead of what the loop has taken in. Kafka is what the pipeline's backend makes
(:mod:`stream.kafka.backend`): confluent-kafka's clients, or an in-memory broker's in tests, which
drive the consumer turn by turn instead of its thread (:meth:`Pipeline.open`,
:meth:`Pipeline.poll`, :meth:`Pipeline.close`), each turn in a worker thread with the same
hand-over.

Contract:

* Every consumed record is *open* until it is final: synced to DotDigital, superseded by a later
  record of the same contact whose outcome is final, or on the dead-letter topic with the
  broker's acknowledgement. Committed offsets never pass an open record.
* Past ``batching.max_buffered_records`` open records the consumer pauses and what is buffered
  in windows is flushed at once; it resumes below half of that.
* Revoke: the revoked partitions' buffered records are flushed and awaited for at most
  ``batching.revoke_flush_seconds``. Then what is still being sent for them stops before its
  next request, and what DotDigital may already be doing for them (a request in the air, an
  accepted import or removal) is awaited for at most ``batching.revoke_job_seconds``. Their
  offsets are committed as far as they are final (a contact whose records span revoked and
  kept partitions is handed over whole: :func:`stream.core.windowing.handover`); the rest is
  dropped, uncommitted, for the new owner to read again, and is taken out of every batch not
  yet sent: once the revoke returned, this instance makes no DotDigital request for a record
  of those partitions (beyond the status polls of a job it stopped waiting for at that bound).
* Shutdown (:meth:`Pipeline.stop`): stop fetching, flush everything for at most
  ``batching.shutdown_flush_seconds``, wait for dead-letter acknowledgements, commit, leave;
  all of it within ``batching.shutdown_timeout_seconds`` of the stop, in any state
  (:mod:`stream.pipeline.shutdown`). A revoke under way or starting meanwhile stops waiting at the
  shutdown's flush deadline and commits what is final of its partitions. A consumer thread or a
  final commit and group leave that the broker does not let finish in time is abandoned:
  nothing more is committed (:attr:`Pipeline.abandoned`), and the next owner reads again what
  was not.
* The dead-letter circuit breaker opening pauses consumption for good (log line + metric); the
  process stays up so that its metrics can be scraped and an operator can look. It opens when
  most input is bad, when most contacts sent fail, or when every connector is suspended.
* A connector suspended for an account-level failure (:mod:`stream.core.suspensions`) does not hold
  the others: its contacts are dead-lettered (``auth_failed`` for those that met the failure,
  ``connector_suspended`` afterwards) and committed, and its failures stay out of the breaker's
  delivery measure. Only when every connector is suspended does the breaker open, so that one
  connector's deployment keeps its records uncommitted until an operator fixes the account.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from stream.clock import Clock, SystemClock
from stream.core.breaker import DeadLetterBreaker
from stream.core.deadletter_format import DeadLetter, replay_count_of
from stream.core.events import InvalidRecord, decode_transition
from stream.core.lag import PartitionProgress, progress_of
from stream.core.offsets import OffsetTracker, RecordRef, TopicPartitionKey
from stream.core.reasons import Reason
from stream.core.suspensions import Suspensions
from stream.core.windowing import Batch, Contact, Handover, Trigger, Windower, handover
from stream.dotdigital import Operation
from stream.kafka.backend import Header, KafkaBackend, KafkaRecord
from stream.kafka.client_config import producer_config
from stream.kafka.confluent import ConfluentBackend
from stream.kafka.deadletters import DeadLetterPublisher
from stream.kafka.source import KafkaSource
from stream.observability.health import Vitals
from stream.observability.metrics import Metrics
from stream.pipeline.clients import ClientPool
from stream.pipeline.dispatch import Dispatcher, Failure
from stream.pipeline.shutdown import ShutdownBudget, in_daemon_thread
from stream.settings import REVOKE_DRAIN_SECONDS, SHUTDOWN_DRAIN_SECONDS, Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
TICK_SECONDS = 0.2
DRAIN_SECONDS = SHUTDOWN_DRAIN_SECONDS
UNREADABLE_HEADERS = "the record's headers cannot be read (a header name is not UTF-8)"

# What the dead-letter record needs of the source record: key, value, headers.
Original = tuple[bytes | None, bytes | None, tuple[Header, ...]]


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        kafka: KafkaBackend | None = None,
    ) -> None:
        """``kafka`` makes the consumer and the dead-letter producer: confluent-kafka's
        clients of ``settings.kafka``'s cluster unless given (an in-memory broker in tests)."""
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.metrics = metrics or Metrics()
        self.kafka: KafkaBackend = kafka or ConfluentBackend()
        self.vitals = Vitals.on(self.clock)  # progress signals for /healthz and /ready
        batching = settings.batching
        self.windows = Windower.from_settings(self.clock, batching)
        self.tracker = OffsetTracker(self.clock)
        # Read at scrape time: a value set on a tick could lag a commit a scraper has seen.
        tracker = self.tracker
        self.metrics.buffered_records.set_function(lambda: tracker.open_records)
        self.metrics.window_seconds.set(settings.batching.window_seconds)
        dlq = settings.dead_letter
        self.breaker = DeadLetterBreaker.from_settings(dlq)
        self.clients = ClientPool(settings.connectors, clock=self.clock, metrics=self.metrics)
        self.suspensions = Suspensions(
            settings.connectors, self.clock, settings.dispatch.suspension_probe_seconds
        )
        for connector in settings.connectors:
            self.metrics.connector_suspended.labels(connector).set(0)
        self.dispatcher = Dispatcher(
            self.clients,
            self,
            retry_timeout=settings.dispatch.retry_timeout_seconds,
            clock=self.clock,
            metrics=self.metrics,
            suspensions=self.suspensions,
        )
        self._originals: dict[TopicPartitionKey, dict[int, Original]] = {}
        # Partitions being given up: their contacts are no longer sent.
        self._revoking: set[TopicPartitionKey] = set()
        self._consumed_counters: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._budget: ShutdownBudget | None = None
        # The shutdown was cut at its bound before the final commit and group leave ended.
        self.abandoned = False
        self._closing = False
        self._pause = False
        self._circuit_logged = False
        self.source: KafkaSource | None = None
        self.dead_letters: DeadLetterPublisher | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until :meth:`stop` (or the consumer fails), then shut down cleanly."""
        source = self.open()
        source.start()
        try:
            while not self._stopping.is_set():
                self._tick()
                if not source.running:
                    raise RuntimeError("the Kafka consumer stopped unexpectedly") from source.error
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), TICK_SECONDS)
        finally:
            await self._shutdown()

    def open(self) -> KafkaSource:
        """Make the dead-letter producer and the consumer, on the running loop, and join the
        group. :meth:`run` then consumes in the consumer thread; a caller that drives the
        pipeline itself (a test on an in-memory broker) takes turns with :meth:`poll` instead
        and ends with :meth:`close`."""
        self._loop = asyncio.get_running_loop()
        kafka = self.settings.kafka
        self.dead_letters = DeadLetterPublisher(
            producer_config(kafka),
            kafka.dead_letter_topic,
            self._dead_lettered,
            self.metrics,
            clock=self.clock,
            producer_factory=self.kafka.producer,
        )
        self.source = KafkaSource(
            kafka,
            self,
            self.metrics,
            commit_interval=self.settings.dispatch.commit_interval_seconds,
            vitals=self.vitals,
            consumer_factory=self.kafka.consumer,
            clock=self.clock,
        )
        self.source.subscribe()
        log.info(
            "consuming %s as group %s; dead letters to %s",
            ", ".join(kafka.topics),
            kafka.group_id,
            kafka.dead_letter_topic,
        )
        return self.source

    async def poll(self) -> None:
        """One turn of the consumer (rebalance callbacks included), in a worker thread as the
        consumer thread would take it, then the loop's periodic work. Not with :meth:`run`."""
        source = self.source
        assert source is not None, "open() first"
        if source.running:
            raise RuntimeError("the consumer thread of run() polls the consumer")
        await asyncio.to_thread(source.poll)
        self._tick()

    async def close(self) -> None:
        """End a pipeline driven with :meth:`poll` as :meth:`run` ends: flush, commit, leave."""
        self.stop()
        await self._shutdown()

    def stop(self) -> None:
        """Ask the pipeline to shut down (safe from a signal handler on the loop); the bound
        counts from the first call."""
        if self._budget is None:
            self._budget = ShutdownBudget.starting(self.clock, self.settings.batching)
        self._stopping.set()

    async def _shutdown(self) -> None:
        assert self.source is not None
        assert self.dead_letters is not None
        self.stop()  # the bound counts from here when the consumer failed on its own
        assert self._budget is not None
        budget = self._budget
        log.info("shutting down within %g s: flushing buffered batches", budget.timeout_seconds)
        await self.dispatcher.stop_probes()
        self.source.stop()
        # Flushes start while the consumer thread ends: it may be inside a revoke, which now
        # waits no longer than the shutdown's flush deadline.
        self._submit_all()
        # A bounded join: the thread may be stuck in a commit to a broker that does not answer.
        await asyncio.to_thread(self.source.join, self._left(budget.commit_deadline))
        joined = not self.source.running
        self._closing = True
        self._submit_all()
        if not await self.dispatcher.wait(self._left(budget.flush_deadline)):
            log.warning("shutdown deadline passed with flushes in flight; they stay uncommitted")
            cancelling = asyncio.ensure_future(self.dispatcher.cancel())
            await asyncio.wait([cancelling], timeout=self._left(budget.commit_deadline))
        # The dead letters of the last flushes get a moment of their own even when the flushes
        # used up the deadline: acknowledged now, they need not be redone after the restart.
        await self._drain_dead_letters(budget.drain_deadline(self.clock.monotonic()))
        if joined:
            offsets = self.tracker.committable()
            source = self.source
            closing = in_daemon_thread(lambda: source.commit_and_close(offsets))
            await asyncio.wait([closing], timeout=self._left(budget.commit_deadline))
            if closing.done():
                closing.result()
                log.info("committed %s and left the group", _describe(offsets))
            else:
                self.abandoned = True
                log.error(
                    "the final commit and group leave did not end within "
                    "batching.shutdown_timeout_seconds (%g s); abandoned: the next owner reads "
                    "again what was not committed",
                    budget.timeout_seconds,
                )
        else:
            self.abandoned = True
            log.error(
                "the Kafka consumer thread did not end within batching.shutdown_timeout_seconds "
                "(%g s; the broker may be unreachable); nothing more is committed; "
                "it waits in:\n%s",
                budget.timeout_seconds,
                self.source.where(),
            )
        closing_clients = asyncio.ensure_future(self.clients.close())
        await asyncio.wait([closing_clients], timeout=max(self._left(budget.deadline), 0.1))

    def _submit_all(self) -> None:
        for batch in self.windows.drain():
            self.dispatcher.submit(batch)

    def _left(self, deadline: float) -> float:
        return max(0.0, deadline - self.clock.monotonic())

    async def _drain_dead_letters(self, deadline: float) -> None:
        assert self.dead_letters is not None
        while self.dead_letters.pending and self.clock.monotonic() < deadline:
            self.dead_letters.poll(0.05)
            await asyncio.sleep(0)

    def _tick(self) -> None:
        """Periodic work on the loop: closed windows, delivery reports, backpressure."""
        assert self.dead_letters is not None
        self.vitals.loop.beat()
        for batch in self.windows.due():
            self.dispatcher.submit(batch)
        self.dispatcher.probe()
        self.dead_letters.poll(0)
        self._update_pause()

    def _update_pause(self) -> None:
        open_records = self.tracker.open_records
        cap = self.settings.batching.max_buffered_records
        if self.breaker.is_open:
            if not self._circuit_logged:
                log.error(
                    "dead-letter circuit breaker OPEN (%s); consuming stopped. Check the "
                    "configuration and DotDigital, then restart.",
                    self.breaker.describe(),
                )
                self.metrics.circuit_open.set(1)
                self._circuit_logged = True
            self._pause = True
        elif open_records > cap:
            self._pause = True
            # Pausing alone would wait for windows to close (up to window_seconds) when the
            # buffer is spread over many address books; send what is buffered now instead.
            for batch in self.windows.drain(Trigger.PRESSURE):
                self.dispatcher.submit(batch)
        elif self.dead_letters is not None and self.dead_letters.congested:
            # librdkafka's queue is full: more records would only lengthen the letters' backlog.
            self._pause = True
        elif open_records <= cap // 2:
            self._pause = False

    # -- SourceHandler: called from the consumer thread ----------------------------------

    def _on_loop(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` on the loop and wait for it (the consumer thread's only way in)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(_awaited(work), self._loop).result()

    def on_records(self, records: list[KafkaRecord]) -> None:
        self._on_loop(_sync(self._ingest, records))

    def on_assign(self, partitions: list[TopicPartitionKey]) -> None:
        self._on_loop(_sync(self._assign, partitions))

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> Mapping[TopicPartitionKey, int]:
        return self._on_loop(lambda: self._revoke(partitions))

    def on_lost(self, partitions: list[TopicPartitionKey]) -> None:
        self._on_loop(_sync(self._lose, partitions))

    def committable(self) -> Mapping[TopicPartitionKey, int]:
        return self._on_loop(_sync(self.tracker.committable))

    def committed(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        self._on_loop(_sync(self.tracker.mark_committed, offsets))

    def should_pause(self) -> bool:
        return self._pause

    def progress(self) -> Mapping[TopicPartitionKey, PartitionProgress]:
        return self._on_loop(_sync(progress_of, self.tracker, self.clock))

    # -- on the loop -----------------------------------------------------------------------

    def _consumed_counter(self, topic: str) -> Any:
        # labels() costs a lock and a dict lookup; once per record it shows in profiles.
        counter = self._consumed_counters.get(topic)
        if counter is None:
            counter = self._consumed_counters[topic] = self.metrics.records_consumed.labels(topic)
        return counter

    def _assign(self, partitions: Sequence[TopicPartitionKey]) -> None:
        for tp in partitions:
            self.tracker.assign(tp)
            self._originals.setdefault(tp, {})

    def _ingest(self, records: Sequence[KafkaRecord]) -> None:
        connectors = self.settings.connectors
        breaker = self.breaker
        consumed = self.tracker.consumed
        originals = self._originals
        add = self.windows.add
        submit = self.dispatcher.submit
        # Counted per call, not per record: labels() and inc() take locks, and once per record
        # they showed in profiles. A scrape sees the count when the call returns.
        counts: dict[str, int] = {}
        try:
            for record in records:
                if breaker.is_open:
                    # Leave the rest unopened and uncommitted: a restart reads them again.
                    break
                topic, partition, offset = record.topic, record.partition, record.offset
                ref = RecordRef(topic, partition, offset)
                if not consumed(ref):
                    # Not ours any more, or already being processed (a re-delivery after seek).
                    continue
                counts[topic] = counts.get(topic, 0) + 1
                headers = record.headers
                original: Original = (record.key, record.value, headers or ())
                try:
                    if headers is None:
                        raise InvalidRecord(Reason.INVALID_EVENT, UNREADABLE_HEADERS)
                    transition = decode_transition(original[1], connectors)
                except InvalidRecord as invalid:
                    breaker.decoded(True)
                    self._publish_dead_letter(
                        ref,
                        original,
                        (ref,),
                        Failure(invalid.reason, invalid.reason.value, invalid.detail),
                        connector_id=invalid.connector_id,
                        address_book_id=invalid.address_book_id,
                        event_id=invalid.event_id,
                    )
                    continue
                breaker.decoded(False)
                kept = originals.get((topic, partition))
                if kept is None:
                    kept = originals[(topic, partition)] = {}
                kept[offset] = original
                for batch in add(transition, ref):
                    submit(batch)
        finally:
            for topic, count in counts.items():
                self._consumed_counter(topic).inc(count)
        self._update_pause()

    async def _revoke(
        self, partitions: Sequence[TopicPartitionKey]
    ) -> dict[TopicPartitionKey, int]:
        revoked = set(partitions)
        batching = self.settings.batching
        if not self._closing:
            for batch in self.windows.drain_partitions(revoked):
                self.dispatcher.submit(batch)
            if (
                await self._unless_shutdown_cuts(
                    self.dispatcher.wait(batching.revoke_flush_seconds, revoked)
                )
                is False
            ):
                log.info(
                    "revoke: flushes still in flight after %.0f s; stopping what DotDigital "
                    "has not taken on yet",
                    batching.revoke_flush_seconds,
                )
        self._revoking |= revoked
        try:
            # A contact across revoked and kept partitions goes whole to whoever has its newest
            # record; the other side's older records are final now, and those kept are not sent
            # any more (the dispatcher stops what the listener no longer holds).
            split = self._handover(revoked)
            for ref in split.overtaken + split.yielded:
                self._finish(ref)
            if (
                await self._unless_shutdown_cuts(
                    self.dispatcher.revoke(revoked, batching.revoke_job_seconds)
                )
                is False
            ):
                log.warning(
                    "revoke: DotDigital jobs for revoked partitions still running after %.0f s; "
                    "no longer waiting for them (the new owner's changes may be overtaken)",
                    batching.revoke_job_seconds,
                )
            # Dead letters decided by the flushes and jobs above, acknowledged now, are final and
            # committed with the revoke instead of being redone by the new owner.
            drained = self.clock.monotonic() + REVOKE_DRAIN_SECONDS
            if self._budget is not None:
                drained = min(drained, self._budget.drain_deadline(self.clock.monotonic()))
            await self._drain_dead_letters(drained)
            positions = self.tracker.committable(revoked)
            self._warn_if_reread(split.overtaken)
            self._forget(partitions)
        finally:
            self._revoking -= revoked
        return positions

    def _warn_if_reread(self, overtaken: Sequence[RecordRef]) -> None:
        # The one case a rebalance may leave a book older (windowing, "Across partitions").
        reread = [
            ref
            for ref in overtaken
            if (position := self.tracker.position(ref.tp)) is None or position <= ref.offset
        ]
        if reread:
            log.warning(
                "revoke: %d records superseded by newer ones of their contact on partitions "
                "kept stay below the revoked partitions' commit; their new owner re-applies "
                "them, possibly after the newer ones (first: %s)",
                len(reread),
                reread[0],
            )

    def _handover(self, revoked: set[TopicPartitionKey]) -> Handover:
        contacts = [(b.key, c) for b in self.dispatcher.batches for c in b.contacts()]
        contacts += self.windows.pending_contacts()
        return handover(contacts, revoked, self.tracker.is_open)

    async def _unless_shutdown_cuts(self, waiting: Awaitable[bool]) -> bool | None:
        """``waiting``'s answer, or None once a shutdown's flush deadline passed first: the
        consumer thread waits inside the revoke, and the shutdown's bound must hold."""
        wait = asyncio.ensure_future(waiting)
        cut = asyncio.ensure_future(self._flush_deadline_passed())
        try:
            await asyncio.wait([wait, cut], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            wait.cancel()
            raise
        finally:
            cut.cancel()
        if wait.done():
            return wait.result()
        wait.cancel()
        await asyncio.wait([wait])
        log.warning(
            "revoke: shutting down; no longer waiting for what DotDigital may still be doing "
            "for the revoked partitions (the new owner's changes may be overtaken)"
        )
        return None

    async def _flush_deadline_passed(self) -> None:
        await self._stopping.wait()
        assert self._budget is not None
        await self.clock.sleep(self._budget.flush_deadline - self.clock.monotonic())

    def _lose(self, partitions: Sequence[TopicPartitionKey]) -> None:
        """Partitions taken without a clean revoke: another member may own them already, so
        nothing more is sent for them, and nothing waited for."""
        # Their uncommitted newest records of contacts across partitions are read again by the
        # next owner: the older ones kept here must not be sent after them (as in _revoke).
        for ref in self._handover(set(partitions)).yielded:
            self._finish(ref)
        self.dispatcher.stop_sending(set(partitions))
        self._forget(partitions)

    def _forget(self, partitions: Sequence[TopicPartitionKey]) -> None:
        """Drop a partition's buffered records and its offsets; nothing of it is committed
        afterwards, so the next owner reads its open records again."""
        revoked = set(partitions)
        dropped = self.windows.drop_partitions(revoked)
        if dropped.dropped:
            log.info(
                "dropped %d buffered records of revoked partitions, uncommitted",
                len(dropped.dropped),
            )
        # Older records of partitions we keep, whose newer record the next owner will sync.
        for ref in dropped.superseded:
            self._finish(ref)
        for tp in partitions:
            self.tracker.revoke(tp)
            self._originals.pop(tp, None)

    # -- DispatchListener --------------------------------------------------------------------

    def synced(self, batch: Batch, operation: Operation, contacts: Sequence[Contact]) -> None:
        count = 0
        for contact in contacts:
            self.breaker.delivered(False)
            for ref in contact.refs:
                self._finish(ref)
                count += 1
        self.metrics.records_synced.labels(batch.connector_id, operation).inc(count)

    def failed(self, batch: Batch, contact: Contact, failure: Failure) -> None:
        if self.suspensions.all_suspended:
            self.breaker.trip(f"every connector is suspended: {self.suspensions.describe()}")
        if self.breaker.is_open:
            # Consuming stopped for an operator to look: leave the record open (uncommitted)
            # rather than add to the dead letters; a restart after the fix retries it.
            return
        original = self._originals.get(contact.winner.tp, {}).get(contact.winner.offset)
        if original is None or not self.holds(contact):
            # The winner's partition was revoked meanwhile: its new owner reads it again.
            self.dropped(batch, contact)
            return
        self._publish_dead_letter(
            contact.winner,
            original,
            contact.refs,
            failure,
            connector_id=batch.connector_id,
            address_book_id=batch.address_book_id,
            event_id=contact.event_id,
        )
        # Counted when decided, not when acknowledged: the breaker must open before a whole
        # batch's worth of records has gone to the dead-letter topic. A suspended connector's
        # failures are its own (isolated), not a sign that the whole stream is failing.
        if self.suspensions.of(batch.connector_id) is None:
            self.breaker.delivered(True)

    def holds(self, contact: Contact) -> bool:
        winner = contact.winner
        return winner.tp not in self._revoking and self.tracker.is_open(winner)

    def dropped(self, batch: Batch, contact: Contact) -> None:
        # The new owner of the winner's partition reads it again; older records of the contact
        # on partitions still ours are superseded by that read (as in _forget).
        for ref in contact.refs:
            if ref.tp not in self._revoking:
                self._finish(ref)

    # -- dead letters ------------------------------------------------------------------------

    def _publish_dead_letter(
        self,
        ref: RecordRef,
        original: Original,
        covers: Sequence[RecordRef],
        failure: Failure,
        *,
        connector_id: str | None,
        address_book_id: int | None,
        event_id: str | None,
    ) -> None:
        assert self.dead_letters is not None
        key, value, headers = original
        letter = DeadLetter(
            reason=failure.reason,
            error_code=failure.code or failure.reason.value,
            error_message=failure.message,
            source_topic=ref.topic,
            source_partition=ref.partition,
            source_offset=ref.offset,
            connector_id=connector_id,
            address_book_id=address_book_id,
            event_id=event_id,
            attempts=failure.attempts,
            failed_at=datetime.fromtimestamp(self.clock.time(), UTC),
            replay_count=replay_count_of(headers),
        )
        self.dead_letters.publish(ref, key, value, headers, letter, covers)

    def _dead_lettered(
        self, ref: RecordRef, letter: DeadLetter, covers: tuple[RecordRef, ...]
    ) -> None:
        """The broker acknowledged a dead-letter record: it and what it covers are final."""
        self.metrics.records_dead_lettered.labels(letter.reason.value).inc()
        for covered in covers:
            self._finish(covered)

    def _finish(self, ref: RecordRef) -> None:
        self.tracker.finished(ref)
        records = self._originals.get(ref.tp)
        if records is not None:
            records.pop(ref.offset, None)


async def _awaited(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


def _sync(function: Callable[..., T], *args: object) -> Callable[[], Awaitable[T]]:
    """A plain function call as an awaitable factory, so it runs on the loop."""

    async def run() -> T:
        return function(*args)

    return run


def _describe(offsets: Mapping[TopicPartitionKey, int]) -> str:
    return ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(offsets.items())) or "nothing new"
