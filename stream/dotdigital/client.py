"""The DotDigital client: region detection, address books, bulk add and bulk remove.

One :class:`DotDigitalClient` per connector (DotDigital account). It sends through one
:class:`~stream.dotdigital.transport.Transport` (its own aiohttp one unless given another), owns
the account's rate limiters (:mod:`~stream.dotdigital.budgets`: the configured budgets of
imports, bulk removals and every other call, then one per tier the responses name), a cap on
concurrent imports, and the contact ids imports and pages of members returned
(:mod:`~stream.dotdigital.contact_ids`), so a removal can go out without resolving its emails.
The others are resolved in bulk (:meth:`DotDigitalClient.remove_contacts`). A remembered id may
be stale (the contact deleted and re-created with a new id: DotDigital then completes the
removal of the old id and the contact stays), so a removal by remembered ids is verified with
one paged call once it completed, and a contact still a member under a new id is removed again.

Every HTTP step runs under a :class:`~stream.dotdigital.retry.RetryPolicy`. The bulk methods
take an optional ``deadline`` (a ``clock.monotonic()`` value) shared by all the steps of one
call, after which :class:`~stream.dotdigital.errors.RetriesExhausted` is raised. Without one,
each step retries for up to the policy's ``total_seconds`` from its own first attempt. Waiting
for the rate limiter is not failing: time a request spends queued for it moves its step's
deadline out by as much, unless a 429 blocks the limiter past that deadline: then the step
gives up at once. A successful answer whose body is not what the step needs (no job id, no
contact id, not JSON), a malformed HTTP answer, a timeout or a dropped connection is transient:
retried like a 5xx. Rate-limit headers only tune pacing; no value of theirs makes a call fail.
A job DotDigital accepted is polled for up to ``total_seconds`` from its acceptance.

A job given up on (still running at the deadline, its polls failing, or the call cancelled) may
yet take effect. The client remembers it, and the next import or removal of that address book
first waits for it to end, for up to one more budget, so that within this process a later
change of a contact is not overtaken by an earlier one. Past that the book goes on without it
(an error is logged): one stuck job must not stall its book for good. An import or removal
request that failed in a way DotDigital may have accepted it anyway (sent, then a timeout, a
dropped connection, a malformed answer or an accepted answer without a job id) is remembered too
when its call fails; its id is unknown, so it cannot be polled: the book's next call of the
other kind waits out one budget from then (two imports, or two removals, commute). When a later
attempt of the same call is accepted and ends, the call succeeded and an earlier unanswered
attempt is not waited for: it carried the same contacts, and DotDigital is assumed to run a
book's jobs in the order it accepted them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import math
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote, urlencode

import orjson

from stream.clock import Clock, SystemClock
from stream.dotdigital.budgets import Budget, Budgets
from stream.dotdigital.config import ClientConfig
from stream.dotdigital.contact_ids import ContactIds, Learnt
from stream.dotdigital.errors import (
    APIUSAGE_EXCEEDED,
    AddressBookNotFoundError,
    DuplicateAddressBookError,
    ImportFailedError,
    PermanentError,
    RemovalFailedError,
    RetriesExhausted,
    ThrottledError,
    TransientError,
    error_from_response,
)
from stream.dotdigital.guard import current_guard
from stream.dotdigital.models import (
    MISSING_FROM_RESULT,
    AccountInfo,
    AddressBook,
    ImportOutcome,
    Rejection,
    RemovalOutcome,
    normalize_email,
)
from stream.dotdigital.observe import (
    NO_OBSERVER,
    ApiOperation,
    ClientObserver,
    operation_of,
    status_class,
)
from stream.dotdigital.ratelimit import (
    RateLimiter,
    RateLimitStatus,
    parse_reset,
    parse_retry_after,
)
from stream.dotdigital.retry import RetryPolicy
from stream.dotdigital.transport import AiohttpTransport, Request, Transport, TransportError

__all__ = ["DotDigitalClient", "Operation", "PollSchedule"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Literal["add", "remove"]

PAGE_SIZE = 1000
IMPORT_FAILED_STATUSES = frozenset(
    {
        "RejectedByWatchdog",
        "InvalidFileFormat",
        "Unknown",
        "Failed",
        "ExceedsAllowedContactLimit",
        "NotAvailableInThisVersion",
    }
)
DELETION_FAILED_STATUSES = frozenset({"Failed", "NotAvailableInThisVersion"})
CONTACT_NOT_FOUND_CODES = frozenset({"contacts:contactNotFound", "ERROR_CONTACT_NOT_FOUND"})
# A look-up DotDigital refuses because the value cannot be an email address: no such contact
# can be in a book, so its removal is done (as when the book is paged and it is not there).
INVALID_IDENTIFIER_CODES = frozenset({"contacts:invalidId"})
# The v3 import's per-contact failure for a list id the account does not have (the specs'
# examples are camelCase, the docs' table PascalCase: compared case-folded).
INVALID_LIST_FAILURE = "invalidaddressbookids"
# A 429 for the concurrent-job caps says nothing about when a slot frees; poll-like wait.
CONCURRENCY_RETRY_SECONDS = 2.0
VISIBILITIES = ("Private", "Public")
EMAIL_LOOKUP_PREFIX = "/contacts/v3/email/"
# GET /contacts/v3 returns up to 5,000 contacts a page (the specification's maximum).
MEMBERS_PAGE_SIZE = 5000
# How much DotDigital's clock may be behind ours when a removal by remembered ids is verified
# with ~created (see DotDigitalClient._remove_stale): a wider margin only reads more members.
CLOCK_SKEW_SECONDS = 300.0


@dataclass(frozen=True)
class PollSchedule:
    """Waits between status polls of an import or deletion job: ``initial`` growing by
    ``factor`` up to ``maximum`` seconds. DotDigital documents no poll interval."""

    initial: float = 0.25
    factor: float = 1.5
    maximum: float = 5.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(self.maximum, delay * self.factor)


@dataclass(frozen=True)
class _Job:
    """An import or bulk removal DotDigital accepted, polled at ``path`` until it ends.

    ``path`` is None for a job DotDigital may have accepted without our learning its id (the
    request timed out, lost its connection or got a malformed answer): it cannot be polled.
    """

    book_id: int
    name: str  # "import <id>", "removal <id>"
    path: str | None
    done: str  # the status of success
    failed: frozenset[str]
    kind: Operation = "add"

    @property
    def ended(self) -> frozenset[str]:
        return self.failed | {self.done}

    @property
    def key(self) -> str:
        """Unique among the book's remembered jobs: the poll path, else the name."""
        return self.path if self.path is not None else self.name


class _Tally:
    """One call's attempts, the seconds they spent waiting for their rate limiter, and the
    attempts DotDigital may have acted on without our knowing its answer (``unanswered``: a
    request that was sent and timed out, lost its connection, or got a malformed answer)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.queued_seconds = 0.0
        self.unanswered = 0

    def queued(self) -> float:
        return self.queued_seconds


@dataclass
class _Resolved:
    """Emails of one removal resolved against its address book (normalized emails)."""

    ids: dict[str, int] = field(default_factory=dict)  # members, by contact id
    absent: set[str] = field(default_factory=set)  # unknown to DotDigital, or not a member
    rejected: dict[str, Rejection] = field(default_factory=dict)  # refused by DotDigital
    book_checked: bool = False  # the book's existence was confirmed on the way

    def update(self, other: _Resolved) -> None:
        self.ids.update(other.ids)
        self.absent |= other.absent
        self.rejected.update(other.rejected)
        self.book_checked = self.book_checked or other.book_checked


@dataclass(frozen=True)
class _Response:
    data: Any
    headers: Mapping[str, str]


class _Names:
    """Maps the caller's email spellings to normalized emails and back, in O(n)."""

    def __init__(self, emails: Iterable[str]) -> None:
        # normalized -> the spellings the caller used (several when they differ in case)
        self.spellings: dict[str, list[str]] = {}
        # normalized -> the spelling sent to DotDigital (first seen, stripped)
        self.sent: dict[str, str] = {}
        self.empty: list[str] = []
        for email in emails:
            key = normalize_email(email)
            if not key:
                self.empty.append(email)
                continue
            if key not in self.spellings:
                self.spellings[key] = []
                self.sent[key] = email.strip()
            self.spellings[key].append(email)

    def expand(self, keys: Iterable[str]) -> Iterator[str]:
        for key in keys:
            yield from self.spellings[key]

    def empty_rejections(self) -> dict[str, Rejection]:
        return {
            email: Rejection(email, "invalidEmail", "the email address is empty")
            for email in self.empty
        }


class DotDigitalClient:
    """An asynchronous client of one DotDigital account.

    Build it with :meth:`connect` (detects the region unless the config pins one), use it as
    an async context manager or call :meth:`close`. Not thread-safe; safe for concurrent use by
    tasks of one event loop.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        endpoint: str | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        poll: PollSchedule | None = None,
        lookup_concurrency: int = 16,
        removal_chunk_size: int = 1000,
        observer: ClientObserver | None = None,
    ) -> None:
        """Prefer :meth:`connect`. ``transport`` may be injected (the caller then closes it);
        ``endpoint`` is the regional base URL (``None`` until detection ran); ``observer`` is
        told of every request (see :mod:`stream.dotdigital.observe`)."""
        self.config = config
        self._observer = observer if observer is not None else NO_OBSERVER
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._retry = retry if retry is not None else RetryPolicy()
        self._poll = poll if poll is not None else PollSchedule()
        endpoint = endpoint or config.api_endpoint
        self._endpoint = endpoint.rstrip("/") if endpoint else None
        self._own_transport: AiohttpTransport | None = None
        if transport is None:
            transport = self._own_transport = AiohttpTransport()
        self._transport = transport
        # The Authorization value is built once and lives only here: never logged nor shown.
        password = config.password()
        token = f"{config.username}:{password}".encode()
        self._authorization = "Basic " + base64.b64encode(token).decode("ascii")
        self._secrets = _spellings(password, self._authorization[6:])
        # Polls, look-ups and address-book calls have a budget of their own, so that many
        # concurrent polls cannot stampede the bulk operations' budget at each reset; tiers the
        # responses name replace these as they are learnt (see budgets.py).
        starting: dict[Budget, int] = {
            "add": config.add_requests_per_minute,
            "remove": config.remove_requests_per_minute,
            "other": config.other_requests_per_minute,
        }
        self._budgets = Budgets(
            starting,
            self._clock,
            on_new=lambda name, limiter: self._observer.budget(name, lambda: limiter.limit),
            on_gone=self._observer.budget_gone,
        )
        self._imports = asyncio.Semaphore(config.max_active_imports)
        self._lookups = asyncio.Semaphore(lookup_concurrency)
        self._removal_chunk_size = removal_chunk_size
        self._contact_ids = ContactIds(
            config.contact_cache_size, config.contact_cache_ttl_seconds, self._clock
        )
        # Jobs given up on while perhaps still running, by address book and poll path; the
        # next import or removal of the book waits for them (one waiter per book at a time).
        self._unfinished: dict[int, dict[str, tuple[_Job, float]]] = {}  # -> given up at
        self._fences: dict[int, asyncio.Lock] = {}
        self._unknown_jobs = 0

    @classmethod
    async def connect(
        cls,
        config: ClientConfig,
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        transport: Transport | None = None,
        poll: PollSchedule | None = None,
        deadline: float | None = None,
        observer: ClientObserver | None = None,
    ) -> DotDigitalClient:
        """A ready client: ``config.api_endpoint`` when set, else the region DotDigital
        names for this account at ``{discovery_endpoint}/v2/account-info`` (property
        ``ApiEndpoint``). Detection runs under ``retry`` (and ``deadline``); its errors
        propagate and the client is closed. ``observer`` sees detection's requests too."""
        client = cls(
            config, transport=transport, clock=clock, retry=retry, poll=poll, observer=observer
        )
        if client._endpoint is None:
            try:
                info = await client._account_info(config.discovery_endpoint, deadline)
                endpoint = info.api_endpoint
                if not endpoint:
                    raise PermanentError(
                        "GET /v2/account-info answered without an ApiEndpoint property"
                    )
                client._endpoint = endpoint
            except BaseException:
                await client.close()
                raise
        log.debug("connector %s uses %s", config.name, client._endpoint)
        return client

    async def close(self) -> None:
        """Close the transport if this client created it. Idempotent."""
        if self._own_transport is not None:
            await self._own_transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"DotDigitalClient(connector={self.config.name!r}, "
            f"username={self.config.username!r}, endpoint={self._endpoint!r})"
        )

    @property
    def endpoint(self) -> str:
        """The regional base URL in use, without a trailing slash."""
        if self._endpoint is None:
            raise RuntimeError("the client is not connected: use DotDigitalClient.connect()")
        return self._endpoint

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._retry

    @property
    def budgets(self) -> Budgets:
        """The account's rate limiters: the configured starting budgets, then learnt tiers."""
        return self._budgets

    def limiter(self, name: str) -> RateLimiter:
        """A rate limiter by name: ``"add"``, ``"remove"``, ``"other"`` (the configured
        starting budgets) or a tier learnt from ``X-RateLimit-Scope``."""
        return self._budgets.limiter(name)

    def rate_limit_status(self) -> dict[str, RateLimitStatus]:
        """What each limiter knows now (limit, available, server's view), by name."""
        return self._budgets.status()

    def known_contact_id(self, email: str) -> int | None:
        """The contact id an import, look-up or page of members returned for ``email``, if
        remembered and not older than ``contact_cache_ttl_seconds``."""
        learnt = self._contact_ids.get(normalize_email(email))
        return None if learnt is None else learnt.contact_id

    # -- account ---------------------------------------------------------------------------

    async def account_info(self, *, deadline: float | None = None) -> AccountInfo:
        """``GET /v2/account-info`` on the account's endpoint."""
        return await self._account_info(self.endpoint, deadline)

    async def _account_info(self, base: str, deadline: float | None) -> AccountInfo:
        response = await self._call(
            "GET", "/v2/account-info", base=base, deadline=deadline, expect=_is_mapping
        )
        rate_limit = {
            key.lower(): value
            for key, value in response.headers.items()
            if key.lower().startswith("x-ratelimit-")
        }
        return AccountInfo.from_json(response.data, rate_limit_headers=rate_limit)

    # -- address books ---------------------------------------------------------------------

    async def list_address_books(
        self, *, page_size: int = PAGE_SIZE, deadline: float | None = None
    ) -> list[AddressBook]:
        """Every address book, fetched in pages of ``page_size`` (1..1000) until a short one."""
        if not 1 <= page_size <= PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {PAGE_SIZE}")
        books: list[AddressBook] = []
        skip = 0
        while True:
            query = urlencode({"select": page_size, "skip": skip})
            page = (
                await self._call(
                    "GET",
                    f"/v2/address-books?{query}",
                    deadline=deadline,
                    expect=lambda data: (
                        isinstance(data, list)
                        and all(_is_book(item) for item in data if isinstance(item, Mapping))
                    ),
                )
            ).data
            books.extend(AddressBook.from_json(item) for item in page if isinstance(item, Mapping))
            if len(page) < page_size:
                return books
            skip += page_size

    async def get_address_book(
        self, address_book_id: int, *, deadline: float | None = None
    ) -> AddressBook:
        """One address book; :class:`AddressBookNotFoundError` when it does not exist."""
        return await self._get_book(int(address_book_id), self._retry, deadline)

    async def _get_book(
        self, book_id: int, policy: RetryPolicy, deadline: float | None
    ) -> AddressBook:
        response = await self._call(
            "GET",
            f"/v2/address-books/{book_id}",
            policy=policy,
            deadline=deadline,
            expect=_is_book,
        )
        return AddressBook.from_json(response.data)

    async def create_address_book(
        self,
        name: str,
        visibility: str = "Private",
        *,
        exist_ok: bool = False,
        deadline: float | None = None,
    ) -> AddressBook:
        """Create an address book (DotDigital answers 200 or 201, both accepted).

        A name in use raises :class:`DuplicateAddressBookError`, unless ``exist_ok``: then the
        existing book of that name is returned. A retry that finds the name taken after an
        earlier attempt's response was lost also returns the existing book, since that book is
        most likely the one the lost attempt created.
        """
        if visibility not in VISIBILITIES:
            raise ValueError(f"visibility must be one of {', '.join(VISIBILITIES)}")
        tally = _Tally()
        try:
            response = await self._call(
                "POST",
                "/v2/address-books",
                body={"name": name, "visibility": visibility},
                deadline=deadline,
                tally=tally,
                # A retry after an unreadable answer finds the name taken: handled below.
                expect=_is_mapping,
            )
        except DuplicateAddressBookError as error:
            if not exist_ok and tally.attempts <= 1:
                raise DuplicateAddressBookError(
                    f"an address book or segment named {name!r} already exists",
                    status=error.status,
                    code=error.code,
                ) from None
            existing = await self._find_address_book(name, deadline)
            if existing is None:
                raise DuplicateAddressBookError(
                    f"the name {name!r} is in use, but not by an address book "
                    "(DotDigital also reserves segment names and 'Test'/'All contacts')",
                    status=error.status,
                    code=error.code,
                ) from None
            return existing
        return AddressBook.from_json(response.data)

    async def _book_exists(self, book_id: int, policy: RetryPolicy, deadline: float | None) -> None:
        """Returns when the address book exists; :class:`AddressBookNotFoundError` when
        DotDigital says it does not (``ERROR_ADDRESSBOOK_NOT_FOUND``)."""
        await self._get_book(book_id, policy, deadline)

    async def _find_address_book(self, name: str, deadline: float | None) -> AddressBook | None:
        books = await self.list_address_books(deadline=deadline)
        for book in books:
            if book.name == name:
                return book
        folded = name.casefold()
        return next((book for book in books if book.name.casefold() == folded), None)

    # -- bulk add --------------------------------------------------------------------------

    async def import_contacts(
        self,
        address_book_id: int,
        emails: Sequence[str],
        *,
        deadline: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> ImportOutcome:
        """Add ``emails`` to the address book with one v3 import, polled until it finishes.

        Returns every input email (the caller's spelling) as imported (with its contact id,
        also remembered for :meth:`remove_contacts`) or rejected (DotDigital's failure code;
        ``missingFromResult`` when the result does not mention it; ``invalidEmail`` for an
        empty string, not sent). A contact the result lists as created or updated *and* as
        failed is rejected: ddsync sends only its email and the list, so what failed is its
        membership of the book. Emails compare case-insensitively; one contact is sent per
        distinct email. Raises :class:`ImportFailedError` when the import as a whole ends
        badly, :class:`AddressBookNotFoundError` when contacts failed for an unknown list id and
        ``GET /v2/address-books/{id}`` confirms the book is gone (as a removal from it would),
        :class:`RetriesExhausted` past ``deadline``, or the request's error when it is not
        retryable. At most ``max_active_imports`` imports of this client run at once.
        """
        policy = retry or self._retry
        names = _Names(emails)
        rejected = names.empty_rejections()
        if not names.sent:
            return ImportOutcome(import_id=None, imported={}, rejected=rejected)
        await self._settle(int(address_book_id), "add", policy, deadline)
        body = {
            "mergeOption": "overwrite",
            "contacts": [
                {
                    "matchIdentifier": "email",
                    "identifiers": {"email": email},
                    "lists": [int(address_book_id)],
                }
                for email in names.sent.values()
            ],
        }
        async with self._imports:
            tally = _Tally()
            try:
                accepted = (
                    await self._call(
                        "PUT",
                        "/contacts/v3/import",
                        body=body,
                        policy=policy,
                        deadline=deadline,
                        tally=tally,
                        expect=lambda data: bool(_job_id(data, "importId")),
                    )
                ).data
            except BaseException:
                self._fence_unanswered(int(address_book_id), "add", tally)
                raise
            import_id = _job_id(accepted, "importId")
            job = _Job(
                int(address_book_id),
                f"import {import_id}",
                f"/contacts/v3/import/{quote(import_id, safe='')}",
                "Finished",
                IMPORT_FAILED_STATUSES,
            )
            self._observer.import_active(+1)
            try:
                status, result = await self._await_job(job, "NotFinished", policy, deadline)
            finally:
                self._observer.import_active(-1)
            if status != job.done:
                raise ImportFailedError(
                    f"import {import_id} ended with status {status}",
                    import_id=import_id,
                    import_status=status,
                )
            self._observer.import_finished(
                *(_count(result, section) for section in ("created", "updated", "failures"))
            )

        imported_ids: dict[str, int] = {}
        for section in ("created", "updated"):
            for item in result.get(section) or ():
                key = _email_of(item)
                contact_id = item.get("contactId") if isinstance(item, Mapping) else None
                if key in names.spellings and isinstance(contact_id, int):
                    imported_ids[key] = contact_id
        failed: dict[str, tuple[str, str]] = {}
        for item in result.get("failures") or ():
            key = _email_of(item)
            # DotDigital reports a contact both imported and failed when a data set of it failed.
            # ddsync sends nothing but the email and the list, so the failure is the list
            # membership's (invalidAddressBookIds): the contact is not in the book, a rejection.
            if key in names.spellings and key not in failed:
                failed[key] = _failure_of(item)
        if any(code.casefold() == INVALID_LIST_FAILURE for code, _ in failed.values()):
            # One cause, one reason: a book deleted meanwhile is address_book_not_found for adds
            # as for removals, not a rejection of each contact. Only DotDigital's answer about
            # the book itself decides (one call, and only then); if the book exists after all,
            # the failures stand as rejections.
            await self._book_exists(int(address_book_id), policy, deadline)

        imported: dict[str, int] = {}
        for key, spellings in names.spellings.items():
            contact_id = imported_ids.get(key)
            if contact_id is not None:
                # The contact exists, even when its membership failed: its id is good.
                self._contact_ids.learn(key, contact_id)
            if contact_id is not None and key not in failed:
                for email in spellings:
                    imported[email] = contact_id
                continue
            code, description = failed.get(
                key, (MISSING_FROM_RESULT, f"import {import_id} did not report this contact")
            )
            for email in spellings:
                rejected[email] = Rejection(email, code, description)
        return ImportOutcome(import_id=import_id, imported=imported, rejected=rejected)

    async def _await_job(
        self,
        job: _Job,
        status: str,
        policy: RetryPolicy,
        deadline: float | None,
        *,
        until: float | None = None,
        earlier: bool = False,
    ) -> tuple[str, Mapping[str, Any]]:
        """Poll ``job`` from ``status`` until it ends; returns its last status and body.

        Polls up to the call's deadline (or ``until``, if sooner), the last wait cut short to
        poll once more at the deadline, then raises :class:`RetriesExhausted`. A job not seen
        to end, for whatever reason, is remembered for :meth:`_settle`. ``earlier``: the job
        of an earlier call, polled at once (it may have ended long ago).
        """
        delays = self._poll.delays()
        if earlier:
            delays = itertools.chain((0.0,), delays)
        job_deadline = self._job_deadline(policy, deadline)
        if until is not None:
            job_deadline = min(job_deadline, until)
        body: Mapping[str, Any] = {}
        guard = current_guard()
        if guard is not None:
            guard.polling()
        try:
            while status not in job.ended:
                now = self._clock.monotonic()
                if now >= job_deadline:
                    what = f"the earlier {job.name}" if earlier else job.name
                    raise RetriesExhausted(
                        TransientError(
                            f"{what} of address book {job.book_id} still {status} at the deadline"
                            + ("; not overtaking it" if earlier else "")
                        ),
                        attempts=1,
                        elapsed=0.0,
                    )
                await self._clock.sleep(min(next(delays), job_deadline - now))
                assert job.path is not None  # jobs of unknown id are never polled
                data = (
                    await self._call(
                        "GET", job.path, policy=policy, deadline=deadline, expect=_is_mapping
                    )
                ).data
                body = data
                status = str(data.get("status", ""))
                if status not in job.ended and status not in ("NotFinished", "Started"):
                    # Not documented: keep polling (as Dotdigital's Magento extension does);
                    # the deadline bounds it.
                    log.warning("%s reports unknown status %r", job.name, status)
        except BaseException:
            # Keep the first time it was given up on: the book's wait is measured from there,
            # however many calls ask after it.
            self._unfinished.setdefault(job.book_id, {}).setdefault(
                job.key, (job, self._clock.monotonic())
            )
            raise
        finally:
            if guard is not None:
                guard.polled()
        self._forget(job)
        return status, body

    def _fence_unanswered(self, book_id: int, kind: Operation, tally: _Tally) -> None:
        """After a job-starting call failed: if one of its attempts may have been accepted
        (``tally.unanswered``), hold the book's next call of the other kind (see
        :meth:`_settle`). Two imports (or two removals) of a book commute; an import and a
        removal do not."""
        if not tally.unanswered:
            return
        self._unknown_jobs += 1
        name = "import" if kind == "add" else "removal"
        job = _Job(
            book_id, f"{name} #{self._unknown_jobs} of unknown id", None, "", frozenset(), kind
        )
        self._unfinished.setdefault(book_id, {})[job.key] = (job, self._clock.monotonic())
        log.warning(
            "address book %s: an %s may have been accepted without an answer; its next %s "
            "waits for it",
            book_id,
            name,
            "removal" if kind == "add" else "import",
        )

    def _forget(self, job: _Job) -> None:
        unfinished = self._unfinished.get(job.book_id)
        if unfinished is not None:
            unfinished.pop(job.key, None)
            if not unfinished:
                del self._unfinished[job.book_id]

    async def _settle(
        self, book_id: int, kind: Operation, policy: RetryPolicy, deadline: float | None
    ) -> None:
        """Wait for the jobs of this address book given up on earlier to end, so that this
        call (of ``kind``) does not overtake them: each for up to this call's budget from when
        it was given up on, then go on without it (logged as an error). A job of unknown id
        cannot be polled: a call of the other kind waits out that budget. :class:`RetriesExhausted`
        when this call's own deadline comes first."""
        if book_id not in self._unfinished:
            return
        async with self._fences.setdefault(book_id, asyncio.Lock()):
            for job, given_up_at in list(self._unfinished.get(book_id, {}).values()):
                until = given_up_at + policy.total_seconds
                if job.path is None:
                    if job.kind != kind:
                        await self._outwait(job, until, policy, deadline)
                    continue
                log.info("address book %s: waiting for the earlier %s first", book_id, job.name)
                try:
                    await self._await_job(
                        job, "unknown", policy, deadline, until=until, earlier=True
                    )
                except PermanentError as error:
                    # DotDigital no longer knows the job (say it expired): nothing to wait for.
                    log.warning(
                        "%s cannot be followed (%s); no longer waiting for it", job.name, error
                    )
                    self._forget(job)
                except RetriesExhausted:
                    if self._clock.monotonic() < until:
                        raise
                    log.error(
                        "%s of address book %s has not ended a whole retry budget after it was "
                        "given up on; going on without it (it may yet undo a later change)",
                        job.name,
                        book_id,
                    )
                    self._forget(job)

    async def _outwait(
        self, job: _Job, until: float, policy: RetryPolicy, deadline: float | None
    ) -> None:
        """Wait until ``until`` for ``job``, whose id we never learnt; :class:`RetriesExhausted`
        (at the call's deadline) when the deadline comes first."""
        ends = self._job_deadline(policy, deadline)
        now = self._clock.monotonic()
        log.info("address book %s: waiting for the earlier %s first", job.book_id, job.name)
        if ends < until:
            await self._clock.sleep(max(0.0, ends - now))
            raise RetriesExhausted(
                TransientError(
                    f"the earlier {job.name} of address book {job.book_id} may still be "
                    "running at the deadline; not overtaking it"
                ),
                attempts=1,
                elapsed=0.0,
            )
        await self._clock.sleep(max(0.0, until - now))
        log.warning(
            "address book %s: no longer waiting for the earlier %s (a retry budget passed)",
            job.book_id,
            job.name,
        )
        self._forget(job)

    def _job_deadline(self, policy: RetryPolicy, deadline: float | None) -> float:
        """How long to wait for an accepted job: the call's deadline, else a budget from now."""
        return deadline if deadline is not None else policy.deadline(self._clock)

    # -- bulk remove -----------------------------------------------------------------------

    async def remove_contacts(
        self,
        address_book_id: int,
        emails: Sequence[str],
        *,
        deadline: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> RemovalOutcome:
        """Take ``emails`` out of the address book; the contacts themselves stay.

        Contact ids come from what imports and pages of members taught the client, else from
        DotDigital, whichever way costs less of the account's budget (:meth:`_resolve`): one
        ``GET /contacts/v3/email/{email}`` per contact, or the book's members paged with
        ``GET /contacts/v3?~listId=`` (5,000 a call). A contact DotDigital does not know, or
        that is not in the book, counts as removed (listed in ``not_found`` too). The rest go in
        bulk removals (``POST /v2/address-books/{id}/contacts/delete``) polled until
        ``Completed``. A removal by remembered ids is then verified (:meth:`_remove_stale`), so
        that a contact deleted and re-created since its id was learnt is removed again under
        its new id: a removal is never a silent no-op.
        Raises :class:`AddressBookNotFoundError` when the book does not exist (asked with
        ``GET /v2/address-books/{id}`` when no removal is to be sent),
        :class:`RemovalFailedError` when DotDigital reports the removal ``Failed``,
        :class:`RetriesExhausted` past ``deadline``.
        """
        policy = retry or self._retry
        book_id = int(address_book_id)
        # Before resolving: an earlier import still running may yet add these contacts.
        await self._settle(book_id, "remove", policy, deadline)
        names = _Names(emails)
        rejected = names.empty_rejections()
        remembered: dict[str, Learnt] = {}
        unresolved: list[str] = []
        for key in names.spellings:
            learnt = self._contact_ids.get(key)
            if learnt is None:
                unresolved.append(key)
            else:
                remembered[key] = learnt
        found = await self._resolve(unresolved, names, book_id, policy, deadline)
        ids = {key: learnt.contact_id for key, learnt in remembered.items()} | found.ids
        if not ids and found.absent and not found.book_checked:
            # No removal goes out to say the book is gone: ask, so that a deleted book is
            # address_book_not_found whatever the contacts (one call, only in this case).
            await self._book_exists(book_id, policy, deadline)

        deletion_ids: list[str] = []
        keys = list(ids)
        for start in range(0, len(keys), self._removal_chunk_size):
            chunk = keys[start : start + self._removal_chunk_size]
            try:
                deletion_ids.append(
                    await self._delete_members(book_id, [ids[k] for k in chunk], policy, deadline)
                )
            except PermanentError as error:
                stale = [k for k in chunk if k in remembered]
                if isinstance(error, AddressBookNotFoundError | RemovalFailedError) or not stale:
                    raise
                # A remembered id may be stale (contact deleted and re-created meanwhile):
                # resolve those emails afresh and try the chunk once more.
                log.info("removal failed (%s); resolving %d remembered ids", error, len(stale))
                for key in stale:
                    self._contact_ids.forget(key)
                    del remembered[key]
                    del ids[key]
                again = await self._resolve(stale, names, book_id, policy, deadline)
                found.update(again)
                ids.update(again.ids)
                retry_ids = [ids[k] for k in chunk if k in ids]
                if retry_ids:
                    deletion_ids.append(
                        await self._delete_members(book_id, retry_ids, policy, deadline)
                    )
        deletion_ids.extend(await self._remove_stale(remembered, names, book_id, policy, deadline))

        for key, rejection in found.rejected.items():
            for email in names.spellings[key]:
                rejected[email] = Rejection(email, rejection.failure_code, rejection.description)
        done_keys = [k for k in names.spellings if k not in found.rejected]
        return RemovalOutcome(
            removed=frozenset(names.expand(done_keys)),
            not_found=frozenset(names.expand(k for k in done_keys if k in found.absent)),
            rejected=rejected,
            deletion_ids=tuple(deletion_ids),
        )

    async def _resolve(
        self,
        keys: Sequence[str],
        names: _Names,
        book_id: int,
        policy: RetryPolicy,
        deadline: float | None,
    ) -> _Resolved:
        """Which of ``keys`` are members of the book, and under which contact ids, at the
        least cost to the account's budget.

        Looking each email up costs one call a contact; paging the book's members costs one
        call to learn its size (``GET /v2/address-books/{id}``, which also confirms the book
        exists) and one a :data:`MEMBERS_PAGE_SIZE` members, and stops once every email is
        found. Calls are weighed by the budget of the limiter that paces each (so a tier learnt
        to be scarcer weighs more); paging is chosen when it costs less. Members read while
        paging are remembered, so the book's next removals need no resolving.
        """
        resolved = _Resolved()
        if not keys:
            return resolved
        lookups = self._cost("contact_lookup", len(keys))
        if self._cost("address_books", 1) + self._cost("contact_list", 1) < lookups:
            book = await self._get_book(book_id, policy, deadline)
            resolved.book_checked = True
            pages = max(1, math.ceil(book.contacts / MEMBERS_PAGE_SIZE))
            if self._cost("contact_list", pages) < lookups:
                await self._find_members(keys, book_id, policy, deadline, resolved)
                return resolved
        await self._look_up(keys, names, book_id, policy, deadline, resolved)
        return resolved

    def _cost(self, operation: ApiOperation, calls: int) -> float:
        """``calls`` requests of ``operation`` in minutes of the budget that paces them."""
        return calls / self._budgets.for_operation(operation).limit

    async def _find_members(
        self,
        keys: Sequence[str],
        book_id: int,
        policy: RetryPolicy,
        deadline: float | None,
        into: _Resolved,
    ) -> None:
        """Page the book's members until every one of ``keys`` is found or none is left."""
        wanted = set(keys)
        async with contextlib.aclosing(self._members(book_id, policy, deadline)) as pages:
            async for page in pages:
                for key, contact_id in page:
                    if key in wanted:
                        into.ids[key] = contact_id
                        wanted.discard(key)
                if not wanted:
                    break
        into.absent.update(wanted)

    async def _members(
        self,
        book_id: int,
        policy: RetryPolicy,
        deadline: float | None,
        *,
        created_since: float | None = None,
    ) -> AsyncGenerator[list[tuple[str, int]], None]:
        """The book's members, a page (``GET /contacts/v3?~listId=``) at a time, as
        (normalized email, contact id); only those created at or after ``created_since`` (Unix
        seconds) when given. Every member read is remembered. Members without an email address
        are left out (they cannot be any contact ddsync syncs)."""
        query: dict[str, str | int] = {"~listId": book_id, "limit": MEMBERS_PAGE_SIZE}
        if created_since is not None:
            query["~created"] = "gte::" + _iso(created_since)
        marker: str | None = None
        while True:
            path = "/contacts/v3?" + urlencode(
                query if marker is None else {**query, "marker": marker}
            )
            data = (
                await self._call(
                    "GET",
                    path,
                    policy=policy,
                    deadline=deadline,
                    expect=lambda data: (
                        isinstance(data, Mapping) and isinstance(data.get("_items"), list)
                    ),
                )
            ).data
            items = data["_items"]
            page: list[tuple[str, int]] = []
            for item in items:
                key = _email_of(item)
                contact_id = item.get("contactId") if isinstance(item, Mapping) else None
                if key and isinstance(contact_id, int) and not isinstance(contact_id, bool):
                    self._contact_ids.learn(key, contact_id)
                    page.append((key, contact_id))
            yield page
            following = _next_marker(data)
            if following is None or not items:
                return
            if following == marker:
                raise TransientError("GET /contacts/v3 answered the same page marker twice")
            marker = following

    async def _remove_stale(
        self,
        sent: Mapping[str, Learnt],
        names: _Names,
        book_id: int,
        policy: RetryPolicy,
        deadline: float | None,
    ) -> list[str]:
        """After a completed removal by remembered ids (``sent``), remove again those of the
        contacts that are still in the book under another id; returns those removals.

        DotDigital completes the removal of an id it does not know, so a stale id (the contact
        deleted and re-created since the id was learnt) would leave its contact in the book
        while reporting it removed. A contact re-created after its id was learnt was created
        after that, so the book's members created since the oldest of ``sent`` was learnt
        (less :data:`CLOCK_SKEW_SECONDS`, for the difference between our clock and
        DotDigital's) include every such contact: one paged call a removal, not one look-up a
        contact. When the pages would cost more of the budget than looking the contacts up
        (many members created since, or a scarce tier), the contacts not seen yet are looked
        up instead: never more than about twice the cheaper way.
        """
        if not sent:
            return []
        current: dict[str, int] = {}
        unseen = dict(sent)
        lookups = self._cost("contact_lookup", len(sent))
        page_cost = self._cost("contact_list", 1)
        if page_cost <= lookups:
            since = min(learnt.at for learnt in sent.values()) - CLOCK_SKEW_SECONDS
            spent = 0.0
            complete = False
            async with contextlib.aclosing(
                self._members(book_id, policy, deadline, created_since=since)
            ) as pages:
                async for page in pages:
                    spent += page_cost
                    for key, contact_id in page:
                        learnt = unseen.pop(key, None)
                        if learnt is not None and contact_id != learnt.contact_id:
                            current[key] = contact_id
                    if not unseen or spent + page_cost > lookups:
                        break
                else:
                    complete = True  # the last page: no other member was created since
            if complete:
                unseen.clear()
        if unseen:
            found = _Resolved()
            await self._look_up(list(unseen), names, book_id, policy, deadline, found)
            current.update(
                (key, contact_id)
                for key, contact_id in found.ids.items()
                if contact_id != unseen[key].contact_id
            )
        if not current:
            return []
        log.info("address book %s: %d remembered contact ids were stale", book_id, len(current))
        contact_ids = list(current.values())
        size = self._removal_chunk_size
        return [
            await self._delete_members(book_id, contact_ids[start : start + size], policy, deadline)
            for start in range(0, len(contact_ids), size)
        ]

    async def _look_up(
        self,
        keys: Sequence[str],
        names: _Names,
        book_id: int,
        policy: RetryPolicy,
        deadline: float | None,
        into: _Resolved,
    ) -> None:
        """Resolve each of ``keys`` with its own ``GET /contacts/v3/email/{email}``."""

        async def one(key: str) -> None:
            email = names.sent[key]
            path = f"{EMAIL_LOOKUP_PREFIX}{quote(email, safe='@')}"
            async with self._lookups:
                try:
                    contact = (
                        await self._call(
                            "GET",
                            path,
                            policy=policy,
                            deadline=deadline,
                            expect=lambda data: (
                                isinstance(data, Mapping) and _is_id(data.get("contactId"))
                            ),
                        )
                    ).data
                except PermanentError as error:
                    # Only DotDigital's own "contact not found" means already removed; a bare
                    # 404 (a proxy's) is UnrecognizedNotFoundError, retried and never success.
                    if error.code in CONTACT_NOT_FOUND_CODES | INVALID_IDENTIFIER_CODES:
                        into.absent.add(key)
                        return
                    into.rejected[key] = Rejection(
                        email, error.code or "invalidEmail", error.message
                    )
                    return
            contact_id = contact["contactId"]
            self._contact_ids.learn(key, contact_id)
            lists = contact.get("lists")
            if isinstance(lists, list) and not any(
                isinstance(item, Mapping) and item.get("id") == book_id for item in lists
            ):
                into.absent.add(key)  # known, but not a member: nothing to remove
                return
            into.ids[key] = contact_id

        try:
            async with asyncio.TaskGroup() as group:
                for key in keys:
                    group.create_task(one(key))
        except ExceptionGroup as failures:
            # Callers act on the error's class (auth, retries exhausted, ...), not on a group.
            raise failures.exceptions[0] from None

    async def _delete_members(
        self, book_id: int, contact_ids: list[int], policy: RetryPolicy, deadline: float | None
    ) -> str:
        tally = _Tally()
        try:
            response = await self._call(
                "POST",
                f"/v2/address-books/{book_id}/contacts/delete",
                body=contact_ids,
                policy=policy,
                deadline=deadline,
                tally=tally,
                expect=lambda data: bool(_job_id(data, "id")),
            )
        except BaseException:
            self._fence_unanswered(book_id, "remove", tally)
            raise
        accepted = response.data
        deletion_id = _job_id(accepted, "id")
        job = _Job(
            book_id,
            f"removal {deletion_id}",
            f"/v2/contacts/deletion/{quote(deletion_id, safe='')}",
            "Completed",
            DELETION_FAILED_STATUSES,
            "remove",
        )
        status = str(accepted.get("status", "Started"))
        status, _ = await self._await_job(job, status, policy, deadline)
        if status != job.done:
            raise RemovalFailedError(
                f"removal {deletion_id} from address book {book_id} ended {status}",
                deletion_id=deletion_id,
                deletion_status=status,
            )
        return deletion_id

    # -- HTTP ------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        base: str | None = None,
        body: Any = None,
        policy: RetryPolicy | None = None,
        deadline: float | None = None,
        tally: _Tally | None = None,
        expect: Callable[[Any], bool] | None = None,
    ) -> _Response:
        """One HTTP step under the retry policy (its ``.data`` is the decoded JSON body).
        Time queued for the rate limiter is waiting, not failing: it does not use the budget,
        unless a 429 blocks the limiter past the step's deadline (then the step gives up at
        once: see :meth:`_send`). ``expect`` checks a successful answer's body: one it refuses
        is a :class:`TransientError` retried like any other. ``tally`` lets the caller see how
        many attempts were made."""
        tally = tally if tally is not None else _Tally()
        policy = policy or self._retry
        ends = deadline if deadline is not None else policy.deadline(self._clock)

        async def attempt() -> _Response:
            response = await self._send(method, path, base=base, body=body, tally=tally, ends=ends)
            if expect is not None and not expect(response.data):
                if method != "GET":
                    tally.unanswered += 1  # a 2xx: DotDigital took it on, we cannot tell what
                raise TransientError(
                    f"{method} {_path_for_messages(path)} answered with an unexpected body"
                )
            return response

        return await policy.run(attempt, self._clock, deadline=deadline, not_counted=tally.queued)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        base: str | None = None,
        body: Any = None,
        tally: _Tally,
        ends: float | None = None,
    ) -> _Response:
        """One HTTP request: pace it, send it, feed the limiter, return the JSON or raise a
        classified :class:`DotDigitalError`. ``path`` is already URL-encoded; the attempt and
        its wait for the limiter are added to ``tally``. When a 429 blocks the limiter past
        ``ends`` (the step's deadline, moved out by its queued time), nothing is sent: a
        :class:`ThrottledError` for the block says so, and the retry policy gives up on it."""
        what = f"{method} {_path_for_messages(path)}"
        url = f"{base or self.endpoint}{path}"
        operation = operation_of(method, path)
        pacer = self._budgets.for_operation(operation)
        headers = {"Accept": "application/json", "Authorization": self._authorization}
        data: bytes | None = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        queued_at = self._clock.monotonic()
        blocked = pacer.blocked_for()
        if ends is not None and blocked > 0 and queued_at + blocked > ends + tally.queued_seconds:
            # Waiting for the limiter is not failing, but waiting past the deadline would hang
            # the step silently: fail it in time instead.
            raise ThrottledError(
                f"{what}: not sent; a 429 blocks the {self._budgets.name_of(operation)} budget "
                f"for {blocked:.0f}s more, past this call's deadline",
                status=429,
                retry_after=blocked,
            )
        sent_at = await pacer.acquire()
        guard = current_guard()
        if guard is not None:
            guard.sending()  # raises Abandoned: nothing new for an operation given up
        tally.attempts += 1
        tally.queued_seconds += sent_at - queued_at
        self._observer.queued(self._budgets.name_of(operation), sent_at - queued_at)
        if tally.attempts > 1:
            self._observer.retried(operation)
        request = Request(method, url, headers, data, self.config.request_timeout_seconds)
        try:
            response = await self._transport.send(request)
        except TransportError as exc:
            # A timeout, a malformed answer, a dropped connection or a truncated body: worth
            # trying again. Only a connection that was never made surely left DotDigital
            # untouched.
            self._observer.request(operation, "network")
            if exc.reached:
                tally.unanswered += method != "GET"
            raise TransientError(f"{what}: {self._describe(exc)}") from None
        except asyncio.CancelledError:
            tally.unanswered += method != "GET"  # cancelled in the air: it may have arrived
            raise
        finally:
            if guard is not None:
                guard.answered()
        status, response_headers, payload = response.status, response.headers, response.body
        self._observer.request(operation, status_class(status))
        log.debug("%s -> %d", what, status)
        try:
            pacer = self._budgets.learn(operation, response_headers)
            pacer.observe(response_headers, sent_at=sent_at)
        except (ValueError, ArithmeticError) as exc:
            # The headers only tune pacing: a value nobody foresaw must not fail the request.
            log.warning("%s: rate-limit headers ignored (%s)", what, type(exc).__name__)
        if 200 <= status < 300:
            if not payload.strip():
                return _Response(None, response_headers)
            try:
                return _Response(orjson.loads(payload), response_headers)
            except orjson.JSONDecodeError:
                tally.unanswered += method != "GET"
                raise TransientError(
                    f"{what}: HTTP {status} with a body that is not JSON"
                ) from None
        error = error_from_response(
            status,
            self._scrub(payload),
            what=what,
            retry_after=_retry_after(response_headers, self._clock.time()),
        )
        if isinstance(error, ThrottledError):
            if error.concurrency_cap:
                self._observer.throttled("concurrency_cap")
                # The rate-limit headers on this 429 describe the call budget, not when an
                # import slot frees up.
                error.retry_after = CONCURRENCY_RETRY_SECONDS
            else:
                apiusage = error.code == APIUSAGE_EXCEEDED
                self._observer.throttled("apiusage_exceeded" if apiusage else "http_429")
                error.retry_after = pacer.throttled(error.retry_after)
        raise error

    def _describe(self, exc: TransportError) -> str:
        # The detail may quote the server's bytes: scrubbed like a body (a malformed answer's
        # also trimmed, since it can be a whole response).
        text = self._scrub(exc.detail.encode(errors="replace")).decode(errors="replace")
        if exc.kind == "malformed":
            return f"malformed response: {' '.join(text.split())[:200]}"
        return text

    def _scrub(self, payload: bytes) -> bytes:
        # A server echoing credentials back must not put them into our messages and logs.
        for secret in self._secrets:
            if secret in payload:
                payload = payload.replace(secret, b"***")
        return payload


def _spellings(*secrets: str) -> tuple[bytes, ...]:
    """Each secret as a response body may carry it: as UTF-8, and as a JSON string escapes it
    (non-ASCII as \\uXXXX, "/" as "\\/", quotes and backslashes), longest first so that a
    spelling that contains another is scrubbed whole."""
    found: set[bytes] = set()
    for secret in filter(None, secrets):
        escaped = json.dumps(secret)[1:-1]
        for spelling in (
            secret,
            escaped,
            escaped.replace("/", "\\/"),
            json.dumps(secret, ensure_ascii=False)[1:-1],
        ):
            found.add(spelling.encode())
    return tuple(sorted(found, key=len, reverse=True))


def _path_for_messages(path: str) -> str:
    """A request's path as error messages and logs show it: no query, and no email address
    (personal data has no place in logs, metrics or dead-letter headers)."""
    path = path.split("?", 1)[0]
    if path.startswith(EMAIL_LOOKUP_PREFIX):
        return EMAIL_LOOKUP_PREFIX + "{email}"
    return path


def _retry_after(headers: Mapping[str, str], now_epoch: float) -> float | None:
    value = headers.get("Retry-After")
    if value is not None:
        seconds = parse_retry_after(value, now_epoch)
        if seconds is not None:
            return seconds
    reset = headers.get("X-RateLimit-Reset")
    return parse_reset(reset, now_epoch) if reset is not None else None


def _email_of(item: object) -> str | None:
    if not isinstance(item, Mapping):
        return None
    identifiers = item.get("identifiers")
    email = identifiers.get("email") if isinstance(identifiers, Mapping) else None
    return normalize_email(email) if isinstance(email, str) else None


def _next_marker(page: Mapping[str, Any]) -> str | None:
    links = page.get("_links")
    following = links.get("next") if isinstance(links, Mapping) else None
    marker = following.get("marker") if isinstance(following, Mapping) else None
    return marker if isinstance(marker, str) and marker else None


def _iso(epoch: float) -> str:
    """``epoch`` as the filters of ``GET /contacts/v3`` take it (UTC, whole seconds)."""
    return datetime.fromtimestamp(math.floor(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _failure_of(item: Mapping[str, Any]) -> tuple[str, str]:
    failures = [f for f in item.get("failures") or () if isinstance(f, Mapping)]
    if not failures:
        return "unknown", "the import reported a failure without details"
    code = str(failures[0].get("failureCode") or "unknown")
    description = "; ".join(str(f.get("description") or f.get("failureCode")) for f in failures)
    return code, description


def _is_mapping(data: object) -> bool:
    return isinstance(data, Mapping)


def _is_book(data: object) -> bool:
    """Whether ``data`` reads as an address book (its size is what removals weigh)."""
    if not isinstance(data, Mapping):
        return False
    try:
        AddressBook.from_json(data)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _job_id(accepted: object, name: str) -> str:
    """The job id under ``name`` in an answer accepting a job, "" when there is none."""
    job_id = accepted.get(name) if isinstance(accepted, Mapping) else None
    return job_id if isinstance(job_id, str) else ""


def _count(report: Mapping[str, Any], section: str) -> int:
    items = report.get(section)
    return len(items) if isinstance(items, list) else 0
