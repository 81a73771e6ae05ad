"""Publishing outcomes to the outcomes topic (:mod:`stream.core.outcome_format`).

Contract:

* One record per :meth:`OutcomePublisher.publish`: key and value as
  :mod:`stream.core.outcome_format` writes them, no headers.
* ``on_acknowledged`` is called once, when the broker acknowledged the record; the records the
  outcome stands for stay open until then. Producing is
  :class:`~stream.kafka.publisher.AcknowledgedPublisher`'s (never blocking, refusals retried and
  counted in ``ddsync_outcome_errors_total``, a fatal producer replaced without a loss).
* :func:`read_outcomes` reads the whole topic up to the end offsets it finds (``ddsync
  reconcile``), as any consumer of it would, in each partition's order.
* Outcomes are handed to the producer in the order they are published, and one contact's
  outcomes share a key, hence a partition: the topic's latest record of a contact is its latest
  outcome, which compaction keeps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from stream.clock import Clock
from stream.core.outcome_format import MalformedOutcome, Outcome, State, decode
from stream.kafka.backend import Producer
from stream.kafka.client_config import consumer_config
from stream.kafka.confluent import ConfluentProducer
from stream.kafka.publisher import AcknowledgedPublisher, Outgoing
from stream.observability.metrics import Metrics
from stream.settings import KafkaSettings

__all__ = ["OutcomePublisher", "OutcomesRead", "OutcomesTopicError", "read_outcomes"]

log = logging.getLogger(__name__)


class OutcomePublisher:
    def __init__(
        self,
        producer_config: Mapping[str, Any],
        topic: str,
        metrics: Metrics,
        *,
        clock: Clock | None = None,
        producer_factory: Callable[[dict[str, Any]], Producer] = ConfluentProducer,
    ) -> None:
        self._metrics = metrics
        self._published: dict[State, Any] = {}
        self._publisher = AcknowledgedPublisher(
            producer_config,
            topic,
            on_error=metrics.outcome_errors.inc,
            clock=clock,
            producer_factory=producer_factory,
        )

    @property
    def pending(self) -> int:
        return self._publisher.pending

    @property
    def congested(self) -> bool:
        return self._publisher.congested

    def publish(self, outcome: Outcome, on_acknowledged: Callable[[], None]) -> None:
        published = self._published.get(outcome.state)
        if published is None:
            # labels() costs a lock and a look-up: once per state, not once per contact.
            published = self._metrics.outcomes_published.labels(outcome.state.value)
            self._published[outcome.state] = published

        def acknowledged() -> None:
            published.inc()
            on_acknowledged()

        about = f"{outcome.connector}/{outcome.address_book_id} outcome {outcome.state.value}"
        partition = (
            None
            if outcome.source_topic is None
            else f"{outcome.source_topic}[{outcome.source_partition}]"
        )
        self._publisher.publish(
            Outgoing(outcome.key, outcome.encode(), (), about, partition), acknowledged
        )

    def poll(self, timeout: float = 0.0) -> int:
        return self._publisher.poll(timeout)

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for every outcome published to be acknowledged (a command's
        end); how many are still not."""
        return self._publisher.drain(timeout)


@dataclass(frozen=True)
class OutcomesRead:
    """How many records the read took (to the end offsets taken when it started), and how many
    of them were not outcomes."""

    records: int
    malformed: int


def read_outcomes(
    settings: KafkaSettings, take: Callable[[Outcome], None], *, timeout: float = 30.0
) -> OutcomesRead:
    """Hand each outcome of ``kafka.outcomes_topic`` to ``take``, in each partition's order (a
    contact's latest outcome after its others), from the topic's beginning to the end offsets
    it has now, without joining or committing for any consumer group: memory is the caller's.
    Raises :class:`OutcomesTopicError` when the topic does not exist and ``KafkaException`` when
    the cluster cannot be reached."""
    topic = settings.outcomes_topic
    config = consumer_config(settings, group_id=f"{settings.group_id}.reconcile")
    consumer = Consumer({**config, "enable.partition.eof": False})
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            raise OutcomesTopicError(
                f"outcomes topic {topic} does not exist: kafka.publish_outcomes must be on "
                "while ddsync runs for reconcile to know what the books should hold"
            )
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for partition in sorted(described.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout, cached=False
            )
            if high > low:
                ends[partition] = high
                starts.append(TopicPartition(topic, partition, low))
        malformed = records = 0
        if starts:
            consumer.assign(starts)
        deadline = time.monotonic() + timeout
        positions = {tp.partition: tp.offset for tp in starts}
        while any(positions[p] < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                raise OutcomesTopicError(
                    f"outcomes topic {topic}: no record for {timeout:g} s before its end offsets"
                )
            for message in consumer.consume(1000, timeout=1.0):
                partition, offset = message.partition(), message.offset()
                if message.error() is not None or partition is None or offset is None:
                    continue
                deadline = time.monotonic() + timeout
                positions[partition] = offset + 1
                if offset >= ends.get(partition, 0):
                    continue  # written since the read started
                records += 1
                try:
                    outcome = decode(message.value())
                except MalformedOutcome as exc:
                    malformed += 1
                    log.warning(
                        "outcomes topic %s[%d]@%d is not an outcome (%s); skipped",
                        topic,
                        partition,
                        offset,
                        exc,
                    )
                    continue
                take(outcome)
        return OutcomesRead(records, malformed)
    finally:
        consumer.close()


class OutcomesTopicError(RuntimeError):
    """The outcomes topic cannot be read; the message says what to do."""
