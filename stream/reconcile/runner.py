"""Running a reconcile: the outcomes topic, each book's members, the repairs.

See :mod:`stream.reconcile` for the contract; :mod:`stream.reconcile.drift` is the comparison.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from stream.clock import Clock, SystemClock
from stream.core.outcome_format import Outcome, Reported, State
from stream.dotdigital import DotDigitalClient, RetryPolicy
from stream.dotdigital.observe import ApiOperation, ClientObserver, StatusClass
from stream.dotdigital.transport import Transport
from stream.kafka.client_config import producer_config
from stream.kafka.outcomes import OutcomePublisher, read_outcomes
from stream.observability.metrics import Metrics
from stream.pipeline.clients import client_config
from stream.reconcile.drift import Book, Drift, Expected, compare
from stream.settings import Settings

__all__ = ["BookReport", "ReconcileOptions", "ReconcileProgress", "ReconcileReport", "reconcile"]

log = logging.getLogger(__name__)

# Contacts per import or bulk removal: what a flush sends at most.
REPAIR_CHUNK = 1000
# How long the repairs' outcomes may take to be acknowledged at the end of the run.
OUTCOMES_SECONDS = 30.0


@dataclass(frozen=True)
class ReconcileOptions:
    connectors: frozenset[str] = frozenset()
    address_books: frozenset[int] = frozenset()
    repair: bool = False
    include_unmanaged: bool = False


@dataclass(frozen=True)
class ReconcileProgress:
    """Where the run is: ``done`` of ``total`` members read (or contacts repaired) in ``book``."""

    book: Book
    phase: str  # "reading", "repairing"
    done: int
    total: int

    @property
    def percent(self) -> int:
        return 100 if self.total <= 0 else min(100, self.done * 100 // self.total)

    def describe(self) -> str:
        connector, book = self.book
        unit = "members read" if self.phase == "reading" else "contacts repaired"
        return f"{connector}/{book}: {self.done} / {self.total} {unit} ({self.percent}%)"


@dataclass
class BookReport:
    drift: Drift
    shadow: bool = False
    repaired_added: int = 0
    repaired_removed: int = 0
    repair_failures: list[str] = field(default_factory=list)  # one line each, no email
    api_calls: int = 0
    seconds: float = 0.0

    @property
    def in_step_now(self) -> bool:
        """In step after what this run repaired."""
        drift = self.drift
        if self.repair_failures:
            return False
        left_missing = len(drift.missing) - self.repaired_added
        left_unexpected = len(drift.unexpected) - min(self.repaired_removed, len(drift.unexpected))
        return left_missing <= 0 and left_unexpected <= 0


@dataclass
class ReconcileReport:
    books: list[BookReport]
    outcomes_read: int
    malformed_outcomes: int
    repaired: bool

    @property
    def in_step(self) -> bool:
        return all(b.in_step_now if self.repaired else b.drift.in_step for b in self.books)


async def reconcile(
    settings: Settings,
    options: ReconcileOptions,
    *,
    on_progress: Callable[[ReconcileProgress], None] = lambda _: None,
    clock: Clock | None = None,
    transport: Transport | None = None,
) -> ReconcileReport:
    """Compare (and with ``options.repair``, repair) every book in scope; see the contract.
    ``transport`` carries the connectors' requests (their own aiohttp one each unless given)."""
    clock = clock or SystemClock()
    expected = Expected()
    read = await asyncio.to_thread(read_outcomes, settings.kafka, expected.add)
    books = _in_scope(settings, expected, options)
    publisher = None
    if options.repair:
        publisher = OutcomePublisher(
            producer_config(settings.kafka), settings.kafka.outcomes_topic, Metrics(), clock=clock
        )
    reports = []
    retry = RetryPolicy(total_seconds=settings.dispatch.retry_timeout_seconds)
    try:
        for connector_name in sorted({connector for connector, _ in books}):
            connector = settings.connectors[connector_name]
            calls = _CallCounter()
            async with await DotDigitalClient.connect(
                client_config(connector),
                retry=retry,
                clock=clock,
                observer=calls,
                transport=transport,
            ) as client:
                for book in sorted(b for b in books if b[0] == connector_name):
                    calls.count = 0
                    started = clock.monotonic()
                    report = await _reconcile_book(
                        client,
                        book,
                        expected,
                        options,
                        shadow=connector.mode == "shadow",
                        publisher=publisher,
                        clock=clock,
                        on_progress=on_progress,
                    )
                    report.api_calls = calls.count
                    report.seconds = clock.monotonic() - started
                    reports.append(report)
    finally:
        unacknowledged = (
            0 if publisher is None else await asyncio.to_thread(publisher.drain, OUTCOMES_SECONDS)
        )
        if unacknowledged:
            log.error(
                "%d repair outcome(s) were not acknowledged by %s; the repairs stand, the "
                "next reconcile finds them in step",
                unacknowledged,
                settings.kafka.outcomes_topic,
            )
    return ReconcileReport(reports, read.records, read.malformed, repaired=options.repair)


def _in_scope(settings: Settings, expected: Expected, options: ReconcileOptions) -> list[Book]:
    connectors = options.connectors or frozenset(settings.connectors)
    books = {
        book
        for book in expected.books
        if book[0] in connectors
        and book[0] in settings.connectors
        and (not options.address_books or book[1] in options.address_books)
    }
    for book_id in options.address_books:
        if not any(b[1] == book_id for b in books):
            # Named, and never seen: every member is unmanaged, for each connector in scope.
            books.update((c, book_id) for c in connectors if c in settings.connectors)
    return sorted(books)


async def _reconcile_book(
    client: DotDigitalClient,
    book: Book,
    expected: Expected,
    options: ReconcileOptions,
    *,
    shadow: bool,
    publisher: OutcomePublisher | None,
    clock: Clock,
    on_progress: Callable[[ReconcileProgress], None],
) -> BookReport:
    _, book_id = book
    size = (await client.get_address_book(book_id)).contacts
    members: set[str] = set()
    async for page in client.members(book_id):
        members.update(email for email, _ in page)
        on_progress(ReconcileProgress(book, "reading", len(members), max(size, len(members))))
    drift = compare(book, expected.of(book), members)
    report = BookReport(drift, shadow=shadow)
    if not options.repair or shadow:
        return report
    to_add = sorted(drift.missing)
    to_remove = sorted(drift.unexpected | (drift.unmanaged if options.include_unmanaged else set()))
    total = len(to_add) + len(to_remove)
    done = 0

    def record(email: str, state: State, action: str, reported: Reported, cid: int | None) -> None:
        assert publisher is not None
        outcome = Outcome(
            connector=book[0],
            address_book_id=book_id,
            email=email,
            action=action,
            state=state,
            reported=reported,
            decided_at=datetime.fromtimestamp(clock.time(), UTC),
            origin="reconcile",
            contact_id=cid,
        )
        publisher.publish(outcome, lambda: None)
        publisher.poll(0)

    for chunk in _chunks(to_add):
        try:
            imported = await client.import_contacts(book_id, chunk)
        except Exception as exc:  # reported, not raised: the other books still get their turn
            report.repair_failures.append(f"import of {len(chunk)} contacts failed: {exc}")
        else:
            for email, contact_id in imported.imported.items():
                created = email in imported.created
                reported = Reported.CREATED if created else Reported.UPDATED
                record(email, State.MEMBER, "add", reported, contact_id)
            report.repaired_added += len(imported.imported)
            if imported.rejected:
                report.repair_failures.append(
                    f"{len(imported.rejected)} contact(s) rejected by the import"
                )
        done += len(chunk)
        on_progress(ReconcileProgress(book, "repairing", done, total))
    for chunk in _chunks(to_remove):
        try:
            removal = await client.remove_contacts(book_id, chunk)
        except Exception as exc:
            report.repair_failures.append(f"removal of {len(chunk)} contacts failed: {exc}")
        else:
            for email in removal.removed:
                reported = Reported.NOT_FOUND if email in removal.not_found else Reported.REMOVED
                record(email, State.NOT_MEMBER, "remove", reported, client.known_contact_id(email))
            report.repaired_removed += len(removal.removed)
            if removal.rejected:
                report.repair_failures.append(
                    f"{len(removal.rejected)} contact(s) rejected by the removal"
                )
        done += len(chunk)
        on_progress(ReconcileProgress(book, "repairing", done, total))
    return report


def _chunks(emails: Sequence[str]) -> list[Sequence[str]]:
    return [emails[i : i + REPAIR_CHUNK] for i in range(0, len(emails), REPAIR_CHUNK)]


class _CallCounter(ClientObserver):
    """Counts the requests a client sends, answered or not, for the report's cost per book."""

    def __init__(self) -> None:
        self.count = 0

    def request(self, operation: ApiOperation, outcome: StatusClass) -> None:
        self.count += 1
