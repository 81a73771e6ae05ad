"""The broker fixture behaves as a real Kafka cluster: a consumer group resumes exactly where a
previous member committed, with nothing lost and nothing re-read before the committed offsets."""

from __future__ import annotations

from collections import defaultdict

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.support.kafka import KafkaCluster

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

RECORDS = 10_000
PARTITIONS = 3


def _consumer(kafka: KafkaCluster, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )


def _consume(consumer: Consumer, limit: int, timeout: float = 60.0) -> list[tuple[int, int, bytes]]:
    """Read up to ``limit`` records as (partition, offset, value)."""
    seen: list[tuple[int, int, bytes]] = []
    idle = 0
    while len(seen) < limit and idle < timeout:
        message = consumer.poll(1.0)
        if message is None:
            idle += 1
            continue
        assert message.error() is None, message.error()
        partition, offset, value = message.partition(), message.offset(), message.value()
        assert partition is not None, message
        assert offset is not None, message
        assert value is not None, message
        seen.append((partition, offset, value))
    return seen


def test_second_member_resumes_at_committed_offsets(kafka: KafkaCluster) -> None:
    topic = kafka.create_topic(partitions=PARTITIONS)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 5})
    for i in range(RECORDS):
        producer.produce(topic, key=f"profile-{i % 997}", value=str(i).encode())
    assert producer.flush(30) == 0
    group = kafka.unique_topic("group")

    first = _consumer(kafka, group)
    first.subscribe([topic])
    half = _consume(first, RECORDS // 2)
    assert len(half) == RECORDS // 2
    next_offsets: dict[int, int] = {}
    for partition, offset, _ in half:
        next_offsets[partition] = max(next_offsets.get(partition, 0), offset + 1)
    first.commit(
        offsets=[TopicPartition(topic, p, o) for p, o in next_offsets.items()],
        asynchronous=False,
    )
    first.close()

    second = _consumer(kafka, group)
    second.subscribe([topic])
    rest = _consume(second, RECORDS - len(half))

    first_seen: dict[int, int] = {}
    for partition, offset, _ in rest:
        first_seen.setdefault(partition, offset)
    for partition, committed in next_offsets.items():
        assert first_seen.get(partition, committed) == committed, (
            f"partition {partition}: resumed at {first_seen.get(partition)}, committed {committed}"
        )

    values = [int(v) for _, _, v in half + rest]
    assert len(values) == RECORDS, "a record was lost or read twice"
    assert sorted(values) == list(range(RECORDS))

    by_partition: dict[int, list[int]] = defaultdict(list)
    for partition, offset, _ in half + rest:
        by_partition[partition].append(offset)
    ends: dict[int, int] = {}
    for partition in range(PARTITIONS):
        _, high = second.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        ends[partition] = high
        assert sorted(by_partition[partition]) == list(range(high))
    second.commit(
        offsets=[TopicPartition(topic, p, o) for p, o in ends.items()], asynchronous=False
    )
    positions = second.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    assert {tp.partition: tp.offset for tp in positions} == ends
    second.close()
