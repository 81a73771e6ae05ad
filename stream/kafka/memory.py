"""An in-memory Kafka behind the protocols of :mod:`stream.kafka.backend`, for tests.

:class:`MemoryBroker` is a :class:`~stream.kafka.backend.KafkaBackend`: topics with partitions,
producers with delivery reports, consumer groups with cooperative (incremental) rebalancing,
pause and resume, commits. It keeps to the contract of :mod:`stream.kafka.backend`, checked
against a real broker by ``tests/contract/test_kafka_backend.py``, and adds what only a test
needs: reading a partition's records and a group's offsets and assignment, writing records
directly, failing deliveries, expiring a member.

Contract (beyond :mod:`stream.kafka.backend`'s):

* Deterministic: no threads of its own, no clock, nothing random; timeouts are never waited
  (what is there is returned at once). Safe to call from several threads: one lock guards its
  state, and no callback runs under it.
* A produced record is written, and visible to consumers, when a ``poll`` or ``flush`` of its
  producer serves its delivery report (that is when a real broker has acknowledged it).
  Records without a partition go by key (CRC-32 of the key, as librdkafka's default
  partitioner), or round-robin without a key.
* ``consume`` returns records in the order they were written, across partitions too (Kafka
  promises the order within a partition only).
* Groups: a consumer joins at ``subscribe`` and leaves at ``close``; each ``consume`` first
  serves what changed for it, in this order: partitions lost (its session expired,
  :meth:`MemoryBroker.expire`; it joins again at its next ``consume``), partitions to revoke
  (they move to another member once the callback returned), partitions to assign (free ones
  only: a moved partition is assigned after its previous owner's revoke). The assignment is
  sticky and balanced per topic: a member keeps the highest-numbered of its partitions up to
  its share, and free partitions go to members below their share, in the order they joined
  (so with two partitions, a second member takes partition 0, as librdkafka's cooperative-sticky
  assignor did against Kafka 4.1). A member starts a partition at the group's committed
  offset, else at ``auto.offset.reset`` (``earliest``, or the end).
* ``position`` is unknown until a record of the partition was returned (as librdkafka's);
  ``get_watermark_offsets(cached=True)`` is what the last fetch of the partition saw.
"""

from __future__ import annotations

import itertools
import threading
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.core.offsets import TopicPartitionKey
from stream.kafka.backend import (
    BackendError,
    BackendException,
    DeliveryCallback,
    ErrorCode,
    Header,
    KafkaRecord,
    PartitionsCallback,
)

__all__ = ["MemoryBroker", "MemoryConsumer", "MemoryProducer"]

DEFAULT_MAX_MESSAGE_BYTES = 1_048_588  # the broker's default max.message.bytes
_EARLIEST = frozenset({"earliest", "smallest", "beginning"})


@dataclass
class _Log:
    # (write sequence, record) per offset: the sequence orders records across partitions.
    entries: list[tuple[int, KafkaRecord]] = field(default_factory=list)


@dataclass
class _Topic:
    partitions: list[_Log]
    max_message_bytes: int


@dataclass
class _Member:
    topics: tuple[str, ...]
    consumer: MemoryConsumer


@dataclass
class _Group:
    members: dict[str, _Member] = field(default_factory=dict)  # in the order they joined
    owners: dict[TopicPartitionKey, str] = field(default_factory=dict)
    offsets: dict[TopicPartitionKey, int] = field(default_factory=dict)


class MemoryBroker:
    """One in-memory cluster; make clients with :meth:`consumer` and :meth:`producer`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, _Group] = {}
        self._sequence = itertools.count()
        self._member_ids = itertools.count(1)
        self._failures: dict[str, deque[BackendError]] = {}

    # -- the backend -----------------------------------------------------------------------

    def consumer(self, config: Mapping[str, Any]) -> MemoryConsumer:
        return MemoryConsumer(self, config)

    def producer(self, config: Mapping[str, Any]) -> MemoryProducer:
        return MemoryProducer(self, config)

    # -- what a test sets up and looks at --------------------------------------------------

    def create_topic(
        self, name: str, partitions: int = 1, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        with self._lock:
            if name in self._topics:
                raise ValueError(f"topic {name} exists")
            self._topics[name] = _Topic([_Log() for _ in range(partitions)], max_message_bytes)

    def write(
        self,
        topic: str,
        partition: int,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Sequence[Header] | None = (),
    ) -> KafkaRecord:
        """Append a record as if a producer's delivery had just been acknowledged. ``headers``
        None: a record whose headers cannot be read (a header name that is not UTF-8)."""
        with self._lock:
            return self._append(
                topic, partition, key, value, _headers(headers) if headers is not None else None
            )

    def records(self, topic: str, partition: int) -> list[KafkaRecord]:
        with self._lock:
            return [record for _, record in self._log(topic, partition).entries]

    def committed(self, group: str, partition: TopicPartitionKey) -> int | None:
        with self._lock:
            found = self._groups.get(group)
            return None if found is None else found.offsets.get(partition)

    def members(self, group: str) -> list[str]:
        """Member ids, in the order they joined."""
        with self._lock:
            found = self._groups.get(group)
            return [] if found is None else list(found.members)

    def assignment(self, group: str) -> dict[str, list[TopicPartitionKey]]:
        """Who holds which partition, as the group sees it (a revoke under way still holds)."""
        with self._lock:
            found = self._groups.get(group)
            held: dict[str, list[TopicPartitionKey]] = {}
            if found is not None:
                for partition, member in sorted(found.owners.items()):
                    held.setdefault(member, []).append(partition)
            return held

    def expire(self, group: str, member: str) -> None:
        """The member's session timed out: the group takes its partitions at once (the others
        may take them at their next poll); the member learns it at its next poll, through its
        ``on_lost`` callback, and joins again at the poll after that."""
        with self._lock:
            found = self._groups[group]
            gone = found.members.pop(member)
            found.owners = {tp: m for tp, m in found.owners.items() if m != member}
            gone.consumer._expired = True

    def fail_deliveries(self, topic: str, error: BackendError, count: int = 1) -> None:
        """The next ``count`` records produced to ``topic`` are refused with ``error``: their
        delivery reports carry it, and nothing is written."""
        with self._lock:
            self._failures.setdefault(topic, deque()).extend([error] * count)

    # -- internals, under the lock ---------------------------------------------------------

    def _log(self, topic: str, partition: int) -> _Log:
        found = self._topics.get(topic)
        if found is None or not 0 <= partition < len(found.partitions):
            raise BackendException(
                BackendError(
                    ErrorCode.UNKNOWN_TOPIC_OR_PART, f"unknown partition {topic}[{partition}]"
                )
            )
        return found.partitions[partition]

    def _append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[Header, ...] | None,
    ) -> KafkaRecord:
        log = self._log(topic, partition)
        record = KafkaRecord(topic, partition, len(log.entries), key, value, headers)
        log.entries.append((next(self._sequence), record))
        return record

    def _group(self, name: str) -> _Group:
        return self._groups.setdefault(name, _Group())

    def _partitions(self, topic: str) -> list[TopicPartitionKey]:
        found = self._topics.get(topic)
        return [] if found is None else [(topic, p) for p in range(len(found.partitions))]

    def _target(self, group: _Group) -> dict[str, set[TopicPartitionKey]]:
        """Who should hold what: balanced per topic, sticky (see the module's contract)."""
        target: dict[str, set[TopicPartitionKey]] = {member: set() for member in group.members}
        topics = sorted({t for m in group.members.values() for t in m.topics})
        for topic in topics:
            subscribers = [name for name, m in group.members.items() if topic in m.topics]
            partitions = self._partitions(topic)
            if not subscribers or not partitions:
                continue
            base, extra = divmod(len(partitions), len(subscribers))
            held = {
                name: [tp for tp in partitions if group.owners.get(tp) == name]
                for name in subscribers
            }
            # The larger shares go to those holding most (stable: then in joining order).
            by_holding = sorted(subscribers, key=lambda name: -len(held[name]))
            share = {name: base + (i < extra) for i, name in enumerate(by_holding)}
            for name in subscribers:
                if share[name]:
                    target[name].update(held[name][-share[name] :])
            taken = set().union(*target.values())
            free = [tp for tp in partitions if tp not in taken]
            for name in subscribers:
                mine = sum(1 for tp in target[name] if tp[0] == topic)
                while mine < share[name] and free:
                    target[name].add(free.pop(0))
                    mine += 1
        return target


class MemoryConsumer:
    def __init__(self, broker: MemoryBroker, config: Mapping[str, Any]) -> None:
        if not config.get("group.id"):
            raise BackendException(BackendError(-186, "group.id must be set"))  # _INVALID_ARG
        self._broker = broker
        self._group_name = str(config["group.id"])
        self._earliest = str(config.get("auto.offset.reset", "latest")).lower() in _EARLIEST
        self._client_id = str(config.get("client.id") or "member")
        self._member: str | None = None
        self._topics: tuple[str, ...] = ()
        self._callbacks: tuple[PartitionsCallback, PartitionsCallback, PartitionsCallback] | None
        self._callbacks = None
        self._cursors: dict[TopicPartitionKey, int | None] = {}  # assigned: next offset to fetch
        self._positions: dict[TopicPartitionKey, int] = {}
        self._watermarks: dict[TopicPartitionKey, tuple[int, int]] = {}
        self._paused: set[TopicPartitionKey] = set()
        self._expired = False
        self._closed = False
        self._assigned_in_callback = False

    @property
    def group_id(self) -> str:
        return self._group_name

    @property
    def member_id(self) -> str | None:
        """Its id in the group (:meth:`MemoryBroker.members`), once subscribed."""
        return self._member

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
    ) -> None:
        with self._broker._lock:
            self._check_open()
            self._topics = tuple(topics)
            self._callbacks = (on_assign, on_revoke, on_lost)
            self._join()

    def consume(self, num_messages: int, timeout: float) -> list[KafkaRecord]:
        self._check_open()
        if self._callbacks is not None:
            self._rebalance(*self._callbacks)
        return self._fetch(num_messages)

    def incremental_assign(self, partitions: Sequence[TopicPartitionKey]) -> None:
        with self._broker._lock:
            self._check_open()
            self._assigned_in_callback = True
            for tp in partitions:
                self._cursors.setdefault(tp, None)

    def assignment(self) -> list[TopicPartitionKey]:
        with self._broker._lock:
            self._check_open()
            return sorted(self._cursors)

    def pause(self, partitions: Sequence[TopicPartitionKey]) -> None:
        with self._broker._lock:
            self._check_open()
            # librdkafka ignores partitions not assigned, and keeps a pause across a revoke.
            self._paused.update(tp for tp in partitions if tp in self._cursors)

    def resume(self, partitions: Sequence[TopicPartitionKey]) -> None:
        with self._broker._lock:
            self._check_open()
            self._paused.difference_update(partitions)

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        with self._broker._lock:
            self._check_open()
            group = self._broker._groups.get(self._group_name)
            if group is None or self._member not in group.members:
                raise BackendException(
                    BackendError(ErrorCode.UNKNOWN_MEMBER_ID, "Broker: Unknown member")
                )
            group.offsets.update(offsets)

    def committed(
        self, partitions: Sequence[TopicPartitionKey], timeout: float
    ) -> dict[TopicPartitionKey, int | None]:
        with self._broker._lock:
            self._check_open()
            offsets = self._broker._group(self._group_name).offsets
            return {tp: offsets.get(tp) for tp in partitions}

    def position(
        self, partitions: Sequence[TopicPartitionKey]
    ) -> dict[TopicPartitionKey, int | None]:
        with self._broker._lock:
            self._check_open()
            return {tp: self._positions.get(tp) for tp in partitions}

    def get_watermark_offsets(
        self, partition: TopicPartitionKey, *, timeout: float, cached: bool
    ) -> tuple[int, int] | None:
        with self._broker._lock:
            self._check_open()
            if cached:
                return self._watermarks.get(partition)
            return (0, len(self._broker._log(*partition).entries))

    def close(self) -> None:
        if self._closed:
            return
        with self._broker._lock:
            member = self._member
            group = self._broker._groups.get(self._group_name)
            held = sorted(self._cursors) if group is not None and member in group.members else []
        if held and self._callbacks is not None:
            self._callbacks[1](held)
        with self._broker._lock:
            if group is not None and member is not None and member in group.members:
                del group.members[member]
                group.owners = {tp: m for tp, m in group.owners.items() if m != member}
            self._cursors.clear()
            self._closed = True

    # -- internals -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Consumer closed")

    def _join(self) -> None:
        if self._member is None or self._expired:
            self._member = f"{self._client_id}-{next(self._broker._member_ids)}"
        self._expired = False
        group = self._broker._group(self._group_name)
        group.members[self._member] = _Member(self._topics, self)

    def _rebalance(
        self,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
    ) -> None:
        """Serve what changed for this member, callbacks outside the lock (they may block on
        other threads that use the broker)."""
        broker = self._broker
        with broker._lock:
            lost = sorted(self._cursors) if self._expired else []
            rejoin = self._expired
        if rejoin:
            if lost:
                on_lost(lost)
            with broker._lock:
                self._unassign(lost)
                self._join()
            return  # the new generation's assignment comes with the next poll
        with broker._lock:
            group = broker._group(self._group_name)
            target = broker._target(group)[self._member or ""]
            revoke = sorted(
                tp for tp, m in group.owners.items() if m == self._member and tp not in target
            )
        if revoke:
            on_revoke(revoke)
            with broker._lock:
                self._unassign(revoke)
                group = broker._group(self._group_name)
                for tp in revoke:
                    if group.owners.get(tp) == self._member:
                        del group.owners[tp]
                target = broker._target(group)[self._member or ""]
        with broker._lock:
            group = broker._group(self._group_name)
            assign = sorted(tp for tp in target if tp not in group.owners)
            for tp in assign:
                group.owners[tp] = self._member or ""
            self._assigned_in_callback = False
        if assign:
            on_assign(assign)
            if not self._assigned_in_callback:
                self.incremental_assign(assign)

    def _unassign(self, partitions: Sequence[TopicPartitionKey]) -> None:
        for tp in partitions:
            self._cursors.pop(tp, None)
            self._positions.pop(tp, None)
            self._watermarks.pop(tp, None)

    def _fetch(self, num_messages: int) -> list[KafkaRecord]:
        broker = self._broker
        with broker._lock:
            offsets = broker._group(self._group_name).offsets
            found: list[tuple[int, KafkaRecord]] = []
            for tp in sorted(self._cursors):
                if tp in self._paused:
                    continue
                entries = broker._log(*tp).entries
                cursor = self._cursors[tp]
                if cursor is None:
                    cursor = offsets.get(tp, 0 if self._earliest else len(entries))
                    self._cursors[tp] = cursor
                self._watermarks[tp] = (0, len(entries))
                found.extend(entries[cursor : cursor + num_messages])
            found.sort(key=lambda entry: entry[0])
            records = [record for _, record in found[:num_messages]]
            for record in records:
                self._cursors[record.tp] = self._positions[record.tp] = record.offset + 1
            return records


@dataclass
class _Produced:
    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    on_delivery: DeliveryCallback | None


class MemoryProducer:
    """Takes ``queue.buffering.max.messages`` (default 100000) and ``message.max.bytes``
    (default 1000000) from its config, as librdkafka does; ignores the rest."""

    def __init__(self, broker: MemoryBroker, config: Mapping[str, Any]) -> None:
        self._broker = broker
        self._capacity = int(config.get("queue.buffering.max.messages", 100_000))
        self._max_bytes = int(config.get("message.max.bytes", 1_000_000))
        self._queue: deque[_Produced] = deque()
        self._purged: deque[_Produced] = deque()
        self._round_robin = itertools.count()

    def __len__(self) -> int:
        return len(self._queue) + len(self._purged)

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[Header] | None = None,
        partition: int | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        normalised = _headers(headers or ())
        size = len(key or b"") + len(value or b"")
        size += sum(len(name) + len(v or b"") for name, v in normalised)
        if size > self._max_bytes:
            raise BackendException(
                BackendError(ErrorCode.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
            )
        with self._broker._lock:
            if len(self._queue) >= self._capacity:
                raise BufferError("Local: Queue full")
            self._queue.append(_Produced(topic, partition, key, value, normalised, on_delivery))

    def poll(self, timeout: float) -> int:
        return self._deliver()

    def flush(self, timeout: float) -> int:
        self._deliver()
        return len(self)

    def purge(self) -> None:
        with self._broker._lock:
            self._purged.extend(self._queue)
            self._queue.clear()

    def _deliver(self) -> int:
        broker = self._broker
        reports: list[tuple[DeliveryCallback | None, BackendError | None, KafkaRecord]] = []
        with broker._lock:
            purged = BackendError(ErrorCode.PURGE_QUEUE, "Local: Purged in queue")
            while self._purged:
                item = self._purged.popleft()
                reports.append((item.on_delivery, purged, _unwritten(item)))
            while self._queue:
                item = self._queue.popleft()
                error, record = self._write(item)
                reports.append((item.on_delivery, error, record))
        for callback, error, record in reports:
            if callback is not None:
                callback(error, record)
        return len(reports)

    def _write(self, item: _Produced) -> tuple[BackendError | None, KafkaRecord]:
        broker = self._broker
        topic = broker._topics.get(item.topic)
        if topic is None:
            return _UNKNOWN_TOPIC, _unwritten(item)
        failures = broker._failures.get(item.topic)
        if failures:
            return failures.popleft(), _unwritten(item)
        size = len(item.key or b"") + len(item.value or b"")
        if size > topic.max_message_bytes:
            return _TOO_LARGE, _unwritten(item)
        partition = item.partition
        if partition is None:
            count = len(topic.partitions)
            partition = (
                next(self._round_robin) % count
                if item.key is None
                else zlib.crc32(item.key) % count
            )
        try:
            return None, broker._append(item.topic, partition, item.key, item.value, item.headers)
        except BackendException as exc:
            return exc.error, _unwritten(item)


_UNKNOWN_TOPIC = BackendError(ErrorCode.UNKNOWN_TOPIC_OR_PART, "Broker: Unknown topic or partition")
_TOO_LARGE = BackendError(ErrorCode.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")


def _headers(headers: Sequence[Header]) -> tuple[Header, ...]:
    """As a consumer reads them back: values as bytes."""
    return tuple(
        (name, value.encode("utf-8") if isinstance(value, str) else value)
        for name, value in headers
    )


def _unwritten(item: _Produced) -> KafkaRecord:
    return KafkaRecord(
        item.topic,
        -1 if item.partition is None else item.partition,
        -1,
        item.key,
        item.value,
        item.headers,
    )
