"""The raw producer of the hostile-input tests (tests/support/rawkafka.py): what it produces is
what reaches the topic, byte for byte, also when Python frees its buffers at once."""

from __future__ import annotations

import gc

import pytest
from confluent_kafka import Consumer

import tests.support.rawkafka as rawkafka
from tests.support.kafka import KafkaCluster
from tests.support.rawkafka import RawRecord, produce_raw

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def test_values_reach_the_topic_whole_when_their_buffers_are_freed_at_once(
    kafka: KafkaCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without RD_KAFKA_MSG_F_COPY librdkafka read the value after the buffer was freed: a
    # collection right after each hand-over made most values arrive with their first 8 bytes
    # overwritten (before, a rare flake of test_hostile_input).
    produce_one = rawkafka._produce_one

    def then_collect(*args: object) -> None:
        produce_one(*args)  # type: ignore[arg-type]
        gc.collect()

    monkeypatch.setattr(rawkafka, "_produce_one", then_collect)
    topic = kafka.create_topic()
    records = [RawRecord(b"k", b'{"n": %d, "pad": "%s"}' % (i, b"x" * 40 * i)) for i in range(20)]
    produce_raw(kafka.bootstrap_servers, topic, records)
    consumer = Consumer(
        {"bootstrap.servers": kafka.bootstrap_servers, "group.id": topic,
         "auto.offset.reset": "earliest"}
    )  # fmt: skip
    consumer.subscribe([topic])
    values: list[bytes | None] = []
    try:
        for _ in range(60):
            values += [m.value() for m in consumer.consume(50, 0.5) if m.error() is None]
            if len(values) >= len(records):
                break
    finally:
        consumer.close()
    assert values == [record.value for record in records]
