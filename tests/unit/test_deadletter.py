"""The dead-letter publisher against a scripted producer: it never blocks its caller (the event
loop), recreates a producer that failed fatally without losing a letter, and writes a letter too
large for the topic without its value instead of leaving its partition's commits stuck."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from stream.clock import FakeClock
from stream.core.deadletter_format import H_VALUE_OMITTED, DeadLetter
from stream.core.offsets import RecordRef
from stream.core.reasons import Reason
from stream.kafka.backend import BackendError, BackendException, ErrorCode
from stream.kafka.deadletters import DeadLetterPublisher
from stream.observability.metrics import Metrics
from stream.pipeline.processor import Pipeline
from stream.settings import KafkaSettings, Settings


class Blocked(Exception):
    """The publisher waited on the producer: on the event loop, everything would freeze."""


class FakeMessage:
    def __init__(self, key: bytes | None, value: bytes | None, headers: list[Any]) -> None:
        self.key, self.value, self.headers = key, value, headers


Delivery = Callable[[BackendError | None, Any], None]


class FakeProducer:
    """librdkafka as far as the publisher sees it: a bounded local queue, a size check, and
    delivery reports served by poll() as the test scripts them."""

    def __init__(self, capacity: int = 100, max_bytes: int = 1_000_000) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.queued: list[tuple[FakeMessage, Delivery]] = []
        self.written: list[FakeMessage] = []
        self.broker_up = True
        self.idle_polls = 0
        self.purged = False
        self.refuse: BackendError | None = None  # produce() raises this
        self.report: BackendError | None = None  # the next delivery reports carry this

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[Any],
        on_delivery: Delivery,
    ) -> None:
        if self.refuse is not None:
            raise BackendException(self.refuse)
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)
        if size > self.max_bytes:
            raise BackendException(BackendError(ErrorCode.MSG_SIZE_TOO_LARGE, "too large"))
        if len(self.queued) >= self.capacity:
            raise BufferError("Local: Queue full")
        self.queued.append((FakeMessage(key, value, list(headers)), on_delivery))

    def poll(self, timeout: float = 0.0) -> int:
        if not self.broker_up:
            self.idle_polls += 1
            if self.idle_polls > 5:
                raise Blocked
            return 0
        served, self.queued = self.queued, []
        for message, on_delivery in served:
            if self.report is None:
                self.written.append(message)
            on_delivery(self.report, message)
        return len(served)

    def purge(self) -> None:
        self.purged = True


def letter(offset: int) -> DeadLetter:
    return DeadLetter(
        reason=Reason.INVALID_EVENT,
        error_code="invalid_event",
        error_message="the value is not JSON",
        source_topic="source",
        source_partition=3,
        source_offset=offset,
        failed_at=datetime(2024, 5, 1, tzinfo=UTC),
        event_id="e" * 5000,
    )


class Harness:
    def __init__(self, **producer: Any) -> None:
        self.producers: list[FakeProducer] = []
        self.acknowledged: list[int] = []
        self.clock = FakeClock()

        def factory(_config: dict[str, Any]) -> Any:
            self.producers.append(FakeProducer(**producer))
            return self.producers[-1]

        self.publisher = DeadLetterPublisher(
            {},
            "dlq",
            lambda ref, _letter, _covers: self.acknowledged.append(ref.offset),
            Metrics(),
            clock=self.clock,
            producer_factory=factory,
        )

    @property
    def producer(self) -> FakeProducer:
        return self.producers[-1]

    def publish(self, offset: int, value: bytes = b"{}") -> None:
        ref = RecordRef("source", 3, offset)
        self.publisher.publish(ref, b"key", value, [("trace", b"t")], letter(offset))


def test_a_full_local_queue_never_blocks_the_caller_and_the_backlog_drains_in_order() -> None:
    harness = Harness(capacity=2)
    harness.producer.broker_up = False
    for offset in range(5):
        harness.publish(offset)  # three find no room: before the fix, this spun on poll()
    assert harness.publisher.congested
    assert harness.publisher.pending == 5
    harness.publisher.poll(0)  # still no room: returns, does not wait
    harness.producer.broker_up = True
    for _ in range(5):
        harness.publisher.poll(0)
    assert harness.acknowledged == [0, 1, 2, 3, 4]
    assert not harness.publisher.congested
    assert harness.publisher.pending == 0


def test_a_congested_dead_letter_topic_pauses_consumption_until_the_backlog_drains() -> None:
    harness = Harness(capacity=1)
    harness.producer.broker_up = False
    pipeline = Pipeline(Settings(kafka=KafkaSettings(bootstrap_servers="k:9092"), connectors={}))
    pipeline.dead_letters = harness.publisher
    harness.publish(0)
    pipeline.ingest.update_pause()
    assert not pipeline.should_pause(), "one letter in librdkafka's queue is no congestion"
    harness.publish(1)
    pipeline.ingest.update_pause()
    assert pipeline.should_pause()
    harness.producer.broker_up = True
    harness.publisher.poll(0)
    harness.publisher.poll(0)
    pipeline.ingest.update_pause()
    assert not pipeline.should_pause()
    assert harness.acknowledged == [0, 1]


def test_a_fatal_delivery_error_replaces_the_producer_and_publishes_the_rest_again() -> None:
    harness = Harness()
    first = harness.producer
    harness.publish(0)
    harness.publisher.poll(0)
    harness.publish(1)
    harness.publish(2)
    first.report = BackendError(ErrorCode.FATAL, "Fatal: idempotent producer", fatal=True)
    harness.publisher.poll(0)  # both fail fatally: the first producer is given up
    assert len(harness.producers) == 2
    assert first.purged
    harness.publish(3)
    for _ in range(3):
        harness.publisher.poll(0)
    assert harness.acknowledged == [0, 1, 2, 3], "each letter acknowledged once, none lost"
    offsets = [DeadLetter.from_headers(m.headers).source_offset for m in harness.producer.written]
    assert offsets == [1, 2, 3], "republished first, in their order"
    assert harness.publisher.pending == 0


def test_a_fatal_error_raised_by_produce_replaces_the_producer() -> None:
    harness = Harness()
    harness.producer.refuse = BackendError(ErrorCode.FATAL, "fenced", fatal=True)
    harness.publish(0)
    assert harness.acknowledged == []
    for _ in range(3):
        harness.publisher.poll(0)
    assert len(harness.producers) == 2
    assert harness.acknowledged == [0]


def test_a_letter_too_large_for_the_producer_is_written_without_its_value() -> None:
    harness = Harness(max_bytes=20_000)
    harness.publish(7, b"v" * 50_000)
    harness.publisher.poll(0)
    assert harness.acknowledged == [7], "written and final: the partition's commits go on"
    (written,) = harness.producer.written
    assert written.value is None
    assert written.key == b"key"
    headers = dict(written.headers)
    assert "trace" not in headers
    assert b"50000 bytes" in headers[H_VALUE_OMITTED]
    restored = DeadLetter.from_headers(written.headers)
    assert (restored.source_topic, restored.source_partition, restored.source_offset) == (
        "source",
        3,
        7,
    )
    assert restored.reason is Reason.INVALID_EVENT
    assert restored.event_id is not None
    assert len(restored.event_id.encode()) <= 256


def test_a_letter_the_topic_refuses_for_size_is_written_again_without_its_value() -> None:
    harness = Harness()
    harness.publish(7, b"v" * 5000)
    harness.producer.report = BackendError(ErrorCode.MSG_SIZE_TOO_LARGE, "too large")
    harness.publisher.poll(0)
    harness.producer.report = None
    harness.publisher.poll(0)
    harness.publisher.poll(0)
    assert harness.acknowledged == [7]
    (written,) = harness.producer.written
    assert written.value is None
    assert H_VALUE_OMITTED in dict(written.headers)


def test_a_refused_letter_stays_open_and_is_tried_again_after_its_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = Harness()
    harness.producer.refuse = BackendError(ErrorCode.UNKNOWN_TOPIC, "no such topic")
    harness.publish(2)
    harness.publisher.poll(0)
    assert harness.publisher.pending == 1
    (record,) = [r for r in caplog.records if "did not take the record" in r.getMessage()]
    assert vars(record)["partition"] == "source[3]"  # given with extra=
    harness.producer.refuse = None
    harness.publisher.poll(0)
    assert harness.acknowledged == [], "not before its backoff"
    harness.clock.advance(1.0)
    harness.publisher.poll(0)
    harness.publisher.poll(0)
    assert harness.acknowledged == [2]
