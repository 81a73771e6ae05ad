"""Ingest: consumed records into windows, or to the dead-letter topic; and when to stop taking.

:meth:`Ingest.take` opens each record in the ledger (:mod:`stream.core.ledger`) with its
original, decodes and validates it (:mod:`stream.core.events`), and adds it to its address
book's window (:mod:`stream.core.windowing`); batches the windows emit go to the dispatcher. A
record that cannot be read (its headers, its value, an unknown connector) is dead-lettered
with its reason at once (:mod:`stream.core.reasons`). :meth:`Ingest.update_pause` decides
whether the consumer pauses; it is asked after every intake and on every tick.

Contract:

* A record the ledger refuses (not ours any more, or a re-delivery of one already open after a
  seek) is skipped; every other record is open until it is final.
* A record whose headers cannot be read (``headers`` None: confluent-kafka could not decode
  them) is dead-lettered as ``invalid_event``, like one whose value is not a valid transition,
  rather than raised into the consumer thread.
* Past ``batching.max_buffered_records`` open records the consumer pauses and what is buffered
  in windows is flushed at once; it resumes below half of that. It pauses too while the
  dead-letter producer's queue is full.
* The dead-letter circuit breaker opening pauses consumption for good (log line + metric); the
  process stays up so that its metrics can be scraped and an operator can look. It opens when
  most input is bad, when most contacts sent fail, or when every connector is suspended
  (:mod:`stream.pipeline.outcomes`). Records after it opened are left unopened and uncommitted:
  a restart reads them again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from stream.core.breaker import DeadLetterBreaker
from stream.core.events import InvalidRecord, decode_transition
from stream.core.ledger import Ledger, Original
from stream.core.offsets import RecordRef
from stream.core.reasons import Reason
from stream.core.windowing import Trigger, Windower
from stream.kafka.backend import KafkaRecord
from stream.observability.metrics import Metrics
from stream.pipeline.dispatch import Dispatcher, Failure
from stream.pipeline.outcomes import OutputTopics
from stream.settings import ConnectorSettings

__all__ = ["UNREADABLE_HEADERS", "Ingest"]

log = logging.getLogger(__name__)

UNREADABLE_HEADERS = "the record's headers cannot be read (a header name is not UTF-8)"


class Ingest:
    """Consumed records into windows or dead letters, and the consumer's pause."""

    def __init__(
        self,
        connectors: Mapping[str, ConnectorSettings],
        max_buffered_records: int,
        *,
        ledger: Ledger,
        windows: Windower,
        dispatcher: Dispatcher,
        dead_letters: OutputTopics,
        breaker: DeadLetterBreaker,
        metrics: Metrics,
    ) -> None:
        self._connectors = connectors
        self._cap = max_buffered_records
        self._ledger = ledger
        self._windows = windows
        self._dispatcher = dispatcher
        self._dead_letters = dead_letters
        self._breaker = breaker
        self._metrics = metrics
        self._consumed_counters: dict[str, Any] = {}
        self._pause = False
        self._circuit_logged = False

    @property
    def paused(self) -> bool:
        """Whether the consumer should pause, as :meth:`update_pause` last decided."""
        return self._pause

    def take(self, records: Sequence[KafkaRecord]) -> None:
        """Open, decode and window ``records`` (in partition order), then decide the pause."""
        connectors = self._connectors
        breaker = self._breaker
        open_record = self._ledger.open
        add = self._windows.add
        submit = self._dispatcher.submit
        # Counted per call, not per record: labels() and inc() take locks, and once per record
        # they showed in profiles. A scrape sees the count when the call returns.
        counts: dict[str, int] = {}
        try:
            for record in records:
                if breaker.is_open:
                    # Leave the rest unopened and uncommitted: a restart reads them again.
                    break
                topic = record.topic
                ref = RecordRef(topic, record.partition, record.offset)
                headers = record.headers
                original: Original = (record.key, record.value, headers or ())
                if not open_record(ref, original):
                    # Not ours any more, or already being processed (a re-delivery after seek).
                    continue
                counts[topic] = counts.get(topic, 0) + 1
                try:
                    if headers is None:
                        raise InvalidRecord(Reason.INVALID_EVENT, UNREADABLE_HEADERS)
                    transition = decode_transition(original[1], connectors)
                except InvalidRecord as invalid:
                    breaker.decoded(True)
                    self._dead_letters.publish(
                        ref,
                        original,
                        (ref,),
                        Failure(invalid.reason, invalid.reason.value, invalid.detail),
                        connector_id=invalid.connector_id,
                        address_book_id=invalid.address_book_id,
                        event_id=invalid.event_id,
                    )
                    continue
                breaker.decoded(False)
                for batch in add(transition, ref):
                    submit(batch)
        finally:
            for topic, count in counts.items():
                self._consumed_counter(topic).inc(count)
        self.update_pause()

    def update_pause(self) -> None:
        """Decide the consumer's pause: an open breaker, too many open records (whose windows
        are flushed now), or a congested dead-letter producer."""
        open_records = self._ledger.open_records
        cap = self._cap
        outputs = self._dead_letters
        if self._breaker.is_open:
            if not self._circuit_logged:
                log.error(
                    "dead-letter circuit breaker OPEN (%s); consuming stopped. Check the "
                    "configuration and DotDigital, then restart.",
                    self._breaker.describe(),
                )
                self._metrics.circuit_open.set(1)
                self._circuit_logged = True
            self._pause = True
        elif open_records > cap:
            self._pause = True
            # Pausing alone would wait for windows to close (up to window_seconds) when the
            # buffer is spread over many address books; send what is buffered now instead.
            for batch in self._windows.drain(Trigger.PRESSURE):
                self._dispatcher.submit(batch)
        elif outputs.congested:
            # librdkafka's queue is full: more records would only lengthen the output backlog.
            self._pause = True
        elif open_records <= cap // 2:
            self._pause = False

    def _consumed_counter(self, topic: str) -> Any:
        # labels() costs a lock and a dict lookup; once per record it shows in profiles.
        counter = self._consumed_counters.get(topic)
        if counter is None:
            counter = self._consumed_counters[topic] = self._metrics.records_consumed.labels(topic)
        return counter
