"""The consumer loop (:class:`stream.kafka.source.KafkaSource`) on an in-memory broker and a fake
clock, turn by turn: when it commits, what a revoke and a loss commit, and that a pause holds
every partition, those assigned meanwhile included, and ends for all of them."""

from __future__ import annotations

from collections.abc import Mapping

from stream.clock import FakeClock
from stream.core.lag import PartitionProgress
from stream.core.offsets import TopicPartitionKey
from stream.kafka.backend import KafkaRecord
from stream.kafka.memory import MemoryBroker
from stream.kafka.source import KafkaSource
from stream.observability.metrics import Metrics
from stream.settings import KafkaSettings

P0: TopicPartitionKey = ("t", 0)
P1: TopicPartitionKey = ("t", 1)
SETTINGS = KafkaSettings(bootstrap_servers="memory:9092", topics=("t",), group_id="g")


class Handler:
    """The pipeline's side of the contract, recorded."""

    def __init__(self) -> None:
        self.records: list[KafkaRecord] = []
        self.events: list[tuple[str, list[TopicPartitionKey]]] = []
        self.offsets: dict[TopicPartitionKey, int] = {}  # what committable() offers
        self.final_on_revoke: dict[TopicPartitionKey, int] = {}
        self.confirmed: list[dict[TopicPartitionKey, int]] = []
        self.pause = False

    def on_records(self, records: list[KafkaRecord]) -> None:
        self.records.extend(records)

    def on_assign(self, partitions: list[TopicPartitionKey]) -> None:
        self.events.append(("assign", partitions))

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> Mapping[TopicPartitionKey, int]:
        self.events.append(("revoke", partitions))
        return {tp: self.final_on_revoke[tp] for tp in partitions if tp in self.final_on_revoke}

    def on_lost(self, partitions: list[TopicPartitionKey]) -> None:
        self.events.append(("lost", partitions))

    def committable(self) -> Mapping[TopicPartitionKey, int]:
        return dict(self.offsets)

    def committed(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        self.confirmed.append(dict(offsets))

    def should_pause(self) -> bool:
        return self.pause

    def progress(self) -> Mapping[TopicPartitionKey, PartitionProgress]:
        return {}


class World:
    def __init__(self) -> None:
        self.broker = MemoryBroker()
        self.broker.create_topic("t", partitions=2)
        self.clock = FakeClock()
        self.handler = Handler()
        self.source = self.member(self.handler)

    def member(self, handler: Handler) -> KafkaSource:
        source = KafkaSource(
            SETTINGS,
            handler,
            Metrics(),
            commit_interval=1.0,
            consumer_factory=self.broker.consumer,
            clock=self.clock,
        )
        source.subscribe()
        return source

    def committed(self, tp: TopicPartitionKey) -> int | None:
        return self.broker.committed("g", tp)


def test_offsets_are_committed_once_the_interval_passed_and_confirmed() -> None:
    world = World()
    world.source.poll()
    world.handler.offsets = {P0: 3}
    world.source.poll()
    assert world.committed(P0) is None, "not before the commit interval"
    world.clock.advance(1.0)
    world.source.poll()
    assert world.committed(P0) == 3
    assert world.handler.confirmed == [{P0: 3}]


def test_a_revoke_commits_what_the_handler_made_final_before_the_partition_moves() -> None:
    world = World()
    world.source.poll()
    assert world.handler.events == [("assign", [P0, P1])]
    world.handler.final_on_revoke = {P0: 7, P1: 9}
    newcomer = Handler()
    other = world.member(newcomer)
    other.poll()  # joins; partition 0 is still the first member's
    assert newcomer.events == []
    world.source.poll()
    assert world.handler.events[1:] == [("revoke", [P0])]
    assert world.committed(P0) == 7
    assert world.committed(P1) is None, "a kept partition waits for the interval"
    other.poll()
    assert newcomer.events == [("assign", [P0])]


def test_a_lost_partition_commits_nothing() -> None:
    world = World()
    world.source.poll()
    world.handler.final_on_revoke = {P0: 7}
    (member,) = world.broker.members("g")
    world.broker.expire("g", member)
    world.source.poll()
    assert world.handler.events == [("assign", [P0, P1]), ("lost", [P0, P1])]
    assert world.committed(P0) is None


def test_partitions_assigned_while_paused_are_paused_before_any_fetch() -> None:
    world = World()
    world.handler.pause = True
    world.broker.write("t", 0, value=b"held")
    world.broker.write("t", 1, value=b"held too")
    world.source.poll()
    world.source.poll()
    assert world.handler.events == [("assign", [P0, P1])]
    assert world.handler.records == []
    world.handler.pause = False
    world.source.poll()
    assert [r.value for r in world.handler.records] == [b"held", b"held too"]


def test_a_partition_revoked_while_paused_comes_back_resumed_once_the_pause_ended() -> None:
    # librdkafka keeps a partition's pause across its revoke: the source resumes it explicitly.
    world = World()
    world.source.poll()
    world.handler.pause = True
    world.source.poll()
    other = world.member(Handler())
    other.poll()
    world.source.poll()  # partition 0 revoked, paused
    other.poll()  # and taken
    world.handler.pause = False
    world.source.poll()
    other.commit_and_close({})  # leaves the group
    world.source.poll()  # takes partition 0 back
    assert world.handler.events[-1] == ("assign", [P0])
    world.broker.write("t", 0, value=b"read")
    world.source.poll()
    assert [r.value for r in world.handler.records] == [b"read"]
