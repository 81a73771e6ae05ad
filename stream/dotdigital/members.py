"""Which emails are members of an address book, and under which contact ids.

Contract: :meth:`Members.resolve` answers with a :class:`Resolved` at the least cost to the
account's budget, by looking each email up (``GET /contacts/v3/email/{email}``, one call a
contact) or by paging the book's members (``GET /contacts/v3?~listId=``, :data:`MEMBERS_PAGE_SIZE`
a call). Every contact id read either way is remembered (:mod:`~stream.dotdigital.contact_ids`),
so the book's next removals need no resolving. Only DotDigital's own "contact not found" (or an
identifier that cannot be an email address) makes an email absent; any other refusal of a
look-up rejects that email, and a failure that is not about the contact fails the whole call.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from stream.dotdigital.address_books import AddressBooks
from stream.dotdigital.budgets import Budgets
from stream.dotdigital.contact_ids import ContactIds
from stream.dotdigital.emails import email_of
from stream.dotdigital.errors import PermanentError, TransientError
from stream.dotdigital.http import EMAIL_LOOKUP_PREFIX, BookCall, Http, is_id
from stream.dotdigital.models import Rejection
from stream.dotdigital.observe import ApiOperation

__all__ = ["MEMBERS_PAGE_SIZE", "Members", "Resolved"]

# GET /contacts/v3 returns up to 5,000 contacts a page (the specification's maximum).
MEMBERS_PAGE_SIZE = 5000
CONTACT_NOT_FOUND_CODES = frozenset({"contacts:contactNotFound", "ERROR_CONTACT_NOT_FOUND"})
# A look-up DotDigital refuses because the value cannot be an email address: no such contact
# can be in a book, so its removal is done (as when the book is paged and it is not there).
INVALID_IDENTIFIER_CODES = frozenset({"contacts:invalidId"})


@dataclass(frozen=True)
class Resolved:
    """Emails of one removal resolved against its address book (normalized emails)."""

    ids: Mapping[str, int] = field(default_factory=dict)  # members, by contact id
    absent: frozenset[str] = frozenset()  # unknown to DotDigital, or not a member
    rejected: Mapping[str, Rejection] = field(default_factory=dict)  # refused by DotDigital
    book_checked: bool = False  # the book's existence was confirmed on the way

    def __or__(self, other: Resolved) -> Resolved:
        """Both, ``other`` winning where they differ (it was resolved later)."""
        return Resolved(
            {**self.ids, **other.ids},
            self.absent | other.absent,
            {**self.rejected, **other.rejected},
            self.book_checked or other.book_checked,
        )


class Members:
    """Resolves emails to the members of a book for one client; at most ``lookup_concurrency``
    look-ups run at once."""

    def __init__(
        self,
        http: Http,
        books: AddressBooks,
        contact_ids: ContactIds,
        budgets: Budgets,
        *,
        lookup_concurrency: int,
    ) -> None:
        self._http = http
        self._books = books
        self._contact_ids = contact_ids
        self._budgets = budgets
        self._lookups = asyncio.Semaphore(lookup_concurrency)

    async def resolve(self, emails: Mapping[str, str], call: BookCall) -> Resolved:
        """Which of ``emails`` (normalized -> as sent) are members of the call's book, and
        under which contact ids, at the least cost to the account's budget.

        Looking each email up costs one call a contact; paging the book's members costs one
        call to learn its size (``GET /v2/address-books/{id}``, which also confirms the book
        exists) and one a :data:`MEMBERS_PAGE_SIZE` members, and stops once every email is
        found. Calls are weighed by the budget of the limiter that paces each (so a tier learnt
        to be scarcer weighs more); paging is chosen when it costs less.
        """
        if not emails:
            return Resolved()
        lookups = self.cost("contact_lookup", len(emails))
        checked = Resolved()
        if self.cost("address_books", 1) + self.cost("contact_list", 1) < lookups:
            book = await self._books.get(call)
            checked = Resolved(book_checked=True)
            pages = max(1, math.ceil(book.contacts / MEMBERS_PAGE_SIZE))
            if self.cost("contact_list", pages) < lookups:
                return checked | await self._find(emails.keys(), call)
        return checked | await self.look_up(emails, call)

    def cost(self, operation: ApiOperation, calls: int) -> float:
        """``calls`` requests of ``operation`` in minutes of the budget that paces them."""
        return calls / self._budgets.for_operation(operation).limit

    async def look_up(self, emails: Mapping[str, str], call: BookCall) -> Resolved:
        """Resolve each of ``emails`` (normalized -> as sent) with its own
        ``GET /contacts/v3/email/{email}``."""

        async def one(key: str, email: str) -> int | Rejection | None:
            """The contact id of a member, the refusal of its look-up, or None: absent."""
            path = f"{EMAIL_LOOKUP_PREFIX}{quote(email, safe='@')}"
            async with self._lookups:
                try:
                    contact = (
                        await self._http.call(
                            "GET",
                            path,
                            policy=call.policy,
                            deadline=call.deadline,
                            expect=lambda data: (
                                isinstance(data, Mapping) and is_id(data.get("contactId"))
                            ),
                        )
                    ).data
                except PermanentError as error:
                    # Only DotDigital's own "contact not found" means already removed; a bare
                    # 404 (a proxy's) is UnrecognizedNotFoundError, retried and never success.
                    if error.code in CONTACT_NOT_FOUND_CODES | INVALID_IDENTIFIER_CODES:
                        return None
                    return Rejection(email, error.code or "invalidEmail", error.message)
            contact_id: int = contact["contactId"]
            self._contact_ids.learn(key, contact_id)
            lists = contact.get("lists")
            if isinstance(lists, list) and not any(
                isinstance(item, Mapping) and item.get("id") == call.book_id for item in lists
            ):
                return None  # known, but not a member: nothing to remove
            return contact_id

        try:
            async with asyncio.TaskGroup() as group:
                tasks = {key: group.create_task(one(key, email)) for key, email in emails.items()}
        except ExceptionGroup as failures:
            # Callers act on the error's class (auth, retries exhausted, ...), not on a group.
            raise failures.exceptions[0] from None
        found = {key: task.result() for key, task in tasks.items()}
        return Resolved(
            ids={key: value for key, value in found.items() if isinstance(value, int)},
            absent=frozenset(key for key, value in found.items() if value is None),
            rejected={key: value for key, value in found.items() if isinstance(value, Rejection)},
        )

    async def _find(self, keys: Collection[str], call: BookCall) -> Resolved:
        """Page the book's members until every one of ``keys`` is found or none is left."""
        wanted = set(keys)
        ids: dict[str, int] = {}
        async with contextlib.aclosing(self.pages(call)) as pages:
            async for page in pages:
                for key, contact_id in page:
                    if key in wanted:
                        ids[key] = contact_id
                        wanted.discard(key)
                if not wanted:
                    break
        return Resolved(ids=ids, absent=frozenset(wanted))

    async def pages(
        self, call: BookCall, *, created_since: float | None = None
    ) -> AsyncGenerator[list[tuple[str, int]], None]:
        """The book's members, a page (``GET /contacts/v3?~listId=``) at a time, as
        (normalized email, contact id); only those created at or after ``created_since`` (Unix
        seconds) when given. Every member read is remembered. Members without an email address
        are left out (they cannot be any contact ddsync syncs)."""
        query: dict[str, str | int] = {"~listId": call.book_id, "limit": MEMBERS_PAGE_SIZE}
        if created_since is not None:
            query["~created"] = "gte::" + _iso(created_since)
        marker: str | None = None
        while True:
            path = "/contacts/v3?" + urlencode(
                query if marker is None else {**query, "marker": marker}
            )
            data = (
                await self._http.call(
                    "GET",
                    path,
                    policy=call.policy,
                    deadline=call.deadline,
                    expect=lambda data: (
                        isinstance(data, Mapping) and isinstance(data.get("_items"), list)
                    ),
                )
            ).data
            items = data["_items"]
            page: list[tuple[str, int]] = []
            for item in items:
                key = email_of(item)
                contact_id = item.get("contactId") if isinstance(item, Mapping) else None
                if key and is_id(contact_id):
                    self._contact_ids.learn(key, contact_id)
                    page.append((key, contact_id))
            yield page
            following = _next_marker(data)
            if following is None or not items:
                return
            if following == marker:
                raise TransientError("GET /contacts/v3 answered the same page marker twice")
            marker = following


def _next_marker(page: Mapping[str, Any]) -> str | None:
    links = page.get("_links")
    following = links.get("next") if isinstance(links, Mapping) else None
    marker = following.get("marker") if isinstance(following, Mapping) else None
    return marker if isinstance(marker, str) and marker else None


def _iso(epoch: float) -> str:
    """``epoch`` as the filters of ``GET /contacts/v3`` take it (UTC, whole seconds)."""
    return datetime.fromtimestamp(math.floor(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
