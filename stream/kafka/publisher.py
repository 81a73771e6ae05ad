"""Producing records that something waits for: the broker's acknowledgement, never a loss.

The dead-letter topic and the outcomes topic share one rule: the source records a published
record stands for stay open (uncommitted) until the broker acknowledged it. This module is that
mechanism, once; :mod:`stream.kafka.deadletters` and :mod:`stream.kafka.outcomes` say what they
publish.

Contract:

* ``on_acknowledged`` of a :meth:`AcknowledgedPublisher.publish` is called exactly once, when the
  broker acknowledged that record (acks=all, idempotent producer), from :meth:`poll`.
* Nothing here blocks the caller: a record librdkafka's local queue has no room for waits in a
  backlog, in order, until :meth:`poll` finds room; :attr:`congested` says a backlog exists, for
  the caller to stop taking in more records.
* A record too large for the producer or the topic (``message.max.bytes``) is handed to the
  publish's ``shrink``, once, and the smaller record it returns is published instead; without a
  ``shrink`` it is treated as any other refusal.
* A record the producer refuses otherwise or the broker does not acknowledge is tried again with
  exponential backoff, up to a minute apart, and counted by ``on_error``. What it stands for
  stays open meanwhile: visible and alerting, never lost, never a crash loop.
* A fatal producer error (the idempotent producer can no longer guarantee order or
  exactly-once) replaces the producer with a new one, which publishes again every record not
  yet acknowledged, in their order: one may reach the topic twice, none is lost.
* Records are handed to the producer in the order they were published (retries aside), so two
  records of one key reach their partition in that order.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from stream.clock import Clock, SystemClock
from stream.kafka.backend import (
    BackendError,
    BackendException,
    ErrorCode,
    Header,
    KafkaRecord,
    Producer,
)
from stream.kafka.confluent import ConfluentProducer

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 60.0
# The producer's own check (message.max.bytes), and the broker's (the topic's max.message.bytes).
_TOO_LARGE = frozenset({ErrorCode.MSG_SIZE_TOO_LARGE, ErrorCode.RECORD_LIST_TOO_LARGE})


@dataclass(frozen=True)
class Outgoing:
    """One record to publish; ``about`` names what it stands for and ``partition`` the source
    partition it comes from, in logs."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[Header]
    about: str
    partition: str | None = None


Shrink = Callable[[Outgoing, str], Outgoing]
"""What to publish instead of a record too large for the topic, given the producer's reason."""


@dataclass
class _Item:
    record: Outgoing
    on_acknowledged: Callable[[], None]
    shrink: Shrink | None
    serial: int
    failures: int = 0
    retry_at: float = 0.0


class AcknowledgedPublisher:
    """Publishes to one topic and reports each record's acknowledgement. See the contract."""

    def __init__(
        self,
        producer_config: Mapping[str, Any],
        topic: str,
        *,
        on_error: Callable[[], None],
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
        self.topic = topic
        self._on_error = on_error
        self._clock: Clock = clock or SystemClock()
        self._serials = itertools.count()
        self._backlog: deque[_Item] = deque()  # not yet taken by librdkafka (queue full)
        self._waiting: list[_Item] = []  # refused, tried again at retry_at
        self._in_flight: dict[int, _Item] = {}  # taken by the producer, not yet acknowledged
        self._fatal: str | None = None
        self.pending = 0

    @property
    def congested(self) -> bool:
        """Records wait for room in librdkafka's queue: taking in more only makes it longer."""
        return bool(self._backlog)

    def publish(
        self,
        record: Outgoing,
        on_acknowledged: Callable[[], None],
        *,
        shrink: Shrink | None = None,
    ) -> None:
        self.pending += 1
        item = _Item(record, on_acknowledged, shrink, next(self._serials))
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

    def drain(self, timeout: float) -> int:
        """Serve reports, the backlog and retries until every record published was acknowledged
        or ``timeout`` seconds passed (a command's end); how many are still not acknowledged."""
        deadline = self._clock.monotonic() + timeout
        while self.pending and self._clock.monotonic() < deadline:
            self.poll(0.1)
        return self.pending

    def _hand(self, item: _Item) -> bool:
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
                item.on_acknowledged()
            elif error.code in _TOO_LARGE and item.shrink is not None:
                # The topic takes less than the producer (its max.message.bytes).
                self._backlog.appendleft(_shrunk(item, error.reason))
            else:
                self._failed(item, error.reason)

        record = item.record
        try:
            self._producer.produce(
                self.topic,
                key=record.key,
                value=record.value,
                headers=list(record.headers),
                on_delivery=delivered,
            )
        except BufferError:
            return False
        except BackendException as exc:
            error = exc.error
            if _is_fatal(error):
                self._fatal = self._fatal or error.reason
                return False
            if error.code in _TOO_LARGE and item.shrink is not None:
                return self._hand(_shrunk(item, error.reason))
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
        self._on_error()
        log.error(
            "the producer of %s failed fatally (%s); replaced it and publishing again the "
            "%d records it had not acknowledged (some may reach the topic twice)",
            self.topic,
            why,
            len(unacknowledged),
        )

    def _failed(self, item: _Item, why: str) -> None:
        item.failures += 1
        backoff = min(MAX_BACKOFF_SECONDS, 2.0 ** (item.failures - 1))
        item.retry_at = self._clock.monotonic() + backoff
        self._waiting.append(item)
        self._on_error()
        log.error(
            "topic %s did not take the record for %s (%s); it stays open, trying again in %.0f s",
            self.topic,
            item.record.about,
            why,
            backoff,
            extra={} if item.record.partition is None else {"partition": item.record.partition},
        )


def _is_fatal(error: BackendError) -> bool:
    return error.fatal or error.code == ErrorCode.FATAL


def _shrunk(item: _Item, why: str) -> _Item:
    assert item.shrink is not None
    return replace(item, record=item.shrink(item.record, why), shrink=None)
