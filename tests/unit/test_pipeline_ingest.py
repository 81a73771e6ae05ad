"""What the pipeline does with a consumed record it cannot read, on the loop, without Kafka: a
record whose headers confluent-kafka cannot decode is dead-lettered, never raised into the
consumer thread (which would die, restart, and read the same record again: a crash loop)."""

from __future__ import annotations

from typing import Any, cast

from confluent_kafka import Message

from stream.core.deadletter_format import DeadLetter
from stream.core.offsets import RecordRef
from stream.core.reasons import Reason
from stream.kafka.deadletters import DeadLetterPublisher
from stream.pipeline.processor import Pipeline
from stream.settings import ConnectorSettings, KafkaSettings, Secret, Settings


class UnreadableHeaders:
    """A consumed record as confluent-kafka hands it over when a header name is not UTF-8:
    ``headers()`` raises SystemError ("returned a result with an exception set")."""

    def topic(self) -> str:
        return "source"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 5

    def key(self) -> bytes:
        return b"profile-1"

    def value(self) -> bytes:
        return b'{"event_id": "e"}'

    def headers(self) -> Any:
        raise SystemError("<method 'headers'> returned a result with an exception set")


class Recorder:
    congested = False

    def __init__(self) -> None:
        self.published: list[tuple[RecordRef, Any, Any, Any, DeadLetter]] = []

    def publish(
        self, ref: RecordRef, key: Any, value: Any, headers: Any, letter: DeadLetter, _covers: Any
    ) -> None:
        self.published.append((ref, key, value, headers, letter))


def test_a_record_whose_headers_cannot_be_read_is_dead_lettered_with_its_reason() -> None:
    connector = ConnectorSettings(name="main", username="u", password=Secret("p"))
    pipeline = Pipeline(
        Settings(kafka=KafkaSettings(bootstrap_servers="k:9092"), connectors={"main": connector})
    )
    recorder = Recorder()
    pipeline.dead_letters = cast(DeadLetterPublisher, recorder)  # publish() is all it needs
    pipeline._assign([("source", 0)])
    pipeline._ingest([cast(Message, UnreadableHeaders())])
    ((ref, key, value, headers, letter),) = recorder.published
    assert ref == RecordRef("source", 0, 5)
    assert (key, value, headers) == (b"profile-1", b'{"event_id": "e"}', [])
    assert letter.reason is Reason.INVALID_EVENT
    assert "headers cannot be read" in letter.error_message
    assert pipeline.tracker.is_open(ref), "open until the dead letter is acknowledged"
