"""The DotDigital client: region detection, address books, bulk add and bulk remove.

One :class:`DotDigitalClient` per connector (DotDigital account). It sends through one
:class:`~stream.dotdigital.transport.Transport` (its own aiohttp one unless given another), owns
the account's rate limiters (:mod:`~stream.dotdigital.budgets`: the configured budgets of
imports, bulk removals and every other call, then one per tier the responses name), a cap on
concurrent imports, and the contact ids imports and pages of members returned
(:mod:`~stream.dotdigital.contact_ids`), so a removal can go out without resolving its emails.
The others are resolved in bulk (:mod:`~stream.dotdigital.members`).

This module is the facade; each part keeps its contract in its own module:
:mod:`~stream.dotdigital.http` (one HTTP step: pacing, retries, deadlines, what is transient,
scrubbing), :mod:`~stream.dotdigital.jobs` (polling accepted jobs, and holding an address
book's next call until a job given up on ends), :mod:`~stream.dotdigital.address_books`,
:mod:`~stream.dotdigital.imports` and :mod:`~stream.dotdigital.removals` (stale remembered
ids included). The bulk methods take an optional ``deadline`` (a ``clock.monotonic()`` value)
shared by all the steps of one call, after which
:class:`~stream.dotdigital.errors.RetriesExhausted` is raised.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Self

from stream.clock import Clock, SystemClock
from stream.dotdigital.address_books import PAGE_SIZE, AddressBooks
from stream.dotdigital.budgets import Budget, Budgets
from stream.dotdigital.config import ClientConfig
from stream.dotdigital.contact_ids import ContactIds
from stream.dotdigital.errors import PermanentError
from stream.dotdigital.http import BookCall, Http, is_mapping
from stream.dotdigital.imports import Imports
from stream.dotdigital.jobs import Jobs, Operation, PollSchedule
from stream.dotdigital.members import Members
from stream.dotdigital.models import (
    AccountInfo,
    AddressBook,
    ImportOutcome,
    RemovalOutcome,
    normalize_email,
)
from stream.dotdigital.observe import NO_OBSERVER, ClientObserver
from stream.dotdigital.ratelimit import RateLimiter, RateLimitStatus
from stream.dotdigital.removals import Removals
from stream.dotdigital.retry import RetryPolicy
from stream.dotdigital.transport import AiohttpTransport, Transport

__all__ = ["DotDigitalClient", "Operation", "PollSchedule"]

log = logging.getLogger(__name__)


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
        observer = observer if observer is not None else NO_OBSERVER
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._own_transport: AiohttpTransport | None = None
        if transport is None:
            transport = self._own_transport = AiohttpTransport()
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
            on_new=lambda name, limiter: observer.budget(name, lambda: limiter.limit),
            on_gone=observer.budget_gone,
        )
        endpoint = endpoint or config.api_endpoint
        self._http = Http(
            transport,
            config,
            endpoint=endpoint.rstrip("/") if endpoint else None,
            budgets=self._budgets,
            clock=self._clock,
            retry=retry if retry is not None else RetryPolicy(),
            observer=observer,
        )
        self._contact_ids = ContactIds(
            config.contact_cache_size, config.contact_cache_ttl_seconds, self._clock
        )
        self._books = AddressBooks(self._http)
        jobs = Jobs(self._http, self._clock, poll if poll is not None else PollSchedule())
        self._members = members = Members(
            self._http,
            self._books,
            self._contact_ids,
            self._budgets,
            lookup_concurrency=lookup_concurrency,
        )
        self._imports = Imports(
            self._http,
            jobs,
            self._books,
            self._contact_ids,
            observer,
            max_active=config.max_active_imports,
        )
        self._removals = Removals(
            self._http,
            jobs,
            self._books,
            members,
            self._contact_ids,
            chunk_size=removal_chunk_size,
        )

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
        if client._http.endpoint is None:
            try:
                info = await client._account_info(config.discovery_endpoint, deadline)
                endpoint = info.api_endpoint
                if not endpoint:
                    raise PermanentError(
                        "GET /v2/account-info answered without an ApiEndpoint property"
                    )
                client._http.endpoint = endpoint
            except BaseException:
                await client.close()
                raise
        log.debug("connector %s uses %s", config.name, client._http.endpoint)
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
            f"username={self.config.username!r}, endpoint={self._http.endpoint!r})"
        )

    @property
    def endpoint(self) -> str:
        """The regional base URL in use, without a trailing slash."""
        if self._http.endpoint is None:
            raise RuntimeError("the client is not connected: use DotDigitalClient.connect()")
        return self._http.endpoint

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._http.retry

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
        reply = await self._http.call(
            "GET", "/v2/account-info", base=base, deadline=deadline, expect=is_mapping
        )
        rate_limit = {
            key.lower(): value
            for key, value in reply.headers.items()
            if key.lower().startswith("x-ratelimit-")
        }
        return AccountInfo.from_json(reply.data, rate_limit_headers=rate_limit)

    # -- address books ---------------------------------------------------------------------

    async def list_address_books(
        self, *, page_size: int = PAGE_SIZE, deadline: float | None = None
    ) -> list[AddressBook]:
        """Every address book, fetched in pages of ``page_size`` (1..1000) until a short one."""
        return await self._books.list_all(page_size=page_size, deadline=deadline)

    async def get_address_book(
        self, address_book_id: int, *, deadline: float | None = None
    ) -> AddressBook:
        """One address book; :class:`AddressBookNotFoundError` when it does not exist."""
        return await self._books.get(BookCall(int(address_book_id), self._http.retry, deadline))

    async def create_address_book(
        self,
        name: str,
        visibility: str = "Private",
        *,
        exist_ok: bool = False,
        deadline: float | None = None,
    ) -> AddressBook:
        """Create an address book; a name in use raises :class:`DuplicateAddressBookError`
        unless ``exist_ok`` (see :meth:`AddressBooks.create`)."""
        return await self._books.create(name, visibility, exist_ok=exist_ok, deadline=deadline)

    async def members(
        self, address_book_id: int, *, deadline: float | None = None
    ) -> AsyncGenerator[list[tuple[str, int]], None]:
        """The book's members a page (``GET /contacts/v3?~listId=``, 5,000 a page) at a time,
        as (normalized email, contact id); one call a page, each retried and paced like any
        other call. Their ids are remembered, so removing them needs no look-up."""
        call = BookCall(int(address_book_id), self._http.retry, deadline)
        async with contextlib.aclosing(self._members.pages(call)) as pages:
            async for page in pages:
                yield page

    # -- bulk add and remove ---------------------------------------------------------------

    async def import_contacts(
        self,
        address_book_id: int,
        emails: Sequence[str],
        *,
        deadline: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> ImportOutcome:
        """Add ``emails`` to the address book with one v3 import, polled until it finishes
        (see :mod:`~stream.dotdigital.imports`). Raises :class:`ImportFailedError` when the
        import as a whole ends badly, :class:`AddressBookNotFoundError` when the book is gone,
        :class:`RetriesExhausted` past ``deadline``, or the request's error when it is not
        retryable."""
        call = BookCall(int(address_book_id), retry or self._http.retry, deadline)
        return await self._imports.run(call, emails)

    async def remove_contacts(
        self,
        address_book_id: int,
        emails: Sequence[str],
        *,
        deadline: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> RemovalOutcome:
        """Take ``emails`` out of the address book; the contacts themselves stay (see
        :mod:`~stream.dotdigital.removals`). Raises :class:`AddressBookNotFoundError` when the
        book does not exist, :class:`RemovalFailedError` when DotDigital reports the removal
        ``Failed``, :class:`RetriesExhausted` past ``deadline``."""
        call = BookCall(int(address_book_id), retry or self._http.retry, deadline)
        return await self._removals.run(call, emails)
