"""What ddsync uses of a Kafka client, as protocols: the seam between ddsync and Kafka.

:mod:`stream.kafka.confluent` implements them over confluent-kafka (what ddsync runs on),
:mod:`stream.kafka.memory` in memory (tests). The pipeline, its consumer thread and the
dead-letter publisher take them as factories. One contract suite
(``tests/contract/test_kafka_backend.py``) runs over both implementations, so that the
in-memory broker cannot drift from what a real one does.

Contract, for every implementation:

* A consumed or delivered record is a :class:`KafkaRecord`, ddsync's own immutable type, never a
  client's object. Its ``headers`` are ``None`` when they cannot be read (a header name that is
  not UTF-8): bad input to dead-letter, not a reason for a consumer thread to fail.
* Partitions are :data:`~stream.core.offsets.TopicPartitionKey` pairs and offsets plain ints;
  an offset that is not known (librdkafka's negative logical offsets) is ``None``.
* Rebalance callbacks run inside :meth:`Consumer.consume`, in the caller's thread, as librdkafka
  serves them, with the partitions that change hands. Rebalances are incremental (cooperative):
  a revoke names only the partitions that move. ``on_assign`` may call
  :meth:`Consumer.incremental_assign` itself (to pause what it takes before any fetch); else the
  partitions are assigned when it returns, and revoked or lost ones are unassigned when their
  callback returns. ``on_lost`` replaces ``on_revoke`` when the partitions may already belong to
  another member (no commit for them may succeed). :meth:`Consumer.close` revokes what is still
  assigned through ``on_revoke`` before leaving the group.
* Delivery callbacks run inside :meth:`Producer.poll` or :meth:`Producer.flush`, in the caller's
  thread, once per produced record, in produce order within a partition.
* A call the client or the broker refuses raises :class:`BackendException` carrying a
  :class:`BackendError`; :meth:`Producer.produce` raises :class:`BufferError` when the local queue
  has no room (the record was not taken).
* Timeouts are upper bounds: an implementation with nothing to wait for returns at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple, Protocol

from stream.core.offsets import TopicPartitionKey

Header = tuple[str, str | bytes | None]
PartitionsCallback = Callable[[list[TopicPartitionKey]], None]


class ErrorCode(IntEnum):
    """The error codes ddsync tells apart: librdkafka's numbers (negative: the client's own,
    positive: the broker's), so an error of either implementation compares equal to these."""

    FATAL = -150  # the producer can no longer keep its guarantees (idempotence): replace it
    PURGE_QUEUE = -152  # purged before it was sent
    PARTITION_EOF = -191  # reached the end of a partition (not an error)
    UNKNOWN_TOPIC = -188
    UNKNOWN_TOPIC_OR_PART = 3
    MSG_SIZE_TOO_LARGE = 10
    RECORD_LIST_TOO_LARGE = 18
    UNKNOWN_MEMBER_ID = 25  # a commit by a member no longer in the group


@dataclass(frozen=True, slots=True)
class BackendError:
    """An error a Kafka client reported: ``code`` is librdkafka's (see :class:`ErrorCode`)."""

    code: int
    reason: str
    fatal: bool = False

    def __str__(self) -> str:
        return self.reason


class BackendException(Exception):
    """A call the client or the broker refused."""

    def __init__(self, error: BackendError) -> None:
        super().__init__(error)
        self.error = error

    def __str__(self) -> str:
        return str(self.error)


# A NamedTuple rather than a frozen dataclass: one is built per consumed record, and a frozen
# dataclass's __init__ costs about twice as much.
class KafkaRecord(NamedTuple):
    """A consumed or delivered record. ``headers`` is ``None`` when they cannot be read;
    ``timestamp`` is in milliseconds since the epoch, ``None`` when the record has none.
    A record carrying an ``error`` (end of partition, a fetch error) has no key or value, and
    the coordinates the client knew (``""`` and ``-1`` when none)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[Header, ...] | None = ()
    timestamp: int | None = None
    error: BackendError | None = None

    @property
    def tp(self) -> TopicPartitionKey:
        return (self.topic, self.partition)


DeliveryCallback = Callable[[BackendError | None, KafkaRecord], None]


class Consumer(Protocol):
    """A member of one consumer group (its ``group.id``), with manual commits."""

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
    ) -> None: ...

    def consume(self, num_messages: int, timeout: float) -> list[KafkaRecord]:
        """Serve rebalance callbacks, then return up to ``num_messages`` records (and errors)
        of the assigned partitions not paused, in partition order."""
        ...

    def incremental_assign(self, partitions: Sequence[TopicPartitionKey]) -> None: ...

    def assignment(self) -> list[TopicPartitionKey]: ...

    def pause(self, partitions: Sequence[TopicPartitionKey]) -> None: ...

    def resume(self, partitions: Sequence[TopicPartitionKey]) -> None: ...

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Commit ``offsets`` (the next offset to read, per partition) and wait for the broker."""
        ...

    def committed(
        self, partitions: Sequence[TopicPartitionKey], timeout: float
    ) -> dict[TopicPartitionKey, int | None]: ...

    def position(
        self, partitions: Sequence[TopicPartitionKey]
    ) -> dict[TopicPartitionKey, int | None]:
        """The next offset this consumer fetches per partition; ``None`` until known."""
        ...

    def get_watermark_offsets(
        self, partition: TopicPartitionKey, *, timeout: float, cached: bool
    ) -> tuple[int, int] | None:
        """(low, high) of ``partition``; with ``cached``, what the last fetch said, ``None``
        when nothing was fetched yet."""
        ...

    def close(self) -> None: ...


class Producer(Protocol):
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
        """Queue a record; ``partition`` ``None``: the partitioner's choice (by key)."""
        ...

    def poll(self, timeout: float) -> int:
        """Serve delivery callbacks; returns how many."""
        ...

    def flush(self, timeout: float) -> int:
        """Wait for every queued record's delivery; returns how many are still queued."""
        ...

    def purge(self) -> None:
        """Drop what is queued and not yet sent (their reports carry ``PURGE_QUEUE``)."""
        ...


class KafkaBackend(Protocol):
    """Makes the clients: confluent-kafka's (:class:`stream.kafka.confluent.ConfluentBackend`)
    or an in-memory broker's (:class:`stream.kafka.memory.MemoryBroker`). ``config`` is
    librdkafka's (:mod:`stream.kafka.client_config`)."""

    def consumer(self, config: Mapping[str, Any]) -> Consumer: ...

    def producer(self, config: Mapping[str, Any]) -> Producer: ...
