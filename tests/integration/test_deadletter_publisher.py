"""The dead-letter producer against the real broker: what a letter covers comes back with its
acknowledgement, letter by letter, even when one source record is dead-lettered twice; a letter
larger than the producer takes is written without its value."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer, Message

from stream.core.deadletter_format import H_VALUE_OMITTED, DeadLetter
from stream.core.offsets import RecordRef
from stream.core.reasons import Reason
from stream.kafka.client_config import producer_config
from stream.kafka.deadletters import DeadLetterPublisher
from stream.observability.metrics import Metrics
from stream.settings import KafkaSettings
from tests.support.kafka import KafkaCluster, headers_of

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def letter(ref: RecordRef) -> DeadLetter:
    return DeadLetter(
        reason=Reason.RETRIES_EXHAUSTED,
        error_code="x",
        error_message="y",
        source_topic=ref.topic,
        source_partition=ref.partition,
        source_offset=ref.offset,
        connector_id="main",
        address_book_id=1,
        event_id="e",
        attempts=1,
        failed_at=datetime.now(UTC),
        replay_count=0,
    )


def test_the_same_record_dead_lettered_twice_keeps_both_letters_covers(
    kafka: KafkaCluster,
) -> None:
    topic = kafka.create_topic()
    acknowledged: list[tuple[RecordRef, tuple[RecordRef, ...]]] = []
    publisher = DeadLetterPublisher(
        producer_config(KafkaSettings(bootstrap_servers=kafka.bootstrap_servers)),
        topic,
        lambda ref, _letter, covers: acknowledged.append((ref, covers)),
        Metrics(),
    )
    winner = RecordRef("source", 0, 7)
    first = (RecordRef("source", 0, 3), winner)
    second = (RecordRef("source", 0, 5), winner)
    # Read again after its partition came back, the record fails again before the first
    # letter was acknowledged: each letter must make its own records final.
    publisher.publish(winner, b"k", b"v", None, letter(winner), first)
    publisher.publish(winner, b"k", b"v", None, letter(winner), second)
    publisher.publish(RecordRef("source", 0, 9), b"k", b"v", None, letter(winner))
    deadline = time.monotonic() + 30
    while publisher.pending and time.monotonic() < deadline:
        publisher.poll(0.1)
    assert publisher.pending == 0
    assert acknowledged == [
        (winner, first),
        (winner, second),
        (RecordRef("source", 0, 9), (RecordRef("source", 0, 9),)),
    ]


def test_a_record_too_large_for_the_producer_is_dead_lettered_without_its_value(
    kafka: KafkaCluster,
) -> None:
    # Before: refused forever, its partition's commits stuck behind it.
    acknowledged: list[RecordRef] = []
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap_servers)
    topic = kafka.create_topic()
    publisher = DeadLetterPublisher(
        {**producer_config(settings), "message.max.bytes": 10_000},
        topic,
        lambda ref, _letter, _covers: acknowledged.append(ref),
        Metrics(),
    )
    ref = RecordRef("source", 4, 2)
    publisher.publish(ref, b"k", b"v" * 20_000, [("trace", b"t")], letter(ref))
    deadline = time.monotonic() + 30
    while publisher.pending and time.monotonic() < deadline:
        publisher.poll(0.1)
    assert acknowledged == [ref]
    (record,) = read_all(kafka, topic, 1)
    assert record.value() is None
    assert record.key() == b"k"
    headers = dict(headers_of(record))
    assert "trace" not in headers
    omitted = headers[H_VALUE_OMITTED]
    assert isinstance(omitted, bytes)
    assert b"20000 bytes" in omitted
    restored = DeadLetter.from_headers(record.headers() or [])
    assert (restored.source_topic, restored.source_partition, restored.source_offset) == (
        "source",
        4,
        2,
    )


def read_all(kafka: KafkaCluster, topic: str, count: int) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"read-{topic}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    records: list[Message] = []
    deadline = time.monotonic() + 30
    try:
        while len(records) < count and time.monotonic() < deadline:
            records.extend(m for m in consumer.consume(10, 0.5) if m.error() is None)
    finally:
        consumer.close()
    return records
