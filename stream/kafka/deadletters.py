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
* Producing is :class:`~stream.kafka.publisher.AcknowledgedPublisher`'s, and keeps its contract:
  never blocking (:attr:`DeadLetterPublisher.congested` says a backlog exists), refusals tried
  again with backoff and counted in ``ddsync_dead_letter_errors_total``, a fatal producer
  replaced without a loss. A letter not acknowledged stays open, so its partition's commits stop
  at it: visible and alerting, never lost, never a crash loop.
* Delivery reports, the backlog and retries are served by :meth:`poll`, in the caller's thread.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stream.clock import Clock
from stream.core.deadletter_format import H_VALUE_OMITTED, HEADER_PREFIX, DeadLetter, truncate_utf8
from stream.core.offsets import RecordRef
from stream.kafka.backend import Header, Producer
from stream.kafka.confluent import ConfluentProducer
from stream.kafka.publisher import AcknowledgedPublisher, Outgoing
from stream.observability.metrics import Metrics

log = logging.getLogger(__name__)

Headers = Sequence[Header]
# What of a too-large record is kept: a key this short, and free-text headers cut to this.
KEPT_KEY_BYTES = 256
KEPT_TEXT_BYTES = 256


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
        self._publisher = AcknowledgedPublisher(
            producer_config,
            topic,
            on_error=metrics.dead_letter_errors.inc,
            clock=clock,
            producer_factory=producer_factory,
        )
        self._on_delivered = on_delivered

    @property
    def pending(self) -> int:
        """Letters published and not yet acknowledged."""
        return self._publisher.pending

    @property
    def congested(self) -> bool:
        """Records wait for room in librdkafka's queue: taking in more only makes it longer."""
        return self._publisher.congested

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
        covered = tuple(covers) or (ref,)
        sent = [letter]

        def shrink(record: Outgoing, why: str) -> Outgoing:
            sent[0], smaller = _shrink(record, letter, why)
            return smaller

        self._publisher.publish(
            Outgoing(key, value, headers, str(ref), f"{ref.topic}[{ref.partition}]"),
            lambda: self._on_delivered(ref, sent[0], covered),
            shrink=shrink,
        )

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports, the backlog and due retries; returns how many reports were
        served. Blocks for at most ``timeout`` (librdkafka's poll), never more."""
        return self._publisher.poll(timeout)


def _shrink(record: Outgoing, letter: DeadLetter, why: str) -> tuple[DeadLetter, Outgoing]:
    """``record`` without what made it too large, saying so; its source coordinates are kept."""
    key_size = len(record.key or b"")
    value_size = len(record.value or b"")
    source_headers = [(k, v) for k, v in record.headers if not k.startswith(HEADER_PREFIX)]
    letter = dataclasses.replace(
        letter,
        event_id=_cut(letter.event_id),
        connector_id=_cut(letter.connector_id),
    )
    note = (
        f"too large for the dead-letter topic ({why}): value of {value_size} bytes, "
        f"{len(source_headers)} source headers{'' if key_size <= KEPT_KEY_BYTES else ' and key'}"
        f" of {key_size} bytes left out; the original is at the ddsync.source_* coordinates"
    )
    log.warning(
        "dead letter for %s is %s", record.about, note, extra={"partition": record.partition}
    )
    return letter, dataclasses.replace(
        record,
        key=record.key if key_size <= KEPT_KEY_BYTES else None,
        value=None,
        headers=[*letter.to_headers(), (H_VALUE_OMITTED, note.encode("utf-8"))],
    )


def _cut(text: str | None) -> str | None:
    return None if text is None else truncate_utf8(text, KEPT_TEXT_BYTES)
