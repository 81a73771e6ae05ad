"""What the in-memory broker adds for tests, beyond the contract it shares with a real broker
(``tests/contract/test_kafka_backend.py``): failing deliveries, expiring a member, records
written directly, and a deterministic order and assignment."""

from __future__ import annotations

from typing import Any

import pytest

from stream.core.offsets import TopicPartitionKey
from stream.kafka.backend import BackendError, BackendException, ErrorCode, KafkaRecord
from stream.kafka.memory import MemoryBroker, MemoryConsumer

CONFIG = {"group.id": "g", "auto.offset.reset": "earliest"}


class Member:
    def __init__(self, broker: MemoryBroker, topic: str, **config: Any) -> None:
        self.consumer: MemoryConsumer = broker.consumer({**CONFIG, **config})
        self.events: list[tuple[str, list[TopicPartitionKey]]] = []
        self.consumer.subscribe(
            [topic],
            on_assign=lambda tps: self.events.append(("assign", tps)),
            on_revoke=lambda tps: self.events.append(("revoke", tps)),
            on_lost=lambda tps: self.events.append(("lost", tps)),
        )

    def poll(self) -> list[KafkaRecord]:
        return self.consumer.consume(100, 0)


def test_a_failed_delivery_reports_its_error_and_writes_nothing() -> None:
    broker = MemoryBroker()
    broker.create_topic("t")
    refused = BackendError(ErrorCode.UNKNOWN_TOPIC_OR_PART, "not now")
    broker.fail_deliveries("t", refused)
    producer = broker.producer({})
    reports: list[BackendError | None] = []
    for value in (b"1", b"2"):
        producer.produce("t", key=None, value=value, on_delivery=lambda e, _r: reports.append(e))
    assert broker.records("t", 0) == [], "nothing is written before the producer is polled"
    assert producer.poll(0) == 2
    assert reports == [refused, None]
    assert [r.value for r in broker.records("t", 0)] == [b"2"]


def test_purged_records_are_reported_purged_and_never_written() -> None:
    broker = MemoryBroker()
    broker.create_topic("t")
    producer = broker.producer({})
    reports: list[BackendError | None] = []
    producer.produce("t", key=None, value=b"1", on_delivery=lambda e, _r: reports.append(e))
    producer.purge()
    producer.poll(0)
    assert [e.code if e else None for e in reports] == [ErrorCode.PURGE_QUEUE]
    assert broker.records("t", 0) == []


def test_an_expired_member_loses_everything_at_its_next_poll_then_joins_again() -> None:
    broker = MemoryBroker()
    broker.create_topic("t", partitions=2)
    member = Member(broker, "t")
    member.poll()
    (first_id,) = broker.members("g")
    broker.expire("g", first_id)
    assert broker.assignment("g") == {}, "the group takes its partitions at once"
    with pytest.raises(BackendException) as refused:
        member.consumer.commit({("t", 0): 0})
    assert refused.value.error.code == ErrorCode.UNKNOWN_MEMBER_ID, "no longer a member"
    member.poll()
    member.poll()
    assert member.events == [
        ("assign", [("t", 0), ("t", 1)]),
        ("lost", [("t", 0), ("t", 1)]),
        ("assign", [("t", 0), ("t", 1)]),
    ]
    assert broker.members("g") != [first_id], "a new member id, as after a rejoin"


def test_records_come_in_the_order_written_across_partitions() -> None:
    broker = MemoryBroker()
    broker.create_topic("t", partitions=3)
    for partition in (2, 0, 1, 0):
        broker.write("t", partition, value=f"{partition}".encode())
    member = Member(broker, "t")
    assert [(r.partition, r.offset) for r in member.poll()] == [(2, 0), (0, 0), (1, 0), (0, 1)]


def test_a_record_written_with_unreadable_headers_is_read_with_headers_none() -> None:
    broker = MemoryBroker()
    broker.create_topic("t")
    broker.write("t", 0, key=b"k", value=b"v", headers=None)
    (record,) = Member(broker, "t").poll()
    assert (record.key, record.value, record.headers) == (b"k", b"v", None)


def test_the_assignment_is_balanced_and_sticky_in_joining_order() -> None:
    broker = MemoryBroker()
    broker.create_topic("t", partitions=4)
    members = [Member(broker, "t")]
    members[0].poll()
    for _ in range(2):
        members.append(Member(broker, "t"))
        for _ in range(2):
            for member in members:
                member.poll()
    first, second, third = broker.members("g")
    assert broker.assignment("g") == {
        first: [("t", 2), ("t", 3)],
        second: [("t", 1)],
        third: [("t", 0)],
    }
    members[1].consumer.close()
    members[0].poll()
    members[2].poll()
    assert broker.assignment("g") == {first: [("t", 2), ("t", 3)], third: [("t", 0), ("t", 1)]}
