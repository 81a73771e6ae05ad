"""Publishing records to the dead-letter topic.

Contract:

* A dead-letter record is the source record's key and value, byte for byte, with the source's
  own headers (minus any earlier ``ddsync.*`` ones) and the :class:`DeadLetter` headers.
* ``on_delivered(ref, letter)`` is called once the broker acknowledged the record (acks=all,
  idempotent producer); only then is the source record final. A record the broker refused is
  produced again: it stays open (uncommitted) until it is on the topic, so nothing is lost even
  while the dead-letter topic is unreachable.
* Delivery reports are served by :meth:`poll`, in the caller's thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from stream.deadletter_headers import HEADER_PREFIX, DeadLetter
from stream.offsets import RecordRef

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, str | bytes | None]]


class DeadLetterPublisher:
    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        on_delivered: Callable[[RecordRef, DeadLetter], None],
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 20,
            "compression.type": "lz4",
        }
        config.update(producer_config or {})
        self._producer = Producer(config)
        self._topic = topic
        self._on_delivered = on_delivered
        self.pending = 0

    def publish(
        self,
        ref: RecordRef,
        key: bytes | None,
        value: bytes | None,
        source_headers: Headers | None,
        letter: DeadLetter,
    ) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            (k, v) for k, v in (source_headers or ()) if not k.startswith(HEADER_PREFIX)
        ]
        headers.extend(letter.to_headers())
        self._produce(ref, key, value, headers, letter)

    def _produce(
        self,
        ref: RecordRef,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, str | bytes | None]],
        letter: DeadLetter,
    ) -> None:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            self.pending -= 1
            if error is None:
                self._on_delivered(ref, letter)
                return
            log.error(
                "dead-letter topic %s refused the record from %s: %s; producing it again",
                self._topic,
                ref,
                error,
            )
            self._produce(ref, key, value, headers, letter)

        while True:
            try:
                self._producer.produce(
                    self._topic, key=key, value=value, headers=headers, on_delivery=delivered
                )
                break
            except BufferError:
                # The local queue is full: serve delivery reports to make room.
                self._producer.poll(0.1)
        self.pending += 1

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports; returns how many were served."""
        served: int = self._producer.poll(timeout)
        return served

    def flush(self, timeout: float) -> int:
        """Wait for outstanding records; returns how many are still outstanding."""
        remaining: int = self._producer.flush(timeout)
        return remaining
