"""The backend protocols of :mod:`stream.kafka.backend` over confluent-kafka: what ddsync runs on.

Thin on purpose: each method is the confluent-kafka call, with ddsync's types in and out
(:class:`~stream.kafka.backend.KafkaRecord` for ``Message``, partition keys for
``TopicPartition``, ``None`` for librdkafka's negative logical offsets) and ``KafkaException``
raised as :class:`~stream.kafka.backend.BackendException`. Semantics are librdkafka's, and the
contract suite (``tests/contract/test_kafka_backend.py``) holds the in-memory broker to them.
"""

from __future__ import annotations

import contextlib
import gc
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import confluent_kafka
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from stream.core.offsets import TopicPartitionKey
from stream.kafka.backend import (
    BackendError,
    BackendException,
    DeliveryCallback,
    Header,
    KafkaRecord,
    PartitionsCallback,
)

__all__ = ["ConfluentBackend", "ConfluentConsumer", "ConfluentProducer", "readable_headers"]

_HEADERS = operator.methodcaller("headers")
_UNKNOWN = -1  # librdkafka's RD_KAFKA_RESP_ERR_UNKNOWN


class ConfluentBackend:
    """Clients of a real cluster: what ddsync uses unless it is given another backend."""

    def consumer(self, config: Mapping[str, Any]) -> ConfluentConsumer:
        return ConfluentConsumer(config)

    def producer(self, config: Mapping[str, Any]) -> ConfluentProducer:
        return ConfluentProducer(config)


class ConfluentConsumer:
    def __init__(self, config: Mapping[str, Any]) -> None:
        with _translated():
            self._consumer = confluent_kafka.Consumer(dict(config))

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
    ) -> None:
        with _translated():
            self._consumer.subscribe(
                list(topics),
                on_assign=_keyed(on_assign),
                on_revoke=_keyed(on_revoke),
                on_lost=_keyed(on_lost),
            )

    def consume(self, num_messages: int, timeout: float) -> list[KafkaRecord]:
        with _translated():
            messages = self._consumer.consume(num_messages, timeout=timeout)
        return [record_of(message) for message in messages]

    def incremental_assign(self, partitions: Sequence[TopicPartitionKey]) -> None:
        with _translated():
            self._consumer.incremental_assign(_tps(partitions))

    def assignment(self) -> list[TopicPartitionKey]:
        with _translated():
            return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def pause(self, partitions: Sequence[TopicPartitionKey]) -> None:
        with _translated():
            self._consumer.pause(_tps(partitions))

    def resume(self, partitions: Sequence[TopicPartitionKey]) -> None:
        with _translated():
            self._consumer.resume(_tps(partitions))

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        with _translated():
            self._consumer.commit(offsets=partitions, asynchronous=False)

    def committed(
        self, partitions: Sequence[TopicPartitionKey], timeout: float
    ) -> dict[TopicPartitionKey, int | None]:
        with _translated():
            return _offsets(self._consumer.committed(_tps(partitions), timeout=timeout))

    def position(
        self, partitions: Sequence[TopicPartitionKey]
    ) -> dict[TopicPartitionKey, int | None]:
        with _translated():
            return _offsets(self._consumer.position(_tps(partitions)))

    def get_watermark_offsets(
        self, partition: TopicPartitionKey, *, timeout: float, cached: bool
    ) -> tuple[int, int] | None:
        with _translated():
            answer = self._consumer.get_watermark_offsets(
                TopicPartition(*partition), timeout=timeout, cached=cached
            )
        # Nothing fetched yet (cached) is librdkafka's (-1001, -1001).
        if answer is None or answer[1] < 0:
            return None
        return (answer[0], answer[1])

    def close(self) -> None:
        with _translated():
            self._consumer.close()


class ConfluentProducer:
    def __init__(self, config: Mapping[str, Any]) -> None:
        with _translated():
            self._producer = confluent_kafka.Producer(dict(config))

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
        where: dict[str, Any] = {} if partition is None else {"partition": partition}
        with _translated():
            self._producer.produce(
                topic,
                key=key,
                value=value,
                headers=None if headers is None else list(headers),
                on_delivery=None if on_delivery is None else _reported(on_delivery),
                **where,
            )

    def poll(self, timeout: float) -> int:
        with _translated():
            served: int = self._producer.poll(timeout)
        return served

    def flush(self, timeout: float) -> int:
        with _translated():
            left: int = self._producer.flush(timeout)
        return left

    def purge(self) -> None:
        with _translated():
            self._producer.purge()


def readable_headers(message: Message) -> tuple[Header, ...] | None:
    """A consumed record's headers, or None when confluent-kafka cannot decode them (a header
    name that is not UTF-8 makes ``headers()`` raise SystemError): such a record is bad input,
    to be dead-lettered, not a reason for the consumer thread to die and read it again.

    Call it once per message: after a failure the binding keeps a list holding a NULL name,
    which a second ``headers()`` returns without error (and touching it crashes the process).
    """
    # The binding returns the list with the UnicodeDecodeError still pending. A plain
    # message.headers() call site, once CPython 3.11 has specialised it, does not check for
    # that: the broken list comes back as if nothing happened and the process crashes later.
    # methodcaller calls through the generic path, which turns the pending error into a
    # SystemError here; no garbage collection meanwhile, which could swallow the error.
    collecting = gc.isenabled()
    gc.disable()
    try:
        headers = _HEADERS(message)
    except Exception:  # whatever the binding raises, the record is unreadable
        return None
    finally:
        if collecting:
            gc.enable()
    if headers is None:
        return ()
    return tuple(headers.items() if isinstance(headers, dict) else headers)


def record_of(message: Message) -> KafkaRecord:
    """``message`` as ddsync's record; its headers are read once (:func:`readable_headers`)."""
    topic = message.topic() or ""
    partition = message.partition()
    offset = message.offset()
    error = message.error()
    if error is not None:
        return KafkaRecord(
            topic,
            -1 if partition is None else partition,
            -1 if offset is None else offset,
            error=error_of(error),
        )
    kind, timestamp = message.timestamp()
    return KafkaRecord(
        topic,
        -1 if partition is None else partition,
        -1 if offset is None else offset,
        message.key(),
        message.value(),
        readable_headers(message),
        None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp,
    )


def error_of(error: object) -> BackendError:
    if isinstance(error, KafkaError):
        return BackendError(error.code(), error.str(), bool(error.fatal()))
    return BackendError(_UNKNOWN, str(error))


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except KafkaException as exc:
        raise BackendException(error_of(exc.args[0] if exc.args else exc)) from exc


def _keyed(callback: PartitionsCallback) -> Callable[[Any, list[TopicPartition]], None]:
    def call(_consumer: Any, partitions: list[TopicPartition]) -> None:
        callback([(tp.topic, tp.partition) for tp in partitions])

    return call


def _reported(on_delivery: DeliveryCallback) -> Callable[[KafkaError | None, Message], None]:
    def call(error: KafkaError | None, message: Message) -> None:
        on_delivery(None if error is None else error_of(error), record_of(message))

    return call


def _tps(partitions: Sequence[TopicPartitionKey]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in partitions]


def _offsets(partitions: list[TopicPartition]) -> dict[TopicPartitionKey, int | None]:
    return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in partitions}
