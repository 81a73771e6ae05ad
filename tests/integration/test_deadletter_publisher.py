"""The dead-letter producer against the real broker: what a letter covers comes back with its
acknowledgement, letter by letter, even when one source record is dead-lettered twice."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from stream.config import KafkaSettings
from stream.deadletter import DeadLetterPublisher
from stream.deadletter_headers import DeadLetter, Reason
from stream.kafka_config import producer_config
from stream.metrics import Metrics
from stream.offsets import RecordRef
from tests.conftest import KafkaCluster

pytestmark = pytest.mark.integration


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


def test_a_record_the_topic_refuses_stays_open_and_its_log_names_the_partition(
    kafka: KafkaCluster, caplog: pytest.LogCaptureFixture
) -> None:
    acknowledged: list[RecordRef] = []
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap_servers)
    publisher = DeadLetterPublisher(
        {**producer_config(settings), "message.max.bytes": 10_000},
        kafka.create_topic(),
        lambda ref, _letter, _covers: acknowledged.append(ref),
        Metrics(),
    )
    ref = RecordRef("source", 4, 2)
    publisher.publish(ref, b"k", b"v" * 20_000, None, letter(ref))  # larger than it takes
    publisher.poll(0.5)
    assert acknowledged == []
    assert publisher.pending == 1, "the record stays open, to be tried again"
    (record,) = [r for r in caplog.records if "did not take the record" in r.getMessage()]
    assert record.partition == "source[4]"  # type: ignore[attr-defined]
