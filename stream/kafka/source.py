"""The Kafka consumer edge: one thread that owns the consumer.

Everything that touches the consumer (poll, pause, resume, commit, rebalance callbacks) happens
in this thread, so a commit can never interleave with a revocation: a revoked partition's final
commit is made inside its revoke callback, and afterwards the ledger no longer offers it.

The consumer comes from a factory (:mod:`stream.kafka.backend`): confluent-kafka's by default,
an in-memory broker's (:mod:`stream.kafka.memory`) in tests. One turn of the loop is
:meth:`KafkaSource.poll`; the thread (:meth:`KafkaSource.start`) takes turns until
:meth:`KafkaSource.stop`, or a caller that never starts it takes them itself.

Contract with the :class:`SourceHandler` (the pipeline), whose methods are called from this
thread and must be thread-safe:

* ``on_records`` receives records in partition order; the handler opens each one. A record
  whose headers cannot be read has ``headers`` None (:class:`~stream.kafka.backend.KafkaRecord`).
* ``on_assign`` / ``on_revoke`` bracket ownership; ``on_revoke`` returns the offsets to commit for
  the revoked partitions after it flushed what it could within its time bound. ``on_lost``
  (partitions taken without a clean revoke) commits nothing.
* ``committable`` returns offsets that moved since the last confirmed commit; they are
  committed at most about once every ``commit_interval`` seconds, and ``committed`` confirms
  those the broker took.
* ``progress`` (every few seconds, for the lag metrics of :mod:`stream.kafka.lag`) returns what the
  ledger of open records knows of each owned partition.
* ``should_pause`` is asked every loop: True pauses every assigned partition (backpressure or an
  open circuit breaker); the consumer keeps polling so the group keeps it as a member.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from stream.clock import Clock, SystemClock
from stream.core.lag import PartitionProgress
from stream.core.offsets import TopicPartitionKey
from stream.kafka.backend import BackendException, Consumer, ErrorCode, KafkaRecord
from stream.kafka.client_config import consumer_config
from stream.kafka.confluent import ConfluentConsumer
from stream.kafka.lag import LagMonitor
from stream.observability.health import STATISTICS_INTERVAL_MS, Vitals
from stream.observability.metrics import Metrics
from stream.settings import KafkaSettings

log = logging.getLogger(__name__)

BATCH_SIZE = 500
# How long one turn waits for records when there are none.
POLL_SECONDS = 0.1


class SourceHandler(Protocol):
    def on_records(self, records: list[KafkaRecord]) -> None: ...

    def on_assign(self, partitions: list[TopicPartitionKey]) -> None: ...

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> Mapping[TopicPartitionKey, int]: ...

    def on_lost(self, partitions: list[TopicPartitionKey]) -> None: ...

    def committable(self) -> Mapping[TopicPartitionKey, int]: ...

    def committed(self, offsets: Mapping[TopicPartitionKey, int]) -> None: ...

    def should_pause(self) -> bool: ...

    def progress(self) -> Mapping[TopicPartitionKey, PartitionProgress]: ...


def pipeline_consumer_config(settings: KafkaSettings) -> dict[str, Any]:
    """The pipeline's consumer: :func:`stream.kafka.client_config.consumer_config`, with librdkafka
    statistics on by default (they tell ``/ready`` whether a broker is connected)."""
    config = consumer_config(settings)
    config.setdefault("statistics.interval.ms", STATISTICS_INTERVAL_MS)
    return config


class KafkaSource:
    def __init__(
        self,
        settings: KafkaSettings,
        handler: SourceHandler,
        metrics: Metrics,
        commit_interval: float = 1.0,
        vitals: Vitals | None = None,
        *,
        consumer_factory: Callable[[dict[str, Any]], Consumer] = ConfluentConsumer,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._handler = handler
        self._metrics = metrics
        self._commit_interval = commit_interval
        self._clock: Clock = clock or SystemClock()
        self._vitals = vitals or Vitals.on(self._clock)
        self._consumer = consumer_factory(
            self._vitals.brokers.instrument(pipeline_consumer_config(settings))
        )
        self._lag = LagMonitor(self._consumer, handler.progress, metrics)
        self._stop = threading.Event()
        self._paused = False
        self._next_commit = 0.0
        self._thread = threading.Thread(target=self._run, name="kafka-source", daemon=True)
        self.error: BaseException | None = None

    def subscribe(self) -> None:
        """Join the group; partitions are assigned by the polls that follow."""
        self._consumer.subscribe(
            list(self._settings.topics),
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._lost,
        )
        self._next_commit = self._clock.monotonic() + self._commit_interval

    def start(self) -> None:
        """Poll in the consumer thread (after :meth:`subscribe`) until :meth:`stop`."""
        self._thread.start()

    def stop(self) -> None:
        """Stop fetching; the thread ends after its current poll."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.ident is None:
            return  # never started: polled by its caller, who has stopped
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def where(self) -> str:
        """Where the consumer thread is now (its Python stack, innermost call last), for the log
        line of a shutdown that could not wait for it: the call that blocks names the cause."""
        frame = sys._current_frames().get(self._thread.ident or -1)
        if frame is None:
            return "not running"
        return "".join(traceback.format_stack(frame)).rstrip()

    def commit_and_close(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Final commit and leave the group. Call after the thread ended. Either may block for
        as long as the broker does not answer: the pipeline calls it in a thread it can abandon
        at the shutdown's bound."""
        try:
            self._commit(offsets)
        finally:
            self._consumer.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.poll()
        except BaseException as exc:  # the pipeline must learn that its source died
            log.exception("the Kafka consumer loop failed")
            self.error = exc

    def poll(self) -> None:
        """One turn: pause or resume, fetch and hand over records (rebalance callbacks run
        here), commit when due, sample lag. Only from the thread that owns the consumer: the
        consumer thread, or a caller that never started it."""
        self._vitals.consumer.beat()
        self._apply_pause()
        records = self._consumer.consume(BATCH_SIZE, timeout=POLL_SECONDS)
        good = [r for r in records if r.error is None or self._usable(r)]
        if good:
            self._handler.on_records(good)
        now = self._clock.monotonic()
        if now >= self._next_commit:
            offsets = self._handler.committable()
            if self._commit(offsets):
                self._handler.committed(offsets)
            self._next_commit = now + self._commit_interval
        self._lag.maybe_sample(now, paused=self._paused)

    def _usable(self, record: KafkaRecord) -> bool:
        error = record.error
        if error is None:
            return True
        if error.code == ErrorCode.PARTITION_EOF:
            return False
        if error.fatal:
            raise BackendException(error)
        log.warning("Kafka consumer error: %s (code %d)", error, error.code)
        return False

    def _apply_pause(self) -> None:
        want = self._handler.should_pause()
        if want == self._paused:
            return
        assignment = self._consumer.assignment()
        if want:
            self._consumer.pause(assignment)
            log.info("pausing %d partitions (backpressure or breaker)", len(assignment))
        else:
            self._consumer.resume(assignment)
            log.info("resuming %d partitions", len(assignment))
        self._paused = want
        self._metrics.paused.set(1 if want else 0)

    def _commit(self, offsets: Mapping[TopicPartitionKey, int]) -> bool:
        """Commit synchronously; True when the broker took every offset."""
        if not offsets:
            return False
        try:
            self._consumer.commit(offsets)
        except BackendException as exc:
            self._metrics.commits.labels("error").inc()
            log.warning("offset commit failed (offered again next time): %s", exc)
            return False
        self._metrics.commits.labels("ok").inc()
        for (topic, partition), offset in offsets.items():
            self._metrics.committed_offset.labels(topic, str(partition)).set(offset)
        return True

    def _assigned(self, keys: list[TopicPartitionKey]) -> None:
        log.info("assigned %s", _describe(keys))
        self._metrics.rebalances.labels("assigned").inc(len(keys))
        self._handler.on_assign(keys)
        self._lag.assigned(keys)
        # Take the partitions here instead of after this callback: librdkafka ignores pause()
        # for partitions not yet assigned, and keeps a partition's pause across a revoke, so a
        # partition that comes back must be resumed or paused explicitly, as the rest.
        self._consumer.incremental_assign(keys)
        if self._paused:
            self._consumer.pause(keys)
        else:
            self._consumer.resume(keys)

    def _revoked(self, keys: list[TopicPartitionKey]) -> None:
        log.info("revoked %s", _describe(keys))
        self._metrics.rebalances.labels("revoked").inc(len(keys))
        self._commit(self._handler.on_revoke(keys))
        self._lag.forget(keys)

    def _lost(self, keys: list[TopicPartitionKey]) -> None:
        for topic, partition in keys:
            log.warning(
                "lost %s[%d] without a clean revoke; its records will be read again",
                topic,
                partition,
                extra={"partition": f"{topic}[{partition}]"},
            )
        self._metrics.rebalances.labels("lost").inc(len(keys))
        self._handler.on_lost(keys)
        self._lag.forget(keys)


def _describe(keys: list[TopicPartitionKey]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(keys)) or "nothing"
