"""What the pipeline does with a consumed record it cannot read, on an in-memory broker: a record
whose headers confluent-kafka cannot decode is dead-lettered, never raised into the consumer
thread (which would die, restart, and read the same record again: a crash loop)."""

from __future__ import annotations

from typing import Any

from stream.clock import FakeClock
from stream.core.deadletter_format import DeadLetter
from stream.core.offsets import RecordRef
from stream.core.reasons import Reason
from stream.kafka.backend import BackendError, ErrorCode, KafkaRecord
from stream.kafka.confluent import record_of
from stream.kafka.memory import MemoryBroker
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

    def error(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> Any:
        raise SystemError("<method 'headers'> returned a result with an exception set")


def test_headers_confluent_kafka_cannot_decode_make_a_record_without_headers() -> None:
    record = record_of(UnreadableHeaders())  # type: ignore[arg-type]
    assert record == KafkaRecord(
        "source", 0, 5, b"profile-1", b'{"event_id": "e"}', None, 1_700_000_000_000
    )


async def test_a_record_whose_headers_cannot_be_read_is_dead_lettered_with_its_reason() -> None:
    broker = MemoryBroker()
    broker.create_topic("source")
    broker.create_topic("dlq")
    broker.create_topic("ddsync.outcomes")  # kafka.outcomes_topic's default
    connector = ConnectorSettings(name="main", username="u", password=Secret("p"))
    kafka = KafkaSettings(
        bootstrap_servers="memory:9092", topics=("source",), dead_letter_topic="dlq", group_id="g"
    )
    clock = FakeClock()
    pipeline = Pipeline(
        Settings(kafka=kafka, connectors={"main": connector}), clock=clock, kafka=broker
    )
    broker.write("source", 0, key=b"profile-1", value=b'{"event_id": "e"}', headers=None)
    broker.fail_deliveries("dlq", BackendError(ErrorCode.UNKNOWN_TOPIC_OR_PART, "not yet"))
    pipeline.open()
    await pipeline.poll()  # assigned, read, dead-lettered: the letter's first delivery fails
    ref = RecordRef("source", 0, 0)
    assert pipeline.ledger.is_open(ref), "open until the dead letter is acknowledged"
    clock.advance(1.0)  # the letter's backoff
    await pipeline.poll()  # published again
    await pipeline.poll()  # acknowledged
    assert not pipeline.ledger.is_open(ref)
    (written,) = broker.records("dlq", 0)
    assert (written.key, written.value) == (b"profile-1", b'{"event_id": "e"}')
    letter = DeadLetter.from_headers(written.headers or ())
    assert letter.reason is Reason.INVALID_EVENT
    assert "headers cannot be read" in letter.error_message
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("source", 0, 0)
    await pipeline.close()
    assert broker.committed("g", ("source", 0)) == 1
