"""Publishing records to the dead-letter topic.

Contract:

* A dead-letter record is the source record's key and value, byte for byte, with the source's
  own headers (minus any earlier ``ddsync.*`` ones) and the :class:`DeadLetter` headers.
* A record larger than the producer or the topic takes (``message.max.bytes``) is written
  without its value and its source headers, with its key only when short, its free-text
  ``ddsync.*`` headers shortened, and a ``ddsync.value_omitted`` header saying so: the
  ``ddsync.source_*`` headers still say where the original is. Nothing ever stays open for size.
* ``on_delivered(ref, letter, covers)`` is called once per :meth:`DeadLetterPublisher.publish`,
  when the broker acknowledged that record (acks=all, idempotent producer); only then are the
  source record and the records it ``covers`` final. What a letter covers travels with it, so
  the same source record published twice (read again after its partition came back) keeps both
  letters' bookkeeping.
* Nothing here blocks the caller: a record librdkafka's local queue has no room for waits in a
  backlog, in order, until :meth:`poll` finds room; :attr:`DeadLetterPublisher.congested` says
  a backlog exists, for the caller to stop taking in more records.
* A record the producer refuses otherwise or the broker does not acknowledge is tried again with
  exponential backoff, up to a minute apart, and counted in ``ddsync_dead_letter_errors_total``.
  It stays open meanwhile, so its partition's commits stop at it: visible and alerting, but
  never lost and never a crash loop.
* A fatal producer error (the idempotent producer can no longer guarantee order or
  exactly-once) replaces the producer with a new one, which publishes again every record not
  yet acknowledged: one may reach the topic twice, none is lost.
* Delivery reports, the backlog and retries are served by :meth:`poll`, in the caller's thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stream.clock import Clock, SystemClock
from stream.core.deadletter_format import H_VALUE_OMITTED, HEADER_PREFIX, DeadLetter, truncate_utf8
from stream.core.offsets import RecordRef
from stream.kafka.backend import (
    BackendError,
    BackendException,
    ErrorCode,
    Header,
    KafkaRecord,
    Producer,
)
from stream.kafka.confluent import ConfluentProducer
from stream.observability.metrics import Metrics

log = logging.getLogger(__name__)

Headers = Sequence[Header]
MAX_BACKOFF_SECONDS = 60.0
# What of a too-large record is kept: a key this short, and free-text headers cut to this.
KEPT_KEY_BYTES = 256
KEPT_TEXT_BYTES = 256
# The producer's own check (message.max.bytes), and the broker's (the topic's max.message.bytes).
_TOO_LARGE = frozenset({ErrorCode.MSG_SIZE_TOO_LARGE, ErrorCode.RECORD_LIST_TOO_LARGE})


@dataclass
class _Letter:
    ref: RecordRef
    covers: tuple[RecordRef, ...]
    key: bytes | None
    value: bytes | None
    headers: list[Header]
    letter: DeadLetter
    serial: int = 0
    failures: int = 0
    retry_at: float = 0.0
    shrunk: bool = False


class DeadLetterPublisher:
    def __init__(
        self,
        producer_config: Mapping[str, Any],
        topic: str,
        on_delivered: Callable[[RecordRef, DeadLetter, tuple[RecordRef, ...]], None],
        metrics: Metrics,
        *,
        clock: Clock | None = None,
        producer_factory: Callable[[dict[str, Any]], Producer] = ConfluentProducer,
    ) -> None:
        """``producer_config``: from :func:`stream.kafka.client_config.producer_config`;
        ``producer_factory`` makes a producer of it (again after a fatal error)."""
        self._config = dict(producer_config)
        self._new_producer = producer_factory
        self._producer = producer_factory(self._config)
        # Delivery reports of a producer given up on are ignored: its records were republished.
        self._generation = 0
        self._topic = topic
        self._on_delivered = on_delivered
        self._metrics = metrics
        self._clock: Clock = clock or SystemClock()
        self._serials = itertools.count()
        self._backlog: deque[_Letter] = deque()  # not yet taken by librdkafka (queue full)
        self._waiting: list[_Letter] = []  # refused, tried again at retry_at
        self._in_flight: dict[int, _Letter] = {}  # taken by the producer, not yet acknowledged
        self._fatal: str | None = None
        self.pending = 0

    @property
    def congested(self) -> bool:
        """Records wait for room in librdkafka's queue: taking in more only makes it longer."""
        return bool(self._backlog)

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
        headers: list[Header] = [
            (k, v) for k, v in (source_headers or ()) if not k.startswith(HEADER_PREFIX)
        ]
        headers.extend(letter.to_headers())
        self.pending += 1
        item = _Letter(
            ref, tuple(covers) or (ref,), key, value, headers, letter, next(self._serials)
        )
        if self._backlog or self._fatal is not None or not self._hand(item):
            self._backlog.append(item)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports, the backlog and due retries; returns how many reports were
        served. Blocks for at most ``timeout`` (librdkafka's poll), never more."""
        served: int = self._producer.poll(timeout)
        if self._fatal is not None:
            self._recreate()
        if self._waiting:
            now = self._clock.monotonic()
            due = [item for item in self._waiting if item.retry_at <= now]
            if due:
                self._waiting = [item for item in self._waiting if item.retry_at > now]
                self._backlog.extend(due)
        while self._backlog and self._fatal is None:
            if not self._hand(self._backlog[0]):
                break  # still no room: the next poll tries again
            self._backlog.popleft()
        return served

    def _hand(self, item: _Letter) -> bool:
        """Give ``item`` to the producer; False when its local queue has no room (not taken).
        A refusal is handled here (shrunk, retried later, or kept for a new producer)."""
        generation = self._generation

        def delivered(error: BackendError | None, _record: KafkaRecord) -> None:
            if generation != self._generation:
                return
            if error is not None and _is_fatal(error):
                self._fatal = self._fatal or error.reason
                return  # stays in flight: republished by the next producer
            self._in_flight.pop(item.serial, None)
            if error is None:
                self.pending -= 1
                self._on_delivered(item.ref, item.letter, item.covers)
            elif error.code in _TOO_LARGE and not item.shrunk:
                # The topic takes less than the producer (its max.message.bytes).
                self._backlog.appendleft(_shrink(item, error.reason))
            else:
                self._failed(item, error.reason)

        try:
            self._producer.produce(
                self._topic,
                key=item.key,
                value=item.value,
                headers=item.headers,
                on_delivery=delivered,
            )
        except BufferError:
            return False
        except BackendException as exc:
            error = exc.error
            if _is_fatal(error):
                self._fatal = self._fatal or error.reason
                return False
            if error.code in _TOO_LARGE and not item.shrunk:
                return self._hand(_shrink(item, error.reason))
            self._failed(item, error.reason)
            return True
        self._in_flight[item.serial] = item
        return True

    def _recreate(self) -> None:
        """Replace a producer that hit a fatal error; what it held goes first in the backlog."""
        why, self._fatal = self._fatal, None
        unacknowledged = sorted(self._in_flight.values(), key=lambda item: item.serial)
        self._in_flight.clear()
        self._generation += 1
        old, self._producer = self._producer, self._new_producer(self._config)
        # Its reports would come to nothing (old generation); purged, it closes quickly.
        with contextlib.suppress(BackendException, RuntimeError):
            old.purge()
        self._backlog.extendleft(reversed(unacknowledged))
        self._metrics.dead_letter_errors.inc()
        log.error(
            "the dead-letter producer failed fatally (%s); replaced it and publishing again the "
            "%d records it had not acknowledged (some may reach %s twice)",
            why,
            len(unacknowledged),
            self._topic,
        )

    def _failed(self, item: _Letter, why: str) -> None:
        item.failures += 1
        backoff = min(MAX_BACKOFF_SECONDS, 2.0 ** (item.failures - 1))
        item.retry_at = self._clock.monotonic() + backoff
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


def _is_fatal(error: BackendError) -> bool:
    return error.fatal or error.code == ErrorCode.FATAL


def _shrink(item: _Letter, why: str) -> _Letter:
    """``item`` without what made it too large, saying so; its source coordinates are kept."""
    key_size = len(item.key or b"")
    value_size = len(item.value or b"")
    source_headers = [(k, v) for k, v in item.headers if not k.startswith(HEADER_PREFIX)]
    letter = dataclasses.replace(
        item.letter,
        event_id=_cut(item.letter.event_id),
        connector_id=_cut(item.letter.connector_id),
    )
    note = (
        f"too large for the dead-letter topic ({why}): value of {value_size} bytes, "
        f"{len(source_headers)} source headers{'' if key_size <= KEPT_KEY_BYTES else ' and key'}"
        f" of {key_size} bytes left out; the original is at the ddsync.source_* coordinates"
    )
    log.warning(
        "dead letter for %s is %s",
        item.ref,
        note,
        extra={"partition": f"{item.ref.topic}[{item.ref.partition}]"},
    )
    return dataclasses.replace(
        item,
        key=item.key if key_size <= KEPT_KEY_BYTES else None,
        value=None,
        headers=[*letter.to_headers(), (H_VALUE_OMITTED, note.encode("utf-8"))],
        letter=letter,
        shrunk=True,
    )


def _cut(text: str | None) -> str | None:
    return None if text is None else truncate_utf8(text, KEPT_TEXT_BYTES)
