"""Dispatch: send flushed batches to DotDigital and report each contact's outcome.

Contract:

* Batches of one address book (one connector's book) run one at a time, in the order they were
  submitted, so a removal is never overtaken by an earlier add of the same contact. Different
  address books and connectors run concurrently; each connector's client enforces its own rate
  limits and import cap.
* Within a batch the adds (one v3 import) and the removes (one bulk list removal) concern
  different contacts, so they run concurrently.
* Transient failures are retried by the client until a step has kept failing for
  ``retry_timeout`` seconds; then every contact of that operation fails with
  ``retries_exhausted`` (``auth_failed`` when an attempt was refused with a 401, whatever the
  last one met). Authentication errors are retried too: a password may be being rotated.
  Waiting for the connector's rate limiter is not failing and does not count; a job DotDigital
  accepted is awaited (up to ``retry_timeout`` from its acceptance). One still running then is
  failed, but the client
  holds the address book's next import or removal until that job ends, so a later flush never
  overtakes it.
* Every contact submitted is reported exactly once to the listener: ``synced``, ``failed``, or
  ``dropped``. A bug (an unexpected exception) fails the contacts with ``internal_error``
  rather than leaving them open forever.
* **Only what is still ours is sent.** Each operation of a batch, when it starts (after the
  earlier flushes of its address book) and whenever it is restarted, first drops the contacts
  the listener no longer ``holds`` (their partition was revoked: the new owner reads their
  records again, or a newer record of the contact is theirs: windowing, "Across partitions")
  and reports them ``dropped``. :meth:`Dispatcher.revoke` stops the operations holding contacts
  of given partitions, or contacts no longer held, before their next request (each runs under a
  :class:`~stream.dotdigital.guard.SendGuard`), waits a bounded time for what DotDigital may
  already be doing for them (requests in the air, accepted jobs), and the stopped operations
  start again without those contacts. So once a revoke returned, no DotDigital request carries
  a contact of a revoked partition, except the polls of a job it gave up waiting for.
* **A suspended connector is not called** (:mod:`stream.core.suspensions`). An operation failing for
  an account-level cause (credentials refused through the retry budget, access denied, every
  book of the connector gone) suspends its connector before its contacts are reported; every
  operation of that connector starting afterwards fails its contacts at once with
  ``connector_suspended``, naming the cause. :meth:`Dispatcher.probe` asks DotDigital whether a
  suspended connector's account works again (``GET /v2/account-info``, and for a book-gone
  suspension the books last seen gone) and resumes it on the first success.
* **Shadow mode.** A connector in ``shadow`` mode is never called: each operation of its batches
  reports its contacts ``synced`` at once, as planned (:attr:`Sent.planned`), in the same order
  and under the same revoke rules as a live connector's.
* **The mass-removal guard** (:mod:`stream.core.removal_guard`), when given: before a batch's
  removals are sent, the book's size is asked (``GET /v2/address-books/{id}``); removals the
  guard does not admit fail at once with ``removal_guard`` and are not sent. Contacts the
  listener says an operator ``released`` (replayed after the guard held them) are sent
  whatever the guard says, and count in its window like any removal sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from stream.clock import Clock
from stream.core.offsets import TopicPartitionKey
from stream.core.outcome_format import Reported
from stream.core.reasons import Reason
from stream.core.removal_guard import RemovalGuard
from stream.core.suspensions import Suspension, Suspensions
from stream.core.windowing import Batch, Contact
from stream.dotdigital import (
    AddressBookNotFoundError,
    AuthenticationError,
    DotDigitalClient,
    DotDigitalError,
    ImportFailedError,
    Operation,
    PermanentError,
    RemovalFailedError,
    RetriesExhausted,
    RetryPolicy,
    ThrottledError,
    TransientError,
    WrongRegionError,
)
from stream.dotdigital.guard import Abandoned, SendGuard, guarded
from stream.logs import log_context
from stream.observability.metrics import Metrics

log = logging.getLogger(__name__)

# How long one probe of a suspended connector may take, retries included.
PROBE_SECONDS = 30.0


@dataclass(frozen=True)
class Failure:
    """Why one contact of a batch did not reach DotDigital."""

    reason: Reason
    code: str | None
    message: str
    attempts: int = 1


@dataclass(frozen=True)
class Sent:
    """What DotDigital reported for one contact synced (``planned``: shadow mode, not sent)."""

    contact_id: int | None
    reported: Reported
    planned: bool = False


class Clients(Protocol):
    """Where the dispatcher gets each connector's client: the service's
    :class:`~stream.pipeline.clients.ClientPool`, or a test's stand-in."""

    async def get(
        self, connector_id: str, *, retry: RetryPolicy, deadline: float
    ) -> DotDigitalClient:
        """The connector's client, connecting it first if needed (retried until ``deadline``)."""
        ...


class DispatchListener(Protocol):
    def synced(
        self,
        batch: Batch,
        operation: Operation,
        contacts: Sequence[Contact],
        sent: Mapping[str, Sent],
    ) -> None:
        """These contacts' transitions are in DotDigital (planned only, in shadow mode);
        ``sent`` says what DotDigital reported for each (by the contact's email)."""

    def failed(self, batch: Batch, contact: Contact, failure: Failure) -> None:
        """This contact's transition failed for good; it belongs on the dead-letter topic."""

    def holds(self, contact: Contact) -> bool:
        """Whether this contact's winning record is still ours to send."""

    def released(self, contact: Contact) -> bool:
        """Whether an operator released this contact from the mass-removal guard (replayed it
        after the guard held it)."""

    def dropped(self, batch: Batch, contact: Contact) -> None:
        """This contact was not sent: its winning record is no longer ours."""


class Dispatcher:
    def __init__(
        self,
        clients: Clients,
        listener: DispatchListener,
        *,
        retry_timeout: float,
        clock: Clock,
        metrics: Metrics,
        suspensions: Suspensions,
        removal_guard: RemovalGuard | None = None,
        shadow: Collection[str] = (),
    ) -> None:
        self._clients = clients
        self._shadow = frozenset(shadow)
        self._removal_guard = removal_guard
        self._suspensions = suspensions
        self._listener = listener
        self._clock = clock
        self._metrics = metrics
        self._retry = RetryPolicy(total_seconds=retry_timeout, retry_authentication=True)
        # The last flush of each address book: the next one waits for it.
        self._tails: dict[tuple[str, int], asyncio.Task[None]] = {}
        # Every flush not yet done, with its batch (a revoke waits only for its partitions').
        self._tasks: dict[asyncio.Task[None], Batch] = {}
        # Every operation under way, with the contacts it is sending.
        self._guards: dict[SendGuard, Sequence[Contact]] = {}
        self._probes: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def batches(self) -> list[Batch]:
        """The batches submitted and not yet done, in submission order."""
        return list(self._tasks.values())

    def submit(self, batch: Batch) -> asyncio.Task[None]:
        """Queue ``batch`` behind the earlier flushes of its address book."""
        key = (batch.connector_id, batch.address_book_id)
        self._suspensions.seen(*key)
        previous = self._tails.get(key)
        task = asyncio.create_task(self._after(previous, batch), name=f"flush {key}")
        self._tails[key] = task
        self._tasks[task] = batch
        task.add_done_callback(lambda t: self._finished(key, t))
        self._metrics.batches_flushed.labels(batch.connector_id, batch.trigger.value).inc()
        return task

    async def wait(
        self, seconds: float, partitions: Collection[TopicPartitionKey] | None = None
    ) -> bool:
        """Wait until the submitted batches are done, or ``seconds`` passed; True when they are.

        With ``partitions``, only the batches holding a record of one of them count (a flush
        waits for the earlier flushes of its address book anyway).
        """
        tasks = [
            task
            for task, batch in self._tasks.items()
            if partitions is None or any(ref.tp in partitions for ref in batch.refs())
        ]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=seconds)
        return not pending

    async def revoke(self, partitions: Collection[TopicPartitionKey], seconds: float) -> bool:
        """Stop the operations sending a contact of ``partitions`` before their next request,
        and wait up to ``seconds`` for their requests in the air and accepted jobs to end;
        True when they did. Call it once the listener no longer ``holds`` those contacts: a
        stopped operation starts again without them."""
        guards = self.stop_sending(partitions)
        busy = [asyncio.ensure_future(guard.settled()) for guard in guards if guard.busy]
        if not busy:
            return True
        try:
            _, pending = await asyncio.wait(busy, timeout=seconds)
        finally:
            # Also when the caller stops waiting first (a shutdown cuts the revoke short).
            for waiter in busy:
                waiter.cancel()
        return not pending

    def stop_sending(self, partitions: Collection[TopicPartitionKey]) -> list[SendGuard]:
        """Stop, before their next request, the operations sending a contact of ``partitions``
        or one the listener no longer ``holds`` (a lost partition is not waited for); returns
        their guards."""
        guards = [
            guard
            for guard, contacts in self._guards.items()
            if any(
                contact.winner.tp in partitions or not self._listener.holds(contact)
                for contact in contacts
            )
        ]
        for guard in guards:
            guard.revoke()
        return guards

    async def cancel(self) -> None:
        """Abandon every flush still running. Their contacts get no outcome, so their records
        stay open and uncommitted: the next owner of their partitions reads them again."""
        tasks = [*self._tasks, *self._probes]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def probe(self) -> list[asyncio.Task[None]]:
        """Start a probe of each suspended connector whose probe is due (from the tick)."""
        started = []
        for connector in self._suspensions.due():
            task = asyncio.create_task(self._probe(connector), name=f"probe {connector}")
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)
            started.append(task)
        return started

    async def stop_probes(self) -> None:
        probes = list(self._probes)
        for task in probes:
            task.cancel()
        await asyncio.gather(*probes, return_exceptions=True)

    async def _probe(self, connector: str) -> None:
        ok = False
        # A probe is one question, not a batch: it gives up early and is asked again later.
        policy = RetryPolicy(total_seconds=PROBE_SECONDS)
        try:
            client = await self._clients.get(
                connector, retry=policy, deadline=policy.deadline(self._clock)
            )
            await client.account_info(deadline=policy.deadline(self._clock))
            gone = self._suspensions.gone_books(connector)
            ok = not gone or await _any_exists(client, gone, policy.deadline(self._clock))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure just means: not yet
            log.info("connector %s still suspended: probe failed (%s)", connector, exc)
        resumed = self._suspensions.probed(connector, ok)
        if resumed is not None:
            log.warning(
                "connector %s resumed: DotDigital answers again (suspended since %s for %s)",
                connector,
                _when(resumed.since),
                resumed.cause.value,
            )
            self._metrics.connector_suspended.labels(connector).set(0)

    def _finished(self, key: tuple[str, int], task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if self._tails.get(key) is task:
            del self._tails[key]

    async def _after(self, previous: asyncio.Task[None] | None, batch: Batch) -> None:
        # Every line logged about this flush (the client's too) says which batch it is about.
        with log_context(
            connector=batch.connector_id, address_book=batch.address_book_id, batch=batch.sequence
        ):
            await self._flush(previous, batch)

    async def _flush(self, previous: asyncio.Task[None] | None, batch: Batch) -> None:
        if previous is not None:
            # Order only: the earlier flush reports its own outcome.
            await asyncio.wait([previous])
        started = self._clock.monotonic()
        added, removed = await asyncio.gather(
            self._run(batch, "add", batch.adds),
            self._run(batch, "remove", batch.removes),
        )
        elapsed = self._clock.monotonic() - started
        self._metrics.flush_seconds.labels(batch.connector_id).observe(elapsed)
        log.info(
            "flushed %s/%s #%d (%s): +%d -%d in %.2f s%s",
            batch.connector_id,
            batch.address_book_id,
            batch.sequence,
            batch.trigger.value,
            added,
            removed,
            elapsed,
            ""
            if added + removed == len(batch.adds) + len(batch.removes)
            else " (failures dead-lettered)",
        )

    async def _run(
        self,
        batch: Batch,
        operation: Operation,
        contacts: Sequence[Contact],
    ) -> int:
        """Send one operation of a batch; returns how many contacts it synced."""
        # Contacts reported before the operation was stopped (the removal guard held them) are
        # not sent, nor reported again, when it starts again.
        reported: set[str] = set()
        while True:
            contacts = self._still_ours(batch, [c for c in contacts if c.email not in reported])
            if not contacts:
                return 0
            guard = SendGuard()
            self._guards[guard] = contacts
            try:
                with guarded(guard):
                    return await self._send(batch, operation, contacts, reported)
            except Abandoned:
                log.info(
                    "%s to address book %s (connector %s) stopped: %s",
                    operation,
                    batch.address_book_id,
                    batch.connector_id,
                    "connector suspended"
                    if self._suspensions.of(batch.connector_id)
                    else "partitions revoked",
                )
            finally:
                del self._guards[guard]

    def _still_ours(self, batch: Batch, contacts: Sequence[Contact]) -> Sequence[Contact]:
        kept: list[Contact] = []
        for contact in contacts:
            if self._listener.holds(contact):
                kept.append(contact)
            else:
                self._listener.dropped(batch, contact)
        return kept

    async def _send(
        self,
        batch: Batch,
        operation: Operation,
        contacts: Sequence[Contact],
        reported: set[str],
    ) -> int:
        if batch.connector_id in self._shadow:
            planned = Sent(None, Reported.NOT_SENT, planned=True)
            self._listener.synced(batch, operation, contacts, {c.email: planned for c in contacts})
            return len(contacts)
        suspension = self._suspensions.of(batch.connector_id)
        if suspension is not None:
            failure = _not_sent(suspension)
            self._metrics.dispatch_failures.labels(
                batch.connector_id, operation, failure.reason.value
            ).inc()
            for contact in contacts:
                self._report_failure(batch, contact, failure)
            return 0
        self._metrics.batch_contacts.labels(operation).observe(len(contacts))
        emails = [c.email for c in contacts]
        try:
            client = await self._clients.get(
                batch.connector_id,
                retry=self._retry,
                deadline=self._retry.deadline(self._clock),
            )
            if operation == "add":
                outcome = await client.import_contacts(
                    batch.address_book_id, emails, retry=self._retry
                )
                rejected = outcome.rejected
                sent = {
                    email: Sent(
                        contact_id,
                        Reported.CREATED if email in outcome.created else Reported.UPDATED,
                    )
                    for email, contact_id in outcome.imported.items()
                }
            else:
                contacts = await self._guarded_removals(client, batch, contacts, reported)
                if not contacts:
                    return 0
                emails = [c.email for c in contacts]
                removal = await client.remove_contacts(
                    batch.address_book_id, emails, retry=self._retry
                )
                rejected = removal.rejected
                sent = {
                    email: Sent(
                        client.known_contact_id(email),
                        Reported.NOT_FOUND if email in removal.not_found else Reported.REMOVED,
                    )
                    for email in removal.removed
                }
        except Abandoned:
            raise
        except Exception as exc:  # every contact must get an outcome, whatever went wrong
            failure = _failure_of(exc, operation)
            log.warning(
                "%s of %d contacts to address book %s (connector %s) failed: %s %s",
                operation,
                len(contacts),
                batch.address_book_id,
                batch.connector_id,
                failure.reason.value,
                failure.message,
            )
            self._metrics.dispatch_failures.labels(
                batch.connector_id, operation, failure.reason.value
            ).inc()
            # Before the contacts are reported: the listener decides by the suspensions
            # whether they are dead-lettered or, every connector being suspended, kept open.
            self._suspend_on(batch, failure, account_level=_account_level(exc))
            suspension = self._suspensions.of(batch.connector_id)
            if suspension is not None and failure.reason is Reason.RETRIES_EXHAUSTED:
                # Its budget ran out while its connector's account was failing (say waiting
                # for the connection a refused call held): the account is the cause, and the
                # records must come back with the rest of the connector's on a replay.
                failure = _not_sent(suspension)
            for contact in contacts:
                self._report_failure(batch, contact, failure)
            return 0
        self._suspensions.succeeded(batch.connector_id, batch.address_book_id)
        done = [c for c in contacts if c.email not in rejected]
        if operation == "remove" and self._removal_guard is not None:
            self._removal_guard.sent(batch.key, len(done))
        if done:
            self._listener.synced(batch, operation, done, sent)
        for contact in contacts:
            rejection = rejected.get(contact.email)
            if rejection is not None:
                self._report_failure(
                    batch,
                    contact,
                    Failure(Reason.CONTACT_REJECTED, rejection.failure_code, rejection.description),
                )
        return len(done)

    async def _guarded_removals(
        self,
        client: DotDigitalClient,
        batch: Batch,
        contacts: Sequence[Contact],
        reported: set[str],
    ) -> Sequence[Contact]:
        """The removals the guard lets through; the others are reported ``removal_guard``
        (and added to ``reported``)."""
        guard = self._removal_guard
        if guard is None:
            return contacts
        released: list[Contact] = []
        judged: list[Contact] = []
        for contact in contacts:
            (released if self._listener.released(contact) else judged).append(contact)
        if not judged:
            return contacts
        book = await client.get_address_book(
            batch.address_book_id, deadline=self._retry.deadline(self._clock)
        )
        verdict = guard.admits(batch.key, len(judged), book.contacts)
        if verdict.admitted:
            return contacts
        log.error(
            "address book %s (connector %s): %s; they go to the dead-letter topic as "
            "removal_guard: check the audience, then replay them (ddsync replay --reason "
            "removal_guard) to send them",
            batch.address_book_id,
            batch.connector_id,
            verdict.describe(),
        )
        self._metrics.removals_held.labels(batch.connector_id).inc(len(judged))
        failure = Failure(Reason.REMOVAL_GUARD, Reason.REMOVAL_GUARD.value, verdict.describe())
        for contact in judged:
            reported.add(contact.email)
            self._report_failure(batch, contact, failure)
        return released

    def _suspend_on(self, batch: Batch, failure: Failure, *, account_level: bool) -> None:
        suspension = self._suspensions.failed(
            batch.connector_id,
            batch.address_book_id,
            failure.reason,
            failure.code,
            failure.message,
            account_level=account_level,
        )
        if suspension is not None:
            self._suspended(suspension, batch.address_book_id)

    def _suspended(self, suspension: Suspension, address_book_id: int) -> None:
        log.error(
            "%s; its records go to the dead-letter topic as connector_suspended until a probe "
            "(every %.0f s) finds the account working again; replay them then",
            suspension.describe(),
            self._suspensions.probe_seconds,
        )
        self._metrics.connector_suspended.labels(suspension.connector).set(1)
        self._metrics.connector_suspensions.labels(
            suspension.connector, suspension.cause.value
        ).inc()
        # The connector's other operations would each wait out their retry budget for the same
        # answer: stopped before their next request, they start again and meet the suspension.
        # Those of the failing book are left to meet their own answer (and reason).
        for guard, contacts in self._guards.items():
            transition = contacts[0].transition if contacts else None
            if (
                transition is not None
                and transition.connector_id == suspension.connector
                and transition.address_book_id != address_book_id
            ):
                guard.revoke()

    def _report_failure(self, batch: Batch, contact: Contact, failure: Failure) -> None:
        # One contact's trouble (say its dead letter cannot be built) must not keep the
        # contacts after it from being reported, or their records would stay open for good.
        try:
            self._listener.failed(batch, contact, failure)
        except Exception:
            log.exception("reporting the failure of a contact of %s failed", batch.key)


def _not_sent(suspension: Suspension) -> Failure:
    return Failure(Reason.CONNECTOR_SUSPENDED, suspension.cause.value, suspension.message)


def _account_level(exc: BaseException) -> bool:
    """Whether ``exc`` fails the whole account, not this batch: credentials refused or access
    denied, through the retry budget or at once."""
    if isinstance(exc, RetriesExhausted):
        return exc.refused is not None or isinstance(exc.last_error, WrongRegionError)
    return isinstance(exc, AuthenticationError | WrongRegionError)


async def _any_exists(client: DotDigitalClient, books: Collection[int], deadline: float) -> bool:
    for book in sorted(books):
        try:
            await client.get_address_book(book, deadline=deadline)
        except AddressBookNotFoundError:
            continue
        return True
    return False


def _when(wall_seconds: float) -> str:
    return datetime.fromtimestamp(wall_seconds, UTC).isoformat(timespec="seconds")


def _failure_of(exc: BaseException, operation: Operation) -> Failure:
    """Why ``operation`` failed, for each of its contacts' dead letters."""
    # A job DotDigital refused or that ended badly: named after the operation that sent it.
    refused = Reason.IMPORT_FAILED if operation == "add" else Reason.REMOVAL_FAILED
    if isinstance(exc, RetriesExhausted):
        # Credentials refused on any attempt are the cause, whatever the last attempt met.
        last = exc.refused or exc.last_error
        reason = Reason.AUTH_FAILED if exc.refused is not None else Reason.RETRIES_EXHAUSTED
        return Failure(reason, last.code, str(last), exc.attempts)
    if isinstance(exc, AddressBookNotFoundError):
        return Failure(Reason.ADDRESS_BOOK_NOT_FOUND, exc.code, str(exc))
    if isinstance(exc, ImportFailedError):
        return Failure(Reason.IMPORT_FAILED, exc.code, str(exc))
    if isinstance(exc, RemovalFailedError):
        return Failure(Reason.REMOVAL_FAILED, exc.code, str(exc))
    if isinstance(exc, AuthenticationError):
        return Failure(Reason.AUTH_FAILED, exc.code, str(exc))
    if isinstance(exc, TransientError | ThrottledError):
        # Retryable, yet raised past the retry loop (a nested call's): the budget is spent.
        return Failure(Reason.RETRIES_EXHAUSTED, exc.code, str(exc))
    if isinstance(exc, PermanentError | DotDigitalError):
        # Not retryable (4xx other than auth, wrong region): the same request fails again.
        return Failure(refused, exc.code, str(exc))
    log.error("unexpected error while dispatching", exc_info=exc)
    return Failure(Reason.INTERNAL_ERROR, type(exc).__name__, "internal error while dispatching")
