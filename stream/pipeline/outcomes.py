"""What becomes of the records sent: dispatch outcomes and dead letters, into the ledger.

:class:`Outcomes` is the dispatcher's listener
(:class:`~stream.pipeline.dispatch.DispatchListener`): each contact's outcome settles its records
in the ledger (:mod:`stream.core.ledger`), goes to the dead-letter topic, counts for the circuit
breaker, or is left to the new owner of a revoked partition. :class:`DeadLetters` builds a
dead-letter record from a failure and the source record's original, publishes it, and settles
what it covers once the broker acknowledged it.

Contract:

* A record is final, and settled, when its contact was synced, when a newer record of its
  contact that is final supersedes it, or when its dead letter (or one covering it) is
  acknowledged by the broker: committed offsets never pass a record before that.
* A contact that failed for good is dead-lettered under its winning record, the letter covering
  every record of the contact; unless its winning record is no longer held (its partition was
  revoked meanwhile: its new owner reads it again), then it is dropped. A dropped contact's
  records on partitions still ours are settled (superseded by the new owner's read), those of
  partitions being revoked are not.
* Failures count for the dead-letter circuit breaker when they are decided, not when their
  letters are acknowledged: the breaker must open before a whole batch's worth of records has
  gone to the dead-letter topic. Once it is open, a failed contact is left open (uncommitted)
  rather than added to the dead letters: a restart after the fix retries it.
* A connector suspended for an account-level failure (:mod:`stream.core.suspensions`) does not hold
  the others: its contacts are dead-lettered (``auth_failed`` for those that met the failure,
  ``connector_suspended`` afterwards) and committed, and its failures stay out of the breaker's
  delivery measure. Only when every connector is suspended does the breaker open, so that one
  connector's deployment keeps its records uncommitted until an operator fixes the account.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from stream.clock import Clock
from stream.core.breaker import DeadLetterBreaker
from stream.core.deadletter_format import DeadLetter, replay_count_of, replayed_reason_of
from stream.core.ledger import Ledger, Original
from stream.core.offsets import RecordRef
from stream.core.reasons import Reason
from stream.core.suspensions import Suspensions
from stream.core.windowing import Batch, Contact
from stream.dotdigital import Operation
from stream.kafka.deadletters import DeadLetterPublisher
from stream.observability.metrics import Metrics
from stream.pipeline.dispatch import Failure

__all__ = ["DeadLetters", "Outcomes"]


class DeadLetters:
    """Dead letters from failures, through the publisher that :meth:`Pipeline.open
    <stream.pipeline.processor.Pipeline.open>` makes; acknowledged, they settle what they
    cover."""

    def __init__(self, ledger: Ledger, clock: Clock, metrics: Metrics) -> None:
        self._ledger = ledger
        self._clock = clock
        self._metrics = metrics
        self.publisher: DeadLetterPublisher | None = None

    def publish(
        self,
        ref: RecordRef,
        original: Original,
        covers: Sequence[RecordRef],
        failure: Failure,
        *,
        connector_id: str | None,
        address_book_id: int | None,
        event_id: str | None,
    ) -> None:
        """The dead letter of the source record ``ref`` (``original``), standing for
        ``covers``."""
        assert self.publisher is not None
        key, value, headers = original
        letter = DeadLetter(
            reason=failure.reason,
            error_code=failure.code or failure.reason.value,
            error_message=failure.message,
            source_topic=ref.topic,
            source_partition=ref.partition,
            source_offset=ref.offset,
            connector_id=connector_id,
            address_book_id=address_book_id,
            event_id=event_id,
            attempts=failure.attempts,
            failed_at=datetime.fromtimestamp(self._clock.time(), UTC),
            replay_count=replay_count_of(headers),
        )
        self.publisher.publish(ref, key, value, headers, letter, covers)

    def acknowledged(
        self, ref: RecordRef, letter: DeadLetter, covers: tuple[RecordRef, ...]
    ) -> None:
        """The broker acknowledged a dead-letter record: it and what it covers are final (the
        publisher's delivery callback)."""
        self._metrics.records_dead_lettered.labels(letter.reason.value).inc()
        for covered in covers:
            self._ledger.settle(covered)

    async def drain(self, deadline: float) -> None:
        """Serve delivery reports until nothing is pending or ``deadline`` (monotonic) passed."""
        publisher = self.publisher
        assert publisher is not None
        while publisher.pending and self._clock.monotonic() < deadline:
            publisher.poll(0.05)
            await asyncio.sleep(0)


class Outcomes:
    """The dispatcher's listener: each contact's outcome, into the ledger, the dead letters and
    the breaker."""

    def __init__(
        self,
        ledger: Ledger,
        dead_letters: DeadLetters,
        breaker: DeadLetterBreaker,
        suspensions: Suspensions,
        metrics: Metrics,
    ) -> None:
        self._ledger = ledger
        self._dead_letters = dead_letters
        self._breaker = breaker
        self._suspensions = suspensions
        self._metrics = metrics

    def synced(self, batch: Batch, operation: Operation, contacts: Sequence[Contact]) -> None:
        count = 0
        for contact in contacts:
            self._breaker.delivered(False)
            for ref in contact.refs:
                self._ledger.settle(ref)
                count += 1
        self._metrics.records_synced.labels(batch.connector_id, operation).inc(count)

    def failed(self, batch: Batch, contact: Contact, failure: Failure) -> None:
        if self._suspensions.all_suspended:
            self._breaker.trip(f"every connector is suspended: {self._suspensions.describe()}")
        if self._breaker.is_open:
            # Consuming stopped for an operator to look: leave the record open (uncommitted)
            # rather than add to the dead letters; a restart after the fix retries it.
            return
        original = self._ledger.original(contact.winner)
        if original is None or not self.holds(contact):
            # The winner's partition was revoked meanwhile: its new owner reads it again.
            self.dropped(batch, contact)
            return
        self._dead_letters.publish(
            contact.winner,
            original,
            contact.refs,
            failure,
            connector_id=batch.connector_id,
            address_book_id=batch.address_book_id,
            event_id=contact.event_id,
        )
        # Counted when decided, not when acknowledged: the breaker must open before a whole
        # batch's worth of records has gone to the dead-letter topic. A suspended connector's
        # failures are its own (isolated), not a sign that the whole stream is failing.
        if self._suspensions.of(batch.connector_id) is None:
            self._breaker.delivered(True)

    def holds(self, contact: Contact) -> bool:
        return self._ledger.holds(contact.winner)

    def released(self, contact: Contact) -> bool:
        original = self._ledger.original(contact.winner)
        return original is not None and (replayed_reason_of(original[2]) is Reason.REMOVAL_GUARD)

    def dropped(self, batch: Batch, contact: Contact) -> None:
        # The new owner of the winner's partition reads it again; older records of the contact
        # on partitions still ours are superseded by that read (as when a revoke forgets
        # buffered records: stream.pipeline.rebalance).
        self._ledger.settle_kept(contact.refs)
