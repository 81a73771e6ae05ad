"""The Kafka consumer edge: one thread that owns the confluent-kafka consumer.

Everything that touches the consumer (poll, pause, resume, commit, rebalance callbacks) happens
in this thread, so a commit can never interleave with a revocation: a revoked partition's final
commit is made inside its revoke callback, and afterwards the tracker no longer offers it.

Contract with the :class:`SourceHandler` (the pipeline), whose methods are called from this
thread and must be thread-safe:

* ``on_records`` receives records in partition order; the handler opens each one. Their
  headers are read with :func:`readable_headers`, which never raises.
* ``on_assign`` / ``on_revoke`` bracket ownership; ``on_revoke`` returns the offsets to commit for
  the revoked partitions after it flushed what it could within its time bound. ``on_lost``
  (partitions taken without a clean revoke) commits nothing.
* ``committable`` returns offsets that moved since the last confirmed commit; they are
  committed at most about once every ``commit_interval`` seconds, and ``committed`` confirms
  those the broker took.
* ``progress`` (every few seconds, for the lag metrics of :mod:`stream.kafka.lag`) returns what the
  offset tracker knows of each owned partition.
* ``should_pause`` is asked every loop: True pauses every assigned partition (backpressure or an
  open circuit breaker); the consumer keeps polling so the group keeps it as a member.
"""

from __future__ import annotations

import gc
import logging
import operator
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream.clock import SystemClock
from stream.core.offsets import TopicPartitionKey
from stream.kafka.client_config import consumer_config
from stream.kafka.lag import LagMonitor, PartitionProgress
from stream.observability.health import STATISTICS_INTERVAL_MS, Vitals
from stream.observability.metrics import Metrics
from stream.settings import KafkaSettings

log = logging.getLogger(__name__)

BATCH_SIZE = 500
_HEADERS = operator.methodcaller("headers")


class SourceHandler(Protocol):
    def on_records(self, messages: list[Message]) -> None: ...

    def on_assign(self, partitions: list[TopicPartitionKey]) -> None: ...

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> Mapping[TopicPartitionKey, int]: ...

    def on_lost(self, partitions: list[TopicPartitionKey]) -> None: ...

    def committable(self) -> Mapping[TopicPartitionKey, int]: ...

    def committed(self, offsets: Mapping[TopicPartitionKey, int]) -> None: ...

    def should_pause(self) -> bool: ...

    def progress(self) -> Mapping[TopicPartitionKey, PartitionProgress]: ...


def readable_headers(message: Message) -> list[tuple[str, str | bytes | None]] | None:
    """A consumed record's headers, or None when confluent-kafka cannot decode them (a header
    name that is not UTF-8 makes ``headers()`` raise SystemError): such a record is bad input,
    to be dead-lettered, not a reason for the consumer thread to die and read it again.

    Call it once per message: after a failure the binding keeps a list holding a NULL name,
    which a second ``headers()`` returns without error (and touching it crashes the process).
    """
    # The binding returns the list with the UnicodeDecodeError still pending. A plain
    # message.headers() call site, once CPython 3.11 has specialised it, does not check for
    # that: the broken list comes back as if nothing happened and the process crashes later.
    # methodcaller calls through the generic path, which turns the pending error into a
    # SystemError here; no garbage collection meanwhile, which could swallow the error.
    collecting = gc.isenabled()
    gc.disable()
    try:
        headers = _HEADERS(message)
    except Exception:  # whatever the binding raises, the record is unreadable
        return None
    finally:
        if collecting:
            gc.enable()
    if headers is None:
        return []
    return list(headers.items() if isinstance(headers, dict) else headers)


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
    ) -> None:
        self._settings = settings
        self._handler = handler
        self._metrics = metrics
        self._commit_interval = commit_interval
        self._vitals = vitals or Vitals.on(SystemClock())
        self._consumer = Consumer(
            self._vitals.brokers.instrument(pipeline_consumer_config(settings))
        )
        self._lag = LagMonitor(self._consumer, handler.progress, metrics)
        self._stop = threading.Event()
        self._paused = False
        self._thread = threading.Thread(target=self._run, name="kafka-source", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._consumer.subscribe(
            list(self._settings.topics),
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._lost,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop fetching; the thread ends after its current poll."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
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
        next_commit = time.monotonic() + self._commit_interval
        try:
            while not self._stop.is_set():
                self._vitals.consumer.beat()
                self._apply_pause()
                messages = self._consumer.consume(BATCH_SIZE, timeout=0.1)
                good = [m for m in messages if self._usable(m)]
                if good:
                    self._handler.on_records(good)
                now = time.monotonic()
                if now >= next_commit:
                    offsets = self._handler.committable()
                    if self._commit(offsets):
                        self._handler.committed(offsets)
                    next_commit = now + self._commit_interval
                self._lag.maybe_sample(now, paused=self._paused)
        except BaseException as exc:  # the pipeline must learn that its source died
            log.exception("the Kafka consumer loop failed")
            self.error = exc

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() == KafkaError._PARTITION_EOF:
            return False
        if error.fatal():
            raise KafkaException(error)
        log.warning("Kafka consumer error: %s", error)
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
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=False)
        except KafkaException as exc:
            self._metrics.commits.labels("error").inc()
            log.warning("offset commit failed (offered again next time): %s", exc)
            return False
        self._metrics.commits.labels("ok").inc()
        for (topic, partition), offset in offsets.items():
            self._metrics.committed_offset.labels(topic, str(partition)).set(offset)
        return True

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        log.info("assigned %s", _describe(keys))
        self._metrics.rebalances.labels("assigned").inc(len(keys))
        self._handler.on_assign(keys)
        self._lag.assigned(keys)
        # Take the partitions here instead of after this callback: librdkafka ignores pause()
        # for partitions not yet assigned, and keeps a partition's pause across a revoke, so a
        # partition that comes back must be resumed or paused explicitly, as the rest.
        consumer.incremental_assign(partitions)
        if self._paused:
            consumer.pause(partitions)
        else:
            consumer.resume(partitions)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        log.info("revoked %s", _describe(keys))
        self._metrics.rebalances.labels("revoked").inc(len(keys))
        self._commit(self._handler.on_revoke(keys))
        self._lag.forget(keys)

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
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
