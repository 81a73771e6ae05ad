"""The DotDigital client: region detection, address books, bulk add and bulk remove.

One :class:`DotDigitalClient` per connector (DotDigital account). It owns one aiohttp session,
one rate limiter per bulk operation (``add``: ``PUT /contacts/v3/import``; ``remove``:
``POST /v2/address-books/{id}/contacts/delete``) and one for every other call, a cap on
concurrent imports, and a cache of
the contact ids imports returned (``contact_cache_size`` entries at most, each for
``contact_cache_ttl_seconds``), so a removal can go out before any look-up. A remembered id may
be stale (the contact deleted and re-created with a new id: DotDigital then completes the
removal of the old id and the contact stays), so every contact removed by a remembered id is
looked up once the removal completed, and removed again under its new id if still a member.

Every HTTP step runs under a :class:`~stream.dotdigital.retry.RetryPolicy`. The bulk methods
take an optional ``deadline`` (a ``clock.monotonic()`` value) shared by all the steps of one
call, after which :class:`~stream.dotdigital.errors.RetriesExhausted` is raised. Without one,
each step retries for up to the policy's ``total_seconds`` from its own first attempt. Waiting
for the rate limiter is not failing: time a request spends queued for it moves its step's
deadline out by as much. A job DotDigital accepted is polled for up to ``total_seconds`` from
its acceptance.

A job given up on (still running at the deadline, its polls failing, or the call cancelled) may
yet take effect. The client remembers it, and the next import or removal of that address book
first waits for it to end, for up to one more budget, so that within this process a later
change of a contact is not overtaken by an earlier one. Past that the book goes on without it
(an error is logged): one stuck job must not stall its book for good.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from yarl import URL

from stream.clock import Clock, SystemClock
from stream.config import ConnectorSettings
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
from stream.dotdigital.observe import NO_OBSERVER, ClientObserver, operation_of, status_class
from stream.dotdigital.ratelimit import RateLimiter, RateLimitStatus, parse_reset
from stream.dotdigital.retry import RetryPolicy

__all__ = ["DotDigitalClient", "Operation", "PollSchedule"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Literal["add", "remove"]
# Limiters: the two bulk operations, and everything else (polls, look-ups, address books), so
# that many concurrent polls cannot stampede the account's budget at each reset.
Tier = Literal["add", "remove", "other"]

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
# The v3 import's per-contact failure for a list id the account does not have (the specs'
# examples are camelCase, the docs' table PascalCase: compared case-folded).
INVALID_LIST_FAILURE = "invalidaddressbookids"
# A 429 for the concurrent-job caps says nothing about when a slot frees; poll-like wait.
CONCURRENCY_RETRY_SECONDS = 2.0
VISIBILITIES = ("Private", "Public")
EMAIL_LOOKUP_PREFIX = "/contacts/v3/email/"


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
    """An import or bulk removal DotDigital accepted, polled at ``path`` until it ends."""

    book_id: int
    name: str  # "import <id>", "removal <id>"
    path: str
    done: str  # the status of success
    failed: frozenset[str]

    @property
    def ended(self) -> frozenset[str]:
        return self.failed | {self.done}


class _Tally:
    """One call's attempts, and the seconds they spent waiting for their rate limiter."""

    def __init__(self) -> None:
        self.attempts = 0
        self.queued_seconds = 0.0

    def queued(self) -> float:
        return self.queued_seconds


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

    Build it with :meth:`connect` (detects the region unless the settings pin one), use it as
    an async context manager or call :meth:`close`. Not thread-safe; safe for concurrent use by
    tasks of one event loop.
    """

    def __init__(
        self,
        settings: ConnectorSettings,
        *,
        endpoint: str | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        poll: PollSchedule | None = None,
        lookup_concurrency: int = 16,
        removal_chunk_size: int = 1000,
        observer: ClientObserver | None = None,
    ) -> None:
        """Prefer :meth:`connect`. ``session`` may be injected (the caller then closes it);
        ``endpoint`` is the regional base URL (``None`` until detection ran); ``observer`` is
        told of every request (see :mod:`stream.dotdigital.observe`)."""
        self.settings = settings
        self._observer = observer if observer is not None else NO_OBSERVER
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._retry = retry if retry is not None else RetryPolicy()
        self._poll = poll if poll is not None else PollSchedule()
        endpoint = endpoint or settings.api_endpoint
        self._endpoint = endpoint.rstrip("/") if endpoint else None
        self._own_session = session is None
        self._session = session if session is not None else _new_session(settings)
        # The Authorization value is built once and lives only here: never logged nor shown.
        token = f"{settings.username}:{settings.password.reveal()}".encode()
        self._authorization = "Basic " + base64.b64encode(token).decode("ascii")
        self._secrets = _spellings(settings.password.reveal(), self._authorization[6:])
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout_seconds)
        self._limiters: dict[Tier, RateLimiter] = {
            "add": RateLimiter(settings.add_requests_per_minute, self._clock, operation="add"),
            "remove": RateLimiter(
                settings.remove_requests_per_minute, self._clock, operation="remove"
            ),
            "other": RateLimiter(
                settings.other_requests_per_minute, self._clock, operation="other"
            ),
        }
        self._imports = asyncio.Semaphore(settings.max_active_imports)
        self._lookups = asyncio.Semaphore(lookup_concurrency)
        self._removal_chunk_size = removal_chunk_size
        # normalized email -> (contact id, when learned); insertion order is age order.
        self._contact_ids: dict[str, tuple[int, float]] = {}
        self._contact_cache_size = settings.contact_cache_size
        self._contact_cache_ttl = settings.contact_cache_ttl_seconds
        # Jobs given up on while perhaps still running, by address book and poll path; the
        # next import or removal of the book waits for them (one waiter per book at a time).
        self._unfinished: dict[int, dict[str, tuple[_Job, float]]] = {}  # -> given up at
        self._fences: dict[int, asyncio.Lock] = {}

    @classmethod
    async def connect(
        cls,
        settings: ConnectorSettings,
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
        poll: PollSchedule | None = None,
        deadline: float | None = None,
        observer: ClientObserver | None = None,
    ) -> DotDigitalClient:
        """A ready client: ``settings.api_endpoint`` when set, else the region DotDigital
        names for this account at ``{discovery_endpoint}/v2/account-info`` (property
        ``ApiEndpoint``). Detection runs under ``retry`` (and ``deadline``); its errors
        propagate and the session is closed. ``observer`` sees detection's requests too."""
        client = cls(
            settings, session=session, clock=clock, retry=retry, poll=poll, observer=observer
        )
        if client._endpoint is None:
            try:
                info = await client._account_info(settings.discovery_endpoint, deadline)
                endpoint = info.api_endpoint
                if not endpoint:
                    raise PermanentError(
                        "GET /v2/account-info answered without an ApiEndpoint property"
                    )
                client._endpoint = endpoint
            except BaseException:
                await client.close()
                raise
        log.debug("connector %s uses %s", settings.name, client._endpoint)
        return client

    async def close(self) -> None:
        """Close the session if this client created it. Idempotent."""
        if self._own_session and not self._session.closed:
            await self._session.close()

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
            f"DotDigitalClient(connector={self.settings.name!r}, "
            f"username={self.settings.username!r}, endpoint={self._endpoint!r})"
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

    def limiter(self, operation: Tier) -> RateLimiter:
        """The rate limiter of ``operation`` (``"add"``, ``"remove"`` or ``"other"``)."""
        return self._limiters[operation]

    def rate_limit_status(self) -> dict[str, RateLimitStatus]:
        """What each operation's limiter knows now (limit, available, server's view)."""
        return {name: limiter.status() for name, limiter in self._limiters.items()}

    def known_contact_id(self, email: str) -> int | None:
        """The contact id an import or look-up returned for ``email``, if remembered and not
        older than ``contact_cache_ttl_seconds``."""
        return self._remembered(normalize_email(email))

    def _remembered(self, key: str) -> int | None:
        entry = self._contact_ids.get(key)
        if entry is None:
            return None
        contact_id, learned_at = entry
        if self._clock.monotonic() - learned_at >= self._contact_cache_ttl:
            del self._contact_ids[key]
            return None
        return contact_id

    # -- account ---------------------------------------------------------------------------

    async def account_info(self, *, deadline: float | None = None) -> AccountInfo:
        """``GET /v2/account-info`` on the account's endpoint."""
        return await self._account_info(self.endpoint, deadline)

    async def _account_info(self, base: str, deadline: float | None) -> AccountInfo:
        response = await self._call("GET", "/v2/account-info", base=base, deadline=deadline)
        if not isinstance(response.data, Mapping):
            raise TransientError("GET /v2/account-info answered with an unexpected body")
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
            page = (await self._call("GET", f"/v2/address-books?{query}", deadline=deadline)).data
            if not isinstance(page, list):
                raise TransientError("GET /v2/address-books answered with an unexpected body")
            books.extend(AddressBook.from_json(item) for item in page if isinstance(item, Mapping))
            if len(page) < page_size:
                return books
            skip += page_size

    async def get_address_book(
        self, address_book_id: int, *, deadline: float | None = None
    ) -> AddressBook:
        """One address book; :class:`AddressBookNotFoundError` when it does not exist."""
        response = await self._call(
            "GET",
            f"/v2/address-books/{int(address_book_id)}",
            deadline=deadline,
        )
        data = response.data
        if not isinstance(data, Mapping):
            raise TransientError("GET /v2/address-books/{id} answered with an unexpected body")
        return AddressBook.from_json(data)

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
        if not isinstance(response.data, Mapping):
            raise TransientError("POST /v2/address-books answered with an unexpected body")
        return AddressBook.from_json(response.data)

    async def _book_exists(self, book_id: int, policy: RetryPolicy, deadline: float | None) -> None:
        """Returns when the address book exists; :class:`AddressBookNotFoundError` when
        DotDigital says it does not (``ERROR_ADDRESSBOOK_NOT_FOUND``)."""
        await self._call("GET", f"/v2/address-books/{book_id}", policy=policy, deadline=deadline)

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
        empty string, not sent). Emails compare case-insensitively; one contact is sent per
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
        await self._settle(int(address_book_id), policy, deadline)
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
            accepted = (
                await self._call(
                    "PUT",
                    "/contacts/v3/import",
                    body=body,
                    limiter="add",
                    policy=policy,
                    deadline=deadline,
                )
            ).data
            import_id = accepted.get("importId") if isinstance(accepted, Mapping) else None
            if not isinstance(import_id, str) or not import_id:
                raise TransientError("PUT /contacts/v3/import answered without an importId")
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
            # A contact both imported and failed (e.g. its consent records) is imported.
            if key in names.spellings and key not in imported_ids and key not in failed:
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
                self._remember(key, contact_id)
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
                data = (await self._call("GET", job.path, policy=policy, deadline=deadline)).data
                if not isinstance(data, Mapping):
                    raise TransientError(f"GET {job.path} answered with an unexpected body")
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
                job.path, (job, self._clock.monotonic())
            )
            raise
        finally:
            if guard is not None:
                guard.polled()
        self._forget(job)
        return status, body

    def _forget(self, job: _Job) -> None:
        unfinished = self._unfinished.get(job.book_id)
        if unfinished is not None:
            unfinished.pop(job.path, None)
            if not unfinished:
                del self._unfinished[job.book_id]

    async def _settle(self, book_id: int, policy: RetryPolicy, deadline: float | None) -> None:
        """Wait for the jobs of this address book given up on earlier to end, so that this
        call does not overtake them: each for up to this call's budget from when it was given
        up on, then go on without it (logged as an error). :class:`RetriesExhausted` when this
        call's own deadline comes first."""
        if book_id not in self._unfinished:
            return
        async with self._fences.setdefault(book_id, asyncio.Lock()):
            for job, given_up_at in list(self._unfinished.get(book_id, {}).values()):
                until = given_up_at + policy.total_seconds
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

    def _job_deadline(self, policy: RetryPolicy, deadline: float | None) -> float:
        """How long to wait for an accepted job: the call's deadline, else a budget from now."""
        return deadline if deadline is not None else policy.deadline(self._clock)

    def _remember(self, key: str, contact_id: int) -> None:
        cache = self._contact_ids
        if key not in cache and len(cache) >= self._contact_cache_size:
            # Oldest first (dicts keep insertion order): drop a tenth at once, amortized O(1).
            for old in list(_take(iter(cache), max(1, self._contact_cache_size // 10))):
                del cache[old]
        # Re-inserted, not updated in place: the dict's order stays the order of age.
        cache.pop(key, None)
        cache[key] = (contact_id, self._clock.monotonic())

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

        Contact ids come from earlier imports, else from ``GET /contacts/v3/email/{email}``
        (bounded concurrency). A contact DotDigital does not know, or that is not in the book,
        counts as removed (listed in ``not_found`` too). The rest go in bulk removals
        (``POST /v2/address-books/{id}/contacts/delete``) polled until ``Completed``; the
        contacts removed by a remembered id are then looked up, and removed again under their
        current id when still in the book (their remembered id was stale).
        Raises :class:`AddressBookNotFoundError` when the book does not exist (asked with
        ``GET /v2/address-books/{id}`` when no removal is to be sent),
        :class:`RemovalFailedError` when DotDigital reports the removal ``Failed``,
        :class:`RetriesExhausted` past ``deadline``.
        """
        policy = retry or self._retry
        book_id = int(address_book_id)
        # Before the look-ups: an earlier import still running may yet add these contacts.
        await self._settle(book_id, policy, deadline)
        names = _Names(emails)
        rejected = names.empty_rejections()
        ids: dict[str, int] = {}
        cached: set[str] = set()
        to_look_up: list[str] = []
        for key in names.spellings:
            contact_id = self._remembered(key)
            if contact_id is None:
                to_look_up.append(key)
            else:
                ids[key] = contact_id
                cached.add(key)
        not_found: set[str] = set()
        lookup_rejected: dict[str, Rejection] = {}
        await self._look_up(
            to_look_up, names, book_id, policy, deadline, ids, not_found, lookup_rejected
        )
        if not ids and not_found:
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
                stale = [k for k in chunk if k in cached]
                if isinstance(error, AddressBookNotFoundError | RemovalFailedError) or not stale:
                    raise
                # A remembered id may be stale (contact deleted and re-created meanwhile):
                # resolve those emails afresh and try the chunk once more.
                log.info("removal failed (%s); looking up %d remembered ids", error, len(stale))
                for key in stale:
                    self._contact_ids.pop(key, None)
                    cached.discard(key)
                    del ids[key]
                await self._look_up(
                    stale, names, book_id, policy, deadline, ids, not_found, lookup_rejected
                )
                retry_ids = [ids[k] for k in chunk if k in ids]
                if retry_ids:
                    deletion_ids.append(
                        await self._delete_members(book_id, retry_ids, policy, deadline)
                    )
        deletion_ids.extend(
            await self._remove_stale(
                [k for k in keys if k in cached], ids, names, book_id, policy, deadline
            )
        )

        for key, rejection in lookup_rejected.items():
            for email in names.spellings[key]:
                rejected[email] = Rejection(email, rejection.failure_code, rejection.description)
        done_keys = [k for k in names.spellings if k not in lookup_rejected]
        return RemovalOutcome(
            removed=frozenset(names.expand(done_keys)),
            not_found=frozenset(names.expand(k for k in done_keys if k in not_found)),
            rejected=rejected,
            deletion_ids=tuple(deletion_ids),
        )

    async def _remove_stale(
        self,
        keys: Sequence[str],
        sent: Mapping[str, int],
        names: _Names,
        book_id: int,
        policy: RetryPolicy,
        deadline: float | None,
    ) -> list[str]:
        """After a completed removal by remembered ids (``sent``), look those contacts up and
        remove again the ones still in the book under another id; returns those removals.

        DotDigital completes the removal of an id it does not know, so a stale id would leave
        its contact in the book while reporting it removed. One look-up per contact, on the
        ``other`` budget: what removing a contact not remembered costs anyway.
        """
        current: dict[str, int] = {}
        await self._look_up(keys, names, book_id, policy, deadline, current, set(), {})
        stale = [k for k, contact_id in current.items() if contact_id != sent[k]]
        if not stale:
            return []
        log.info("address book %s: %d remembered contact ids were stale", book_id, len(stale))
        deletion_ids = []
        for start in range(0, len(stale), self._removal_chunk_size):
            chunk = stale[start : start + self._removal_chunk_size]
            deletion_ids.append(
                await self._delete_members(book_id, [current[k] for k in chunk], policy, deadline)
            )
        return deletion_ids

    async def _look_up(
        self,
        keys: Sequence[str],
        names: _Names,
        book_id: int,
        policy: RetryPolicy,
        deadline: float | None,
        ids: dict[str, int],
        not_found: set[str],
        rejected: dict[str, Rejection],
    ) -> None:
        async def one(key: str) -> None:
            email = names.sent[key]
            path = f"{EMAIL_LOOKUP_PREFIX}{quote(email, safe='@')}"
            async with self._lookups:
                try:
                    contact = (await self._call("GET", path, policy=policy, deadline=deadline)).data
                except PermanentError as error:
                    # Only DotDigital's own "contact not found" means already removed; a bare
                    # 404 (a proxy's) is UnrecognizedNotFoundError, retried and never success.
                    if error.code in CONTACT_NOT_FOUND_CODES:
                        not_found.add(key)
                        return
                    rejected[key] = Rejection(email, error.code or "invalidEmail", error.message)
                    return
            contact_id = contact.get("contactId") if isinstance(contact, Mapping) else None
            if not isinstance(contact_id, int):
                raise TransientError(f"GET {path} answered without a contactId")
            self._remember(key, contact_id)
            lists = contact.get("lists")
            if isinstance(lists, list) and not any(
                isinstance(item, Mapping) and item.get("id") == book_id for item in lists
            ):
                not_found.add(key)  # known, but not a member: nothing to remove
                return
            ids[key] = contact_id

        if not keys:
            return
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
        response = await self._call(
            "POST",
            f"/v2/address-books/{book_id}/contacts/delete",
            body=contact_ids,
            limiter="remove",
            policy=policy,
            deadline=deadline,
        )
        accepted = response.data
        deletion_id = accepted.get("id") if isinstance(accepted, Mapping) else None
        if not isinstance(deletion_id, str) or not deletion_id:
            raise TransientError("POST /v2/address-books/{id}/contacts/delete answered without id")
        job = _Job(
            book_id,
            f"removal {deletion_id}",
            f"/v2/contacts/deletion/{quote(deletion_id, safe='')}",
            "Completed",
            DELETION_FAILED_STATUSES,
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
        limiter: Operation | None = None,
        policy: RetryPolicy | None = None,
        deadline: float | None = None,
        tally: _Tally | None = None,
    ) -> _Response:
        """One HTTP step under the retry policy (its ``.data`` is the decoded JSON body).
        Time queued for the rate limiter is waiting, not failing: it does not use the budget.
        ``tally`` lets the caller see how many attempts were made."""
        tally = tally if tally is not None else _Tally()

        def attempt() -> Awaitable[_Response]:
            return self._send(
                method,
                path,
                base=base,
                body=body,
                limiter=limiter,
                tally=tally,
            )

        return await (policy or self._retry).run(
            attempt, self._clock, deadline=deadline, not_counted=tally.queued
        )

    async def _send(
        self,
        method: str,
        path: str,
        *,
        base: str | None = None,
        body: Any = None,
        limiter: Operation | None = None,
        tally: _Tally,
    ) -> _Response:
        """One HTTP request: pace it, send it, feed the limiter, return the JSON or raise a
        classified :class:`DotDigitalError`. ``path`` is already URL-encoded; the attempt and
        its wait for the limiter are added to ``tally``."""
        what = f"{method} {_path_for_messages(path)}"
        url = URL(f"{base or self.endpoint}{path}", encoded=True)
        pacer = self._limiters[limiter or "other"]
        operation = operation_of(method, path)
        headers = {"Accept": "application/json", "Authorization": self._authorization}
        data: bytes | None = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        queued_at = self._clock.monotonic()
        sent_at = await pacer.acquire()
        guard = current_guard()
        if guard is not None:
            guard.sending()  # raises Abandoned: nothing new for an operation given up
        tally.attempts += 1
        tally.queued_seconds += sent_at - queued_at
        self._observer.queued(limiter or "other", sent_at - queued_at)
        if tally.attempts > 1:
            self._observer.retried(operation)
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, timeout=self._timeout
            ) as response:
                payload = await response.read()
                status = response.status
                response_headers = response.headers
        except TimeoutError:
            self._observer.request(operation, "network")
            raise TransientError(
                f"{what}: no response within {self.settings.request_timeout_seconds:g}s"
            ) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            self._observer.request(operation, "network")
            raise TransientError(f"{what}: {_describe(exc)}") from None
        finally:
            if guard is not None:
                guard.answered()
        self._observer.request(operation, status_class(status))
        log.debug("%s -> %d", what, status)
        pacer.observe(response_headers, sent_at=sent_at)
        if 200 <= status < 300:
            if not payload.strip():
                return _Response(None, response_headers)
            try:
                return _Response(orjson.loads(payload), response_headers)
            except orjson.JSONDecodeError:
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


def _new_session(settings: ConnectorSettings) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=settings.request_timeout_seconds),
        headers={"User-Agent": "ddsync"},
        # Look-ups run concurrently; keep connections reused rather than opened per call.
        connector=aiohttp.TCPConnector(limit=64),
    )


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
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    reset = headers.get("X-RateLimit-Reset")
    return parse_reset(reset, now_epoch) if reset is not None else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc})"
    text = str(exc) or type(exc).__name__
    return f"connection failed: {text}"


def _email_of(item: object) -> str | None:
    if not isinstance(item, Mapping):
        return None
    identifiers = item.get("identifiers")
    email = identifiers.get("email") if isinstance(identifiers, Mapping) else None
    return normalize_email(email) if isinstance(email, str) else None


def _failure_of(item: Mapping[str, Any]) -> tuple[str, str]:
    failures = [f for f in item.get("failures") or () if isinstance(f, Mapping)]
    if not failures:
        return "unknown", "the import reported a failure without details"
    code = str(failures[0].get("failureCode") or "unknown")
    description = "; ".join(str(f.get("description") or f.get("failureCode")) for f in failures)
    return code, description


def _count(report: Mapping[str, Any], section: str) -> int:
    items = report.get(section)
    return len(items) if isinstance(items, list) else 0


def _take(items: Iterator[str], count: int) -> Iterator[str]:
    for _, item in zip(range(count), items, strict=False):
        yield item
