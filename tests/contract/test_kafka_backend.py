"""One contract, two backends: what ddsync relies on of a Kafka client, checked against a real
broker through the confluent-kafka adapters (:mod:`stream.kafka.confluent`) and against the
in-memory broker (:mod:`stream.kafka.memory`), so that tests on the latter show what the former
does.

Every test runs twice; the real-broker half is marked ``integration``. The clients are
configured as ddsync configures its own (:func:`~stream.kafka.client_config.consumer_config`:
manual commits, cooperative-sticky). On the real broker a test polls until what it waits for
happened (rebalances take seconds, and expiring a member means not polling past
``max.poll.interval.ms``); in memory the same loop ends within a few turns, without waiting.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import confluent_kafka
import pytest
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from stream.core.offsets import TopicPartitionKey
from stream.kafka.backend import (
    BackendError,
    BackendException,
    Consumer,
    ErrorCode,
    KafkaBackend,
    KafkaRecord,
    Producer,
)
from stream.kafka.client_config import consumer_config, producer_config
from stream.kafka.confluent import ConfluentBackend
from stream.kafka.memory import MemoryBroker, MemoryConsumer
from stream.settings import KafkaSettings
from tests.support.kafka import KafkaCluster

# Short enough for a test to outwait (librdkafka wants it at least session.timeout.ms, which
# the broker wants at least 6 s).
MAX_POLL_INTERVAL_MS = 6000


# Members learn of a rebalance at their next heartbeat (3 s by default): sooner here, so that
# the real broker's rebalances take a second or two instead of most of a test's time.
FAST_GROUP: dict[str, Any] = {"heartbeat.interval.ms": 300}


class Cluster(Protocol):
    @property
    def backend(self) -> KafkaBackend: ...
    @property
    def bootstrap_servers(self) -> str: ...
    @property
    def poll_timeout(self) -> float: ...

    def topic(self, partitions: int = 1, *, max_message_bytes: int | None = None) -> str: ...

    def turns(self) -> Iterator[int]:
        """As many polling turns as what a test waits for may take."""
        ...

    def expire(self, member: Member) -> None:
        """End ``member``'s membership behind its back (it learns at its next poll)."""
        ...


@dataclass
class RealCluster:
    kafka: KafkaCluster
    backend: KafkaBackend = field(default_factory=ConfluentBackend)
    poll_timeout: float = 0.2

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka.bootstrap_servers

    def topic(self, partitions: int = 1, *, max_message_bytes: int | None = None) -> str:
        name = self.kafka.unique_topic("contract")
        config = {} if max_message_bytes is None else {"max.message.bytes": str(max_message_bytes)}
        futures = self.kafka.admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)],
            operation_timeout=30,
        )
        futures[name].result(timeout=60)
        return name

    def turns(self) -> Iterator[int]:
        deadline = time.monotonic() + 60
        turn = 0
        while time.monotonic() < deadline:
            yield turn
            turn += 1

    def expire(self, member: Member) -> None:
        # Not polling for longer than max.poll.interval.ms makes librdkafka leave the group.
        time.sleep(MAX_POLL_INTERVAL_MS / 1000 + 1.5)


@dataclass
class InMemory:
    broker: MemoryBroker = field(default_factory=MemoryBroker)
    bootstrap_servers: str = "memory:9092"
    poll_timeout: float = 0.2

    @property
    def backend(self) -> KafkaBackend:
        return self.broker

    def topic(self, partitions: int = 1, *, max_message_bytes: int | None = None) -> str:
        name = f"contract-{uuid.uuid4().hex[:10]}"
        if max_message_bytes is None:
            self.broker.create_topic(name, partitions)
        else:
            self.broker.create_topic(name, partitions, max_message_bytes=max_message_bytes)
        return name

    def turns(self) -> Iterator[int]:
        # Nothing to wait for: a few turns serve any rebalance; more would hide a bug.
        yield from range(10)

    def expire(self, member: Member) -> None:
        consumer = member.consumer
        assert isinstance(consumer, MemoryConsumer)
        assert consumer.member_id is not None
        self.broker.expire(consumer.group_id, consumer.member_id)


@dataclass
class Member:
    """A consumer of the group and what its callbacks and polls saw."""

    consumer: Consumer
    events: list[tuple[str, list[TopicPartitionKey]]] = field(default_factory=list)
    records: list[KafkaRecord] = field(default_factory=list)

    def assigned(self) -> set[TopicPartitionKey]:
        return set(self.consumer.assignment())

    def callbacks(self, kind: str) -> list[list[TopicPartitionKey]]:
        return [partitions for what, partitions in self.events if what == kind and partitions]


class World:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.consumers: list[Consumer] = []

    def settings(self, group: str = "unused") -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.cluster.bootstrap_servers, group_id=group)

    def producer(self, **config: Any) -> Producer:
        return self.cluster.backend.producer({**producer_config(self.settings()), **config})

    def member(
        self,
        group: str,
        topic: str,
        *,
        on_revoke: Callable[[Member, list[TopicPartitionKey]], None] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Member:
        consumer = self.cluster.backend.consumer(
            {**consumer_config(self.settings(group)), **FAST_GROUP, **(config or {})}
        )
        self.consumers.append(consumer)
        member = Member(consumer)

        def revoked(partitions: list[TopicPartitionKey]) -> None:
            member.events.append(("revoke", partitions))
            if on_revoke is not None:
                on_revoke(member, partitions)

        consumer.subscribe(
            [topic],
            on_assign=lambda partitions: member.events.append(("assign", partitions)),
            on_revoke=revoked,
            on_lost=lambda partitions: member.events.append(("lost", partitions)),
        )
        return member

    def drive(self, members: Sequence[Member], until: Callable[[], bool], what: str) -> None:
        """Poll every member in turn until ``until()``."""
        for _ in self.cluster.turns():
            for member in members:
                polled = member.consumer.consume(100, self.cluster.poll_timeout)
                member.records.extend(r for r in polled if r.error is None)
            if until():
                return
        raise AssertionError(f"never {what}")

    def close(self) -> None:
        for consumer in self.consumers:
            with contextlib.suppress(RuntimeError):  # closed by the test
                consumer.close()


@pytest.fixture(
    params=[pytest.param("confluent", marks=[pytest.mark.integration, pytest.mark.kafka]), "memory"]
)
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    cluster: Cluster
    if request.param == "memory":
        cluster = InMemory()
    else:
        cluster = RealCluster(request.getfixturevalue("kafka"))
    world = World(cluster)
    try:
        yield world
    finally:
        world.close()


def group() -> str:
    return f"contract-{uuid.uuid4().hex[:10]}"


def produce(
    producer: Producer, topic: str, values: Sequence[tuple[int, bytes]]
) -> list[tuple[BackendError | None, KafkaRecord]]:
    """Produce ``(partition, value)`` pairs, flush, and return the delivery reports."""
    reports: list[tuple[BackendError | None, KafkaRecord]] = []
    for partition, value in values:
        producer.produce(
            topic,
            key=b"key-" + value,
            value=value,
            headers=[("trace", b"t-" + value), ("empty", None)],
            partition=partition,
            on_delivery=lambda error, record: reports.append((error, record)),
        )
    assert producer.flush(30) == 0
    return reports


def by_partition(records: Sequence[KafkaRecord]) -> dict[int, list[KafkaRecord]]:
    found: dict[int, list[KafkaRecord]] = {}
    for record in records:
        found.setdefault(record.partition, []).append(record)
    return found


# -- producing -----------------------------------------------------------------------------------


def test_delivery_reports_come_once_per_record_in_order_within_a_partition(world: World) -> None:
    topic = world.cluster.topic(partitions=3)
    values = [(n % 3, f"{n}".encode()) for n in range(30)]
    reports = produce(world.producer(), topic, values)
    assert [error for error, _ in reports] == [None] * 30
    for partition, delivered in by_partition([record for _, record in reports]).items():
        assert [r.offset for r in delivered] == list(range(10))
        assert [r.value for r in delivered] == [v for p, v in values if p == partition]
        assert all(r.topic == topic for r in delivered)


def test_a_record_larger_than_the_producer_takes_is_refused_at_once(world: World) -> None:
    topic = world.cluster.topic()
    producer = world.producer(**{"message.max.bytes": 10_000})
    with pytest.raises(BackendException) as refused:
        producer.produce(topic, key=b"k", value=b"v" * 20_000)
    assert refused.value.error.code == ErrorCode.MSG_SIZE_TOO_LARGE


def test_a_record_larger_than_the_topic_takes_is_reported_too_large(world: World) -> None:
    topic = world.cluster.topic(max_message_bytes=2_000)
    # Not compressed into something small: the broker sees its size.
    reports = produce(world.producer(**{"compression.type": "none"}), topic, [(0, b"v" * 5_000)])
    ((error, _),) = reports
    assert error is not None
    assert error.code == ErrorCode.MSG_SIZE_TOO_LARGE


def test_a_full_local_queue_refuses_with_buffer_error(world: World) -> None:
    topic = world.cluster.topic()
    producer = world.producer(**{"queue.buffering.max.messages": 2, "linger.ms": 1000})
    producer.produce(topic, key=None, value=b"1")
    producer.produce(topic, key=None, value=b"2")
    with pytest.raises(BufferError):
        producer.produce(topic, key=None, value=b"3")
    assert producer.flush(30) == 0


# -- consuming -----------------------------------------------------------------------------------


def test_records_come_back_whole_and_in_order_within_each_partition(world: World) -> None:
    topic = world.cluster.topic(partitions=3)
    values = [(n % 3, f"{n}".encode()) for n in range(30)]
    produce(world.producer(), topic, values)
    member = world.member(group(), topic)
    world.drive([member], lambda: len(member.records) == 30, "read 30 records")
    for partition, records in by_partition(member.records).items():
        assert [r.offset for r in records] == list(range(10))
        assert [r.value for r in records] == [v for p, v in values if p == partition]
        first = records[0]
        value = first.value or b""
        assert (first.topic, first.key) == (topic, b"key-" + value)
        assert first.headers == (("trace", b"t-" + value), ("empty", None))
        assert first.error is None


def test_a_commit_is_what_committed_reads_and_where_the_next_member_starts(world: World) -> None:
    topic = world.cluster.topic()
    produce(world.producer(), topic, [(0, f"{n}".encode()) for n in range(10)])
    name = group()
    first = world.member(name, topic)
    world.drive([first], lambda: len(first.records) == 10, "read 10 records")
    first.consumer.commit({(topic, 0): 4})
    assert first.consumer.committed([(topic, 0)], 30) == {(topic, 0): 4}
    first.consumer.close()
    second = world.member(name, topic)
    world.drive([second], lambda: len(second.records) == 6, "read from the committed offset")
    assert [r.offset for r in second.records] == list(range(4, 10))


def test_nothing_committed_reads_as_none(world: World) -> None:
    topic = world.cluster.topic()
    member = world.member(group(), topic)
    assert member.consumer.committed([(topic, 0)], 30) == {(topic, 0): None}


def test_position_and_watermarks(world: World) -> None:
    topic = world.cluster.topic()
    member = world.member(group(), topic)
    world.drive([member], lambda: bool(member.assigned()), "assigned")
    assert member.consumer.position([(topic, 0)]) == {(topic, 0): None}, "nothing read yet"
    produce(world.producer(), topic, [(0, f"{n}".encode()) for n in range(5)])
    world.drive([member], lambda: len(member.records) == 5, "read 5 records")
    assert member.consumer.position([(topic, 0)]) == {(topic, 0): 5}
    assert member.consumer.get_watermark_offsets((topic, 0), timeout=30, cached=False) == (0, 5)
    cached = member.consumer.get_watermark_offsets((topic, 0), timeout=30, cached=True)
    assert cached == (0, 5), "the fetch that returned the records saw the end"


def test_a_paused_partition_is_not_fetched_until_resumed(world: World) -> None:
    topic = world.cluster.topic(partitions=2)
    producer = world.producer()
    member = world.member(group(), topic)
    world.drive([member], lambda: len(member.assigned()) == 2, "assigned both partitions")
    member.consumer.pause([(topic, 0)])
    produce(producer, topic, [(0, b"p0"), (1, b"p1")])
    world.drive([member], lambda: len(member.records) >= 1, "read the unpaused partition")
    assert [r.value for r in member.records] == [b"p1"]
    member.consumer.resume([(topic, 0)])
    world.drive([member], lambda: len(member.records) == 2, "read the resumed partition")
    assert [r.value for r in member.records] == [b"p1", b"p0"]


# -- groups --------------------------------------------------------------------------------------


def test_a_second_member_takes_what_the_first_revoked_from_its_committed_offset(
    world: World,
) -> None:
    topic = world.cluster.topic(partitions=2)
    produce(world.producer(), topic, [(p, f"{p}-{n}".encode()) for n in range(3) for p in (0, 1)])
    name = group()

    def commit_one(member: Member, partitions: list[TopicPartitionKey]) -> None:
        # As ddsync does: the revoked partitions' final commit, inside the callback.
        member.consumer.commit({tp: 1 for tp in partitions})

    first = world.member(name, topic, on_revoke=commit_one)
    world.drive([first], lambda: len(first.records) == 6, "the first member read everything")
    assert first.callbacks("assign") == [[(topic, 0), (topic, 1)]]

    second = world.member(name, topic)
    world.drive([first, second], lambda: bool(second.assigned()), "the second member assigned")
    (revoked,) = first.callbacks("revoke")
    (taken,) = second.callbacks("assign")
    assert revoked == taken, "incremental: exactly the partitions that move, once"
    assert len(taken) == 1
    assert first.assigned() == {(topic, 0), (topic, 1)} - set(taken)
    assert first.callbacks("lost") == []
    world.drive([first, second], lambda: len(second.records) == 2, "the second member read")
    assert {r.offset for r in second.records} == {1, 2}, "from the revoke's commit"
    assert {r.tp for r in second.records} == set(taken)


def test_a_member_leaving_revokes_through_its_callback_and_the_rest_take_over(
    world: World,
) -> None:
    topic = world.cluster.topic(partitions=2)
    name = group()
    first = world.member(name, topic)
    world.drive([first], lambda: len(first.assigned()) == 2, "the first member assigned")
    second = world.member(name, topic)
    world.drive([first, second], lambda: bool(second.assigned()), "the second member assigned")
    (held,) = second.callbacks("assign")
    second.consumer.close()
    assert second.callbacks("revoke") == [held], "close revokes through the callback"
    world.drive([first], lambda: len(first.assigned()) == 2, "the first member took over")
    assert first.callbacks("assign")[-1] == held


def test_a_member_that_stopped_polling_loses_everything_then_joins_again(world: World) -> None:
    topic = world.cluster.topic(partitions=2)
    member = world.member(
        group(),
        topic,
        config={"session.timeout.ms": 6000, "max.poll.interval.ms": MAX_POLL_INTERVAL_MS},
    )
    world.drive([member], lambda: len(member.assigned()) == 2, "assigned both partitions")
    world.cluster.expire(member)
    world.drive([member], lambda: len(member.callbacks("assign")) == 2, "assigned again")
    both = [(topic, 0), (topic, 1)]
    assert [(kind, sorted(tps)) for kind, tps in member.events if tps] == [
        ("assign", both),
        ("lost", both),
        ("assign", both),
    ], "lost, never revoked: another member may hold them already"


def test_error_codes_are_librdkafkas() -> None:
    error = confluent_kafka.KafkaError
    assert {code.name: code.value for code in ErrorCode} == {
        "FATAL": error._FATAL,
        "PURGE_QUEUE": error._PURGE_QUEUE,
        "PARTITION_EOF": error._PARTITION_EOF,
        "UNKNOWN_TOPIC": error._UNKNOWN_TOPIC,
        "UNKNOWN_TOPIC_OR_PART": error.UNKNOWN_TOPIC_OR_PART,
        "MSG_SIZE_TOO_LARGE": error.MSG_SIZE_TOO_LARGE,
        "RECORD_LIST_TOO_LARGE": error.RECORD_LIST_TOO_LARGE,
        "UNKNOWN_MEMBER_ID": error.UNKNOWN_MEMBER_ID,
    }
