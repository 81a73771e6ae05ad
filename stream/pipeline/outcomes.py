"""What becomes of the records sent: outcomes and dead letters, into the ledger.

:class:`Outcomes` is the dispatcher's listener
(:class:`~stream.pipeline.dispatch.DispatchListener`): each contact's outcome goes to the
outcomes topic, to the dead-letter topic, counts for the circuit breaker, or is left to the new
owner of a revoked partition. :class:`OutputTopics` publishes to both topics (a dead letter is
built from the failure and the source record's original) and settles the records in the ledger
(:mod:`stream.core.ledger`) once the broker acknowledged every publication covering them.

Contract:

* A record is final, and settled, when its contact's outcome is known and acknowledged (synced,
  or dead-lettered with its letter acknowledged), or when a newer record of its contact that is
  final supersedes it: committed offsets never pass a record before that.
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
* **The outcomes topic** (when on): each contact's final outcome is published there too
  (:mod:`stream.core.outcome_format`), at the moment it is decided, so a contact's outcomes
  reach the topic in the order they were decided. A record is final only once every
  publication covering it is acknowledged: its outcome, and its dead letter if it has one.
  Dropped contacts get no outcome (the new owner of their partition decides it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from stream.clock import Clock
from stream.core.breaker import DeadLetterBreaker
from stream.core.deadletter_format import DeadLetter, replay_count_of, replayed_reason_of
from stream.core.ledger import Ledger, Original
from stream.core.offsets import RecordRef
from stream.core.outcome_format import Outcome, Reported, State
from stream.core.reasons import Reason
from stream.core.suspensions import Suspensions
from stream.core.windowing import Batch, Contact
from stream.dotdigital import Operation
from stream.kafka.deadletters import DeadLetterPublisher
from stream.kafka.outcomes import OutcomePublisher
from stream.observability.metrics import Metrics
from stream.pipeline.dispatch import Failure, Sent

__all__ = ["Outcomes", "OutputTopics"]


class OutputTopics:
    """The dead-letter and outcomes topics, through the publishers that :meth:`Pipeline.open
    <stream.pipeline.processor.Pipeline.open>` makes (no outcomes publisher when the topic is
    off); a record is settled once every publication covering it is acknowledged."""

    def __init__(self, ledger: Ledger, clock: Clock, metrics: Metrics) -> None:
        self._ledger = ledger
        self._clock = clock
        self._metrics = metrics
        self.publisher: DeadLetterPublisher | None = None
        self.outcomes: OutcomePublisher | None = None
        # Records covered by more than one publication, with how many are not yet acknowledged
        # (a record not here waits for one).
        self._awaiting: dict[RecordRef, int] = {}

    @property
    def congested(self) -> bool:
        """A producer's local queue is full: taking in more records only lengthens it."""
        return any(p is not None and p.congested for p in (self.publisher, self.outcomes))

    @property
    def pending(self) -> int:
        return sum(p.pending for p in (self.publisher, self.outcomes) if p is not None)

    def poll(self) -> None:
        """Serve both producers' delivery reports, backlogs and retries (never blocks)."""
        for publisher in (self.publisher, self.outcomes):
            if publisher is not None:
                publisher.poll(0)

    def record(
        self,
        batch: Batch,
        contact: Contact,
        state: State,
        reported: Reported,
        *,
        lettered: bool,
        decided_at: datetime,
        reason: str | None = None,
        contact_id: int | None = None,
    ) -> None:
        """Publish ``contact``'s outcome in ``batch`` for its records; with ``lettered`` they
        also wait for their dead letter's acknowledgement. When the outcomes topic is off,
        nothing is built: the records are settled at once (or by their dead letter)."""
        covers = contact.refs
        if self.outcomes is None:
            if not lettered:
                self._settle(covers)
            return
        if lettered:
            for ref in covers:
                self._awaiting[ref] = 2
        outcome = Outcome(
            connector=batch.connector_id,
            address_book_id=batch.address_book_id,
            email=contact.email,
            action=contact.action.value,
            state=state,
            reported=reported,
            decided_at=decided_at,
            reason=reason,
            contact_id=contact_id,
            source_topic=contact.winner.topic,
            source_partition=contact.winner.partition,
            source_offset=contact.winner.offset,
            event_id=contact.event_id,
            occurred_at=contact.transition.occurred_at,
        )
        self.outcomes.publish(outcome, lambda: self._settle(covers))

    def now(self) -> datetime:
        """The moment of a decision, as outcomes state it."""
        return datetime.fromtimestamp(self._clock.time(), UTC)

    def _settle(self, refs: Sequence[RecordRef]) -> None:
        for ref in refs:
            left = self._awaiting.pop(ref, 1) - 1
            if left > 0:
                self._awaiting[ref] = left
            else:
                self._ledger.settle(ref)

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
        self._settle(covers)

    async def drain(self, deadline: float) -> None:
        """Serve delivery reports until nothing is pending or ``deadline`` (monotonic) passed."""
        assert self.publisher is not None
        while self.pending and self._clock.monotonic() < deadline:
            self.publisher.poll(0.05 if self.outcomes is None else 0.025)
            if self.outcomes is not None:
                self.outcomes.poll(0.025)
            await asyncio.sleep(0)


class Outcomes:
    """The dispatcher's listener: each contact's outcome, into the ledger, the dead letters and
    the breaker."""

    def __init__(
        self,
        ledger: Ledger,
        dead_letters: OutputTopics,
        breaker: DeadLetterBreaker,
        suspensions: Suspensions,
        metrics: Metrics,
    ) -> None:
        self._ledger = ledger
        self._dead_letters = dead_letters
        self._breaker = breaker
        self._suspensions = suspensions
        self._metrics = metrics

    def synced(
        self,
        batch: Batch,
        operation: Operation,
        contacts: Sequence[Contact],
        sent: Mapping[str, Sent],
    ) -> None:
        count = planned = 0
        outputs = self._dead_letters
        decided_at = outputs.now()
        for contact in contacts:
            self._breaker.delivered(False)
            result = sent.get(contact.email, NOT_SENT)
            outputs.record(
                batch,
                contact,
                _state_of(operation, result),
                result.reported,
                lettered=False,
                decided_at=decided_at,
                contact_id=result.contact_id,
            )
            if result.planned:
                planned += len(contact.refs)
            else:
                count += len(contact.refs)
        if count:
            self._metrics.records_synced.labels(batch.connector_id, operation).inc(count)
        if planned:
            self._metrics.records_planned.labels(batch.connector_id, operation).inc(planned)

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
        outputs = self._dead_letters
        # The outcome first: decided now, it reaches its topic in the order of decisions.
        outputs.record(
            batch,
            contact,
            State.DEAD_LETTERED,
            Reported.REJECTED if failure.reason is Reason.CONTACT_REJECTED else Reported.NOT_SENT,
            lettered=True,
            decided_at=outputs.now(),
            reason=failure.reason.value,
        )
        outputs.publish(
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


NOT_SENT = Sent(None, Reported.NOT_SENT)


def _state_of(operation: Operation, sent: Sent) -> State:
    if sent.planned:
        return State.WOULD_ADD if operation == "add" else State.WOULD_REMOVE
    return State.MEMBER if operation == "add" else State.NOT_MEMBER
