"""Publishing records to the dead-letter topic.

Contract:

* A dead-letter record is the source record's key and value, byte for byte, with the source's
  own headers (minus any earlier ``ddsync.*`` ones) and the :class:`DeadLetter` headers.
* ``on_delivered(ref, letter, covers)`` is called once per :meth:`DeadLetterPublisher.publish`,
  when the broker acknowledged that record (acks=all, idempotent producer); only then are the
  source record and the records it ``covers`` final. What a letter covers travels with it, so
  the same source record published twice (read again after its partition came back) keeps both
  letters' bookkeeping.
* A record the producer refuses (synchronously, e.g. larger than ``message.max.bytes``) or the
  broker does not acknowledge is tried again with exponential backoff, up to a minute apart,
  and counted in ``ddsync_dead_letter_errors_total``. It stays open meanwhile, so its partition's
  commits stop at it: visible and alerting, but never lost and never a crash loop.
* Delivery reports and retries are served by :meth:`poll`, in the caller's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stream.deadletter_headers import HEADER_PREFIX, DeadLetter
from stream.metrics import Metrics
from stream.offsets import RecordRef

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, str | bytes | None]]
MAX_BACKOFF_SECONDS = 60.0


@dataclass
class _Letter:
    ref: RecordRef
    covers: tuple[RecordRef, ...]
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]
    letter: DeadLetter
    failures: int = 0
    retry_at: float = 0.0


class DeadLetterPublisher:
    def __init__(
        self,
        producer_config: Mapping[str, Any],
        topic: str,
        on_delivered: Callable[[RecordRef, DeadLetter, tuple[RecordRef, ...]], None],
        metrics: Metrics,
    ) -> None:
        """``producer_config``: from :func:`stream.kafka_config.producer_config`."""
        self._producer = Producer(dict(producer_config))
        self._topic = topic
        self._on_delivered = on_delivered
        self._metrics = metrics
        self._waiting: list[_Letter] = []
        self.pending = 0

    def publish(
        self,
        ref: RecordRef,
        key: bytes | None,
        value: bytes | None,
        source_headers: Headers | None,
        letter: DeadLetter,
        covers: Sequence[RecordRef] = (),
    ) -> None:
        """Write ``letter`` for the source record ``ref``; once acknowledged, ``ref`` and
        ``covers`` (the records it stands for; ``ref`` alone when empty) are final."""
        headers: list[tuple[str, str | bytes | None]] = [
            (k, v) for k, v in (source_headers or ()) if not k.startswith(HEADER_PREFIX)
        ]
        headers.extend(letter.to_headers())
        self.pending += 1
        self._produce(_Letter(ref, tuple(covers) or (ref,), key, value, headers, letter))

    def _produce(self, item: _Letter) -> None:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                self.pending -= 1
                self._on_delivered(item.ref, item.letter, item.covers)
            else:
                self._failed(item, str(error))

        while True:
            try:
                self._producer.produce(
                    self._topic,
                    key=item.key,
                    value=item.value,
                    headers=item.headers,
                    on_delivery=delivered,
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports to make room.
                self._producer.poll(0.1)
            except KafkaException as exc:
                self._failed(item, str(exc.args[0]))
                return

    def _failed(self, item: _Letter, why: str) -> None:
        item.failures += 1
        backoff = min(MAX_BACKOFF_SECONDS, 2.0 ** (item.failures - 1))
        item.retry_at = time.monotonic() + backoff
        self._waiting.append(item)
        self._metrics.dead_letter_errors.inc()
        log.error(
            "dead-letter topic %s did not take the record from %s (%s); it stays open, "
            "trying again in %.0f s",
            self._topic,
            item.ref,
            why,
            backoff,
            extra={"partition": f"{item.ref.topic}[{item.ref.partition}]"},
        )

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports and due retries; returns how many reports were served."""
        if self._waiting:
            now = time.monotonic()
            due = [item for item in self._waiting if item.retry_at <= now]
            if due:
                self._waiting = [item for item in self._waiting if item.retry_at > now]
                for item in due:
                    self._produce(item)
        served: int = self._producer.poll(timeout)
        return served
