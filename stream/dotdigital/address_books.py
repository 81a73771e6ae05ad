"""DotDigital's address books (lists): listed in pages, read one at a time, created by name.

Contract: an answer that does not read as address books is transient (retried, see
:mod:`~stream.dotdigital.http`); a book that does not exist is
:class:`~stream.dotdigital.errors.AddressBookNotFoundError`; creating a name in use is
:class:`~stream.dotdigital.errors.DuplicateAddressBookError` unless the caller accepts the
existing book, or a lost answer to an earlier attempt most likely created it.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

from stream.dotdigital.errors import DuplicateAddressBookError
from stream.dotdigital.http import BookCall, Http, Tally, is_mapping
from stream.dotdigital.models import AddressBook

__all__ = ["PAGE_SIZE", "VISIBILITIES", "AddressBooks", "is_book"]

PAGE_SIZE = 1000
VISIBILITIES = ("Private", "Public")


class AddressBooks:
    """The address-book calls of one client."""

    def __init__(self, http: Http) -> None:
        self._http = http

    async def list_all(
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
                await self._http.call(
                    "GET",
                    f"/v2/address-books?{query}",
                    deadline=deadline,
                    expect=lambda data: (
                        isinstance(data, list)
                        and all(is_book(item) for item in data if isinstance(item, Mapping))
                    ),
                )
            ).data
            books.extend(AddressBook.from_json(item) for item in page if isinstance(item, Mapping))
            if len(page) < page_size:
                return books
            skip += page_size

    async def get(self, call: BookCall) -> AddressBook:
        """The call's address book, which so exists; :class:`AddressBookNotFoundError` when
        DotDigital says it does not (``ERROR_ADDRESSBOOK_NOT_FOUND``)."""
        reply = await self._http.call(
            "GET",
            f"/v2/address-books/{call.book_id}",
            policy=call.policy,
            deadline=call.deadline,
            expect=is_book,
        )
        return AddressBook.from_json(reply.data)

    async def create(
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
        tally = Tally()
        try:
            reply = await self._http.call(
                "POST",
                "/v2/address-books",
                body={"name": name, "visibility": visibility},
                deadline=deadline,
                tally=tally,
                # A retry after an unreadable answer finds the name taken: handled below.
                expect=is_mapping,
            )
        except DuplicateAddressBookError as error:
            if not exist_ok and tally.attempts <= 1:
                raise DuplicateAddressBookError(
                    f"an address book or segment named {name!r} already exists",
                    status=error.status,
                    code=error.code,
                ) from None
            existing = await self._find(name, deadline)
            if existing is None:
                raise DuplicateAddressBookError(
                    f"the name {name!r} is in use, but not by an address book "
                    "(DotDigital also reserves segment names and 'Test'/'All contacts')",
                    status=error.status,
                    code=error.code,
                ) from None
            return existing
        return AddressBook.from_json(reply.data)

    async def _find(self, name: str, deadline: float | None) -> AddressBook | None:
        books = await self.list_all(deadline=deadline)
        for book in books:
            if book.name == name:
                return book
        folded = name.casefold()
        return next((book for book in books if book.name.casefold() == folded), None)


def is_book(data: object) -> bool:
    """Whether ``data`` reads as an address book (its size is what removals weigh)."""
    if not isinstance(data, Mapping):
        return False
    try:
        AddressBook.from_json(data)
    except (TypeError, ValueError, OverflowError):
        return False
    return True
