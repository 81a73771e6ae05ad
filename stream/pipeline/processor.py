"""The pipeline: consume, window per address book, dispatch, dead-letter, commit.

:class:`Pipeline` composes the parts and runs their lifecycle:

* :mod:`stream.pipeline.bridge`: the consumer thread's calls, run on the event loop;
* :mod:`stream.pipeline.ingest`: records into windows or dead letters, and the consumer's pause;
* :mod:`stream.pipeline.dispatch`: batches to DotDigital, one flush at a time per book;
* :mod:`stream.pipeline.outcomes`: each contact's outcome into the ledger, the dead letters,
  the circuit breaker;
* :mod:`stream.pipeline.rebalance`: partitions assigned, revoked, lost;
* :mod:`stream.core.ledger`: the open records, their originals and their commit watermark;
* :mod:`stream.pipeline.shutdown`: the bound on the shutdown.

Kafka is what the pipeline's backend makes (:mod:`stream.kafka.backend`): confluent-kafka's
clients, or an in-memory broker's in tests, which drive the consumer turn by turn instead of its
thread (:meth:`Pipeline.open`, :meth:`Pipeline.poll`, :meth:`Pipeline.close`), each turn in a
worker thread with the same hand-over.

Contract:

* Every consumed record is *open* until it is final: synced to DotDigital, superseded by a later
  record of the same contact whose outcome is final, or on the dead-letter topic with the
  broker's acknowledgement. Committed offsets never pass an open record.
* Shutdown (:meth:`Pipeline.stop`): stop fetching, flush everything for at most
  ``batching.shutdown_flush_seconds``, wait for dead-letter acknowledgements, commit, leave;
  all of it within ``batching.shutdown_timeout_seconds`` of the stop, in any state
  (:mod:`stream.pipeline.shutdown`). A revoke under way or starting meanwhile stops waiting at the
  shutdown's flush deadline and commits what is final of its partitions. A consumer thread or a
  final commit and group leave that the broker does not let finish in time is abandoned:
  nothing more is committed (:attr:`Pipeline.abandoned`), and the next owner reads again what
  was not. So are dead letters and outcomes the broker has not acknowledged by then
  (:attr:`Pipeline.unacknowledged`): their records stay uncommitted.
* The parts' own contracts: backpressure and the circuit breaker's pause in
  :mod:`~stream.pipeline.ingest`, dead letters and suspended connectors in
  :mod:`~stream.pipeline.outcomes`, revokes in :mod:`~stream.pipeline.rebalance`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from stream.clock import Clock, SystemClock
from stream.core.breaker import DeadLetterBreaker
from stream.core.lag import PartitionProgress, progress_of
from stream.core.ledger import Ledger
from stream.core.offsets import TopicPartitionKey
from stream.core.removal_guard import removal_guard_of
from stream.core.suspensions import Suspensions
from stream.core.windowing import Windower
from stream.dotdigital.transport import Transport
from stream.kafka.backend import KafkaBackend, KafkaRecord
from stream.kafka.client_config import producer_config
from stream.kafka.confluent import ConfluentBackend
from stream.kafka.deadletters import DeadLetterPublisher
from stream.kafka.outcomes import OutcomePublisher
from stream.kafka.source import KafkaSource
from stream.observability.health import Vitals
from stream.observability.metrics import Metrics
from stream.pipeline.bridge import LoopBridge
from stream.pipeline.clients import ClientPool
from stream.pipeline.dispatch import Dispatcher, DispatchListener
from stream.pipeline.ingest import Ingest
from stream.pipeline.outcomes import Outcomes, OutputTopics
from stream.pipeline.rebalance import Rebalance
from stream.pipeline.shutdown import Stopping, in_daemon_thread
from stream.settings import Settings

log = logging.getLogger(__name__)

TICK_SECONDS = 0.2


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        kafka: KafkaBackend | None = None,
        dispatcher: Callable[[DispatchListener], Dispatcher] | None = None,
        transport: Transport | None = None,
    ) -> None:
        """``kafka`` makes the consumer and the dead-letter producer: confluent-kafka's
        clients of ``settings.kafka``'s cluster unless given (an in-memory broker in tests).
        ``dispatcher`` makes the dispatcher that reports to the given listener: one over the
        connectors' DotDigital clients unless given (a stand-in in tests). ``transport``
        carries those clients' requests: each client's own aiohttp one unless given (the
        in-process sandbox's in tests; the caller closes it)."""
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.metrics = metrics or Metrics()
        self.kafka: KafkaBackend = kafka or ConfluentBackend()
        self.vitals = Vitals.on(self.clock)  # progress signals for /healthz and /ready
        batching = settings.batching
        self.windows = Windower.from_settings(self.clock, batching)
        self.ledger = Ledger(self.clock)
        # Read at scrape time: a value set on a tick could lag a commit a scraper has seen.
        ledger = self.ledger
        self.metrics.buffered_records.set_function(lambda: ledger.open_records)
        self.metrics.window_seconds.set(batching.window_seconds)
        self.breaker = DeadLetterBreaker.from_settings(settings.dead_letter)
        self.clients = ClientPool(
            settings.connectors, clock=self.clock, metrics=self.metrics, transport=transport
        )
        self.suspensions = Suspensions(
            settings.connectors, self.clock, settings.dispatch.suspension_probe_seconds
        )
        for connector in settings.connectors:
            self.metrics.connector_suspended.labels(connector).set(0)
        # Builds and publishes dead letters; its publisher is made by open().
        self.outputs = OutputTopics(self.ledger, self.clock, self.metrics)
        self.outcomes = Outcomes(
            self.ledger, self.outputs, self.breaker, self.suspensions, self.metrics
        )
        if dispatcher is None:
            self.dispatcher = Dispatcher(
                self.clients,
                self.outcomes,
                retry_timeout=settings.dispatch.retry_timeout_seconds,
                clock=self.clock,
                metrics=self.metrics,
                suspensions=self.suspensions,
                removal_guard=removal_guard_of(settings.removal_guard, self.clock),
                shadow=[c.name for c in settings.connectors.values() if c.mode == "shadow"],
            )
        else:
            self.dispatcher = dispatcher(self.outcomes)
        self._stopping = Stopping(self.clock, batching)
        self.ingest = Ingest(
            settings.connectors,
            batching.max_buffered_records,
            ledger=self.ledger,
            windows=self.windows,
            dispatcher=self.dispatcher,
            dead_letters=self.outputs,
            breaker=self.breaker,
            metrics=self.metrics,
        )
        self.rebalance = Rebalance(
            batching,
            ledger=self.ledger,
            windows=self.windows,
            dispatcher=self.dispatcher,
            dead_letters=self.outputs,
            stopping=self._stopping,
            clock=self.clock,
        )
        self._bridge = LoopBridge()
        # The shutdown was cut at its bound before the final commit and group leave ended.
        self.abandoned = False
        # Dead letters and outcomes the broker had not acknowledged when the shutdown ended.
        self.unacknowledged = 0
        self.source: KafkaSource | None = None

    @property
    def dead_letters(self) -> DeadLetterPublisher | None:
        """The dead-letter producer, made by :meth:`open`."""
        return self.outputs.publisher

    @dead_letters.setter
    def dead_letters(self, publisher: DeadLetterPublisher | None) -> None:
        self.outputs.publisher = publisher

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until :meth:`stop` (or the consumer fails), then shut down cleanly."""
        source = self.open()
        source.start()
        try:
            while not self._stopping.asked:
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
        self._bridge.attach(asyncio.get_running_loop())
        kafka = self.settings.kafka
        self.outputs.publisher = DeadLetterPublisher(
            producer_config(kafka),
            kafka.dead_letter_topic,
            self.outputs.acknowledged,
            self.metrics,
            clock=self.clock,
            producer_factory=self.kafka.producer,
        )
        if kafka.publish_outcomes:
            self.outputs.outcomes = OutcomePublisher(
                producer_config(kafka),
                kafka.outcomes_topic,
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
            "consuming %s as group %s; dead letters to %s; outcomes to %s",
            ", ".join(kafka.topics),
            kafka.group_id,
            kafka.dead_letter_topic,
            kafka.outcomes_topic if kafka.publish_outcomes else "(off)",
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
        self._stopping.stop()

    async def _shutdown(self) -> None:
        assert self.source is not None
        assert self.dead_letters is not None
        self.stop()  # the bound counts from here when the consumer failed on its own
        budget = self._stopping.budget
        assert budget is not None
        log.info("shutting down within %g s: flushing buffered batches", budget.timeout_seconds)
        await self.dispatcher.stop_probes()
        self.source.stop()
        # Flushes start while the consumer thread ends: it may be inside a revoke, which now
        # waits no longer than the shutdown's flush deadline.
        self._submit_all()
        # A bounded join: the thread may be stuck in a commit to a broker that does not answer.
        await asyncio.to_thread(self.source.join, self._left(budget.commit_deadline))
        joined = not self.source.running
        self._stopping.closing = True
        self._submit_all()
        if not await self.dispatcher.wait(self._left(budget.flush_deadline)):
            log.warning("shutdown deadline passed with flushes in flight; they stay uncommitted")
            cancelling = asyncio.ensure_future(self.dispatcher.cancel())
            await asyncio.wait([cancelling], timeout=self._left(budget.commit_deadline))
        # The dead letters of the last flushes get a moment of their own even when the flushes
        # used up the deadline: acknowledged now, they need not be redone after the restart.
        await self.outputs.drain(budget.drain_deadline(self.clock.monotonic()))
        self.unacknowledged = self.outputs.pending
        if self.unacknowledged:
            log.error(
                "the broker did not acknowledge %d dead-letter and outcome records within the "
                "shutdown's bound; the records they stand for stay uncommitted and are read again",
                self.unacknowledged,
            )
        if joined:
            offsets = self.ledger.committable()
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

    def _tick(self) -> None:
        """Periodic work on the loop: closed windows, delivery reports, backpressure."""
        self.vitals.loop.beat()
        for batch in self.windows.due():
            self.dispatcher.submit(batch)
        self.dispatcher.probe()
        self.outputs.poll()
        self.ingest.update_pause()

    # -- SourceHandler: called from the consumer thread ----------------------------------

    def on_records(self, records: list[KafkaRecord]) -> None:
        self._bridge.call(self.ingest.take, records)

    def on_assign(self, partitions: list[TopicPartitionKey]) -> None:
        self._bridge.call(self.rebalance.assign, partitions)

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> Mapping[TopicPartitionKey, int]:
        return self._bridge.wait_for(lambda: self.rebalance.revoke(partitions))

    def on_lost(self, partitions: list[TopicPartitionKey]) -> None:
        self._bridge.call(self.rebalance.lose, partitions)

    def committable(self) -> Mapping[TopicPartitionKey, int]:
        return self._bridge.call(self.ledger.committable)

    def committed(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        self._bridge.call(self.ledger.mark_committed, offsets)

    def should_pause(self) -> bool:
        return self.ingest.paused

    def progress(self) -> Mapping[TopicPartitionKey, PartitionProgress]:
        return self._bridge.call(progress_of, self.ledger, self.clock)


def _describe(offsets: Mapping[TopicPartitionKey, int]) -> str:
    return ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(offsets.items())) or "nothing new"
