"""What the sandbox remembers: address books, contacts, memberships, import and deletion jobs.

Contract:

* Every write is (amortised) O(1) or O(size of its own batch): contacts are found through
  dicts keyed by lower-cased email, mobile number and id; memberships are kept on both sides
  (book -> contact ids as an :class:`IdIndex`, contact -> book ids as a set), so a book's
  ``contacts`` count is a ``len``.
* Listing (``getContacts``, :meth:`AccountState.list_contacts`) walks contact ids in ascending
  order from just after a given id: a page costs O(log n + page size + ids it skips), plus
  one sort of a book after existing contacts joined it (see :class:`IdIndex`). Filters on
  ``created``/``updated`` are checked contact by contact, so a selective one can skip many.
* ``created`` is set once, when a contact is created (by an import or by
  :meth:`AccountState.recreate_contact`). ``updated`` moves when an import changes the contact
  (identifiers, data fields) or adds it to a list, and when a removal takes it out of a list;
  an import that changes nothing leaves it. Both come from the injected clock; a job's changes
  carry the time the job was due to finish, not the time someone next looked. Times have
  whole-second precision, as the API shows them.
* Asynchronous jobs (imports, bulk removals) take effect when they complete, not when they are
  submitted: :meth:`AccountState.settle` applies every job whose due time has passed, in due
  order, and is called before anything reads or writes the account. So a poll that says
  ``Finished``/``Completed`` and a later look-up always agree.
* Emails are matched case-insensitively; a contact keeps the spelling it was created with.
* Contact ids and address-book ids are unique across the whole sandbox, like DotDigital's.
* Nothing here knows HTTP; :mod:`stream.sandbox.routes` maps the results and
  :class:`SandboxError` to responses.
"""

from __future__ import annotations

import bisect
import heapq
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Literal

from stream.clock import Clock
from stream.sandbox.accounts import RESERVED_BOOK_NAMES, SandboxAccount

MAX_ACTIVE_IMPORTS = 25
MAX_BOOK_NAME = 128

_ABSENT: Any = object()

# Deliberately simple: one "@", no whitespace, a dot in the domain. Real DotDigital is
# stricter, but this is enough to tell test data "bad@" from "good@example.com".
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_MOBILE = re.compile(r"^\+?[0-9]{7,15}$")


class SandboxError(Exception):
    """A request the account cannot honour; ``kind`` tells routes which response to send."""

    def __init__(
        self,
        kind: Literal[
            "book_not_found",
            "contact_not_found",
            "duplicate_name",
            "invalid",
            "too_many_imports",
            "import_not_found",
            "deletion_not_found",
        ],
        detail: str = "",
    ) -> None:
        super().__init__(detail or kind)
        self.kind = kind
        self.detail = detail


class IdIndex:
    """A set of ids that can also be walked in ascending order from any id (for paging).

    Membership is a set, so ``add``/``discard``/``in``/``len`` are O(1). The ascending order is
    a sorted list kept up to date where that is cheap: an id above every id before it (a new
    contact: ids only grow) is appended; a discarded id stays in the list as a hole that the
    walk skips, compacted once holes outnumber members. Only adding an id below the largest
    (an existing contact joining a book) leaves the list unsorted; the next walk sorts it
    again, once per batch of such changes rather than once per page.
    """

    __slots__ = ("_ids", "_order", "_unsorted")

    def __init__(self) -> None:
        self._ids: set[int] = set()
        self._order: list[int] = []
        self._unsorted = False

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids)

    def add(self, id_: int) -> None:
        if id_ in self._ids:
            return
        self._ids.add(id_)
        if not self._unsorted and (not self._order or id_ > self._order[-1]):
            self._order.append(id_)
        else:
            self._unsorted = True

    def discard(self, id_: int) -> None:
        if id_ not in self._ids:
            return
        self._ids.discard(id_)
        if not self._unsorted and len(self._order) > 2 * len(self._ids) + 64:
            self._order = [i for i in self._order if i in self._ids]

    def ascending(self, after: int = 0) -> Iterator[int]:
        """The ids greater than ``after``, smallest first. Do not change the index while
        walking it (the sandbox never awaits in between)."""
        if self._unsorted:
            self._order = sorted(self._ids)
            self._unsorted = False
        order, ids = self._order, self._ids
        for position in range(bisect.bisect_right(order, after), len(order)):
            if order[position] in ids:
                yield order[position]


@dataclass
class AddressBook:
    id: int
    name: str
    visibility: str
    members: IdIndex = field(default_factory=IdIndex)

    def as_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "visibility": self.visibility,
            "contacts": len(self.members),
        }


@dataclass
class Contact:
    id: int
    email: str | None
    mobile: str | None
    # Unix times from the sandbox's clock (shown as ISO 8601 by ``contact_as_api``).
    created: float
    updated: float
    data_fields: dict[str, Any] = field(default_factory=dict)
    lists: set[int] = field(default_factory=set)

    def identifiers(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.email is not None:
            found["email"] = self.email
        if self.mobile is not None:
            found["mobileNumber"] = self.mobile
        return found


@dataclass(frozen=True)
class ContactQuery:
    """What ``GET /contacts/v3`` asks for: contacts with ids above ``after``, at most ``limit``,
    optionally only members of ``list_id`` and only those created/updated at or after a Unix
    time. ``segment_id``: the sandbox has no segments, so a segment has no members."""

    after: int = 0
    limit: int = 5000
    list_id: int | None = None
    segment_id: int | None = None
    created_from: float | None = None
    modified_from: float | None = None


@dataclass
class ImportJob:
    id: str
    due: float
    contacts: list[Any]
    result: dict[str, Any] | None = None


@dataclass
class DeletionJob:
    id: str
    due: float
    book_id: int
    contact_ids: list[int]
    completed: bool = False


class _Ids:
    """Sandbox-wide id allocators (DotDigital's ids are global, not per account)."""

    def __init__(self, first_book_id: int) -> None:
        self.next_book_id = first_book_id
        self.next_contact_id = 1_000_001

    def book_id(self) -> int:
        self.next_book_id += 1
        return self.next_book_id - 1

    def contact_id(self) -> int:
        self.next_contact_id += 1
        return self.next_contact_id - 1


class AccountState:
    """One account's books, contacts and jobs."""

    def __init__(
        self, account: SandboxAccount, clock: Clock, ids: _Ids, retained_jobs: int
    ) -> None:
        self.account = account
        self._clock = clock
        self._ids = ids
        self._retained_jobs = retained_jobs
        self.books: dict[int, AddressBook] = {}
        self._book_names: dict[str, int] = {}
        self.contacts: dict[int, Contact] = {}
        self._contact_ids = IdIndex()
        self._by_email: dict[str, Contact] = {}
        self._by_mobile: dict[str, Contact] = {}
        self.imports: dict[str, ImportJob] = {}
        self.deletions: dict[str, DeletionJob] = {}
        self._due: list[tuple[float, int, str]] = []
        self._sequence = 0
        self.active_imports = 0
        # Locked through the control API: every call answers 401 until unlocked.
        self.locked = False
        # Sends that changed nothing: an import listing a contact in a book it was already in,
        # a bulk removal of a contact that was not a member. A client that re-sends what
        # DotDigital already applied (after a crash, a lost response) shows here; so does
        # coalescing that ends on the state a book already has.
        self.no_op_adds = 0
        self.no_op_removals = 0
        for seed in account.address_books:
            self._add_book(seed.id, seed.name, seed.visibility)

    # -- jobs ---------------------------------------------------------------------------

    def settle(self) -> None:
        """Complete every job whose due time has passed, oldest first."""
        now = self._clock.monotonic()
        wall = self._clock.time()
        while self._due and self._due[0][0] <= now:
            due, _, job_id = heapq.heappop(self._due)
            # A job finished when it was due, not when someone next looked: its changes carry
            # the wall time of that moment.
            at = wall - (now - due)
            if job_id in self.imports and self.imports[job_id].result is None:
                self._run_import(self.imports[job_id], at)
            elif job_id in self.deletions and not self.deletions[job_id].completed:
                self._run_deletion(self.deletions[job_id], at)

    def _schedule(self, job_id: str, delay: float) -> float:
        due = self._clock.monotonic() + delay
        self._sequence += 1
        heapq.heappush(self._due, (due, self._sequence, job_id))
        return due

    @staticmethod
    def _forget_oldest(jobs: dict[str, ImportJob] | dict[str, DeletionJob], keep: int) -> None:
        # Dicts keep insertion order, so the first keys are the oldest jobs. Unfinished jobs
        # are never forgotten: the account still owes them a result.
        while len(jobs) > keep:
            oldest = next(iter(jobs))
            if not _is_done(jobs[oldest]):
                break
            del jobs[oldest]

    # -- address books ------------------------------------------------------------------

    def list_books(
        self, select: int, skip: int, visibility: str | None = None
    ) -> list[dict[str, Any]]:
        books = sorted(self.books.values(), key=lambda b: b.id)
        if visibility is not None:
            books = [b for b in books if b.visibility == visibility]
        return [b.as_api() for b in books[skip : skip + select]]

    def get_book(self, book_id: int) -> AddressBook:
        book = self.books.get(book_id)
        if book is None:
            raise SandboxError("book_not_found")
        return book

    def create_book(self, name: str, visibility: str) -> AddressBook:
        self._check_name(name, None)
        return self._add_book(self._ids.book_id(), name, visibility)

    def update_book(self, book_id: int, name: str, visibility: str) -> AddressBook:
        book = self.get_book(book_id)
        self._check_name(name, book_id)
        del self._book_names[book.name.lower()]
        book.name, book.visibility = name, visibility
        self._book_names[name.lower()] = book_id
        return book

    def delete_book(self, book_id: int) -> None:
        book = self.get_book(book_id)
        for contact_id in book.members:
            self.contacts[contact_id].lists.discard(book_id)
        del self.books[book_id]
        del self._book_names[book.name.lower()]

    def _check_name(self, name: str, own_id: int | None) -> None:
        if not name.strip() or len(name) > MAX_BOOK_NAME:
            raise SandboxError("invalid", "The name must be 1 to 128 characters long.")
        key = name.lower()
        if key in RESERVED_BOOK_NAMES or self._book_names.get(key, own_id) != own_id:
            raise SandboxError("duplicate_name")

    def _add_book(self, book_id: int, name: str, visibility: str) -> AddressBook:
        book = AddressBook(book_id, name, visibility)
        self.books[book_id] = book
        self._book_names[name.lower()] = book_id
        return book

    def book_member_contacts(self, book_id: int, select: int, skip: int) -> list[Contact]:
        book = self.get_book(book_id)
        return [self.contacts[i] for i in islice(book.members.ascending(), skip, skip + select)]

    def member_emails(self, book_id: int) -> set[str]:
        book = self.get_book(book_id)
        return {email for i in book.members if (email := self.contacts[i].email) is not None}

    # -- contacts -----------------------------------------------------------------------

    def find_contact(self, identifier: str, value: str) -> Contact:
        """Look a contact up; ``invalid`` for a malformed value, ``contact_not_found`` else."""
        contact: Contact | None
        if identifier == "email":
            if not _EMAIL.match(value):
                raise SandboxError("invalid", value)
            contact = self._by_email.get(value.lower())
        elif identifier == "mobileNumber":
            if not _MOBILE.match(value):
                raise SandboxError("invalid", value)
            contact = self._by_mobile.get(value.lstrip("+"))
        elif identifier == "contactId":
            if not value.isdigit():
                raise SandboxError("invalid", value)
            contact = self.contacts.get(int(value))
        else:
            contact = None
        if contact is None:
            raise SandboxError("contact_not_found", value)
        return contact

    def contact_as_api(
        self,
        contact: Contact,
        *,
        data_fields: frozenset[str] | None = None,
        lists: bool = True,
        channel_properties: bool = True,
    ) -> dict[str, Any]:
        """The v3 ``contact``: always ``contactBasicDetails``; ``dataFields`` all of them
        (``data_fields=None``), those named (matched case-insensitively; lower-cased names)
        or none (an empty set: no ``dataFields`` key); ``lists`` and ``channelProperties``
        when asked for. The defaults are the single-contact look-up's full answer."""
        found: dict[str, Any] = {
            "contactId": contact.id,
            "status": "subscribed",
            "created": _iso(contact.created),
            "updated": _iso(contact.updated),
            "identifiers": contact.identifiers(),
        }
        if data_fields is None:
            found["dataFields"] = dict(contact.data_fields)
        elif data_fields:
            found["dataFields"] = {
                k: v for k, v in contact.data_fields.items() if k.lower() in data_fields
            }
        if channel_properties:
            found["channelProperties"] = {
                "email": {"emailType": "Html", "optInType": "Single", "status": "subscribed"}
            }
        if lists:
            found["lists"] = [
                {"id": book_id, "name": self.books[book_id].name, "status": "subscribed"}
                for book_id in sorted(contact.lists)
                if book_id in self.books
            ]
        return found

    def list_contacts(self, query: ContactQuery) -> tuple[list[Contact], bool]:
        """One page of ``getContacts``: the matching contacts with ids above ``query.after``,
        ascending, at most ``query.limit`` of them, and whether more follow. An unknown list
        (or any segment) has no members."""
        if query.segment_id is not None:
            return [], False
        if query.list_id is None:
            ids = self._contact_ids.ascending(query.after)
        else:
            book = self.books.get(query.list_id)
            if book is None:
                return [], False
            ids = book.members.ascending(query.after)
        page: list[Contact] = []
        for contact_id in ids:
            contact = self.contacts[contact_id]
            # Compared at the precision clients see (whole seconds), so a contact shown as
            # created at T matches gte::T.
            if query.created_from is not None and int(contact.created) < query.created_from:
                continue
            if query.modified_from is not None and int(contact.updated) < query.modified_from:
                continue
            if len(page) == query.limit:
                return page, True
            page.append(contact)
        return page, False

    def recreate_contact(self, email: str, lists: Iterable[int]) -> tuple[int, int]:
        """Delete the contact of ``email`` from the account (and so from every book) and create
        it again with a new id, a member of ``lists``: what happens when someone deletes a
        contact in DotDigital and it comes back. Returns ``(old id, new id)``;
        ``contact_not_found`` / ``book_not_found`` when there is no such contact or book."""
        old = self.find_contact("email", email)
        books = [self.get_book(book_id) for book_id in lists]
        for book_id in old.lists:
            self.books[book_id].members.discard(old.id)
        del self.contacts[old.id]
        self._contact_ids.discard(old.id)
        del self._by_email[email.lower()]
        if old.mobile is not None:
            self._by_mobile.pop(old.mobile, None)
        now = self._clock.time()
        new = Contact(self._ids.contact_id(), old.email, None, now, now)
        self.contacts[new.id] = new
        self._contact_ids.add(new.id)
        self._by_email[email.lower()] = new
        for book in books:
            book.members.add(new.id)
            new.lists.add(book.id)
        return old.id, new.id

    def remove_member(self, book_id: int, contact_id: int, *, strict: bool) -> None:
        """Take ``contact_id`` out of ``book_id`` (``strict``: unknown contact is an error)."""
        book = self.get_book(book_id)
        contact = self.contacts.get(contact_id)
        if contact is None:
            if strict:
                raise SandboxError("contact_not_found", str(contact_id))
            return
        if contact_id in book.members:
            book.members.discard(contact_id)
            contact.lists.discard(book_id)
            contact.updated = self._clock.time()

    # -- imports ------------------------------------------------------------------------

    def submit_import(self, contacts: list[Any]) -> ImportJob:
        """Queue an import; ``too_many_imports`` when 25 are already unfinished."""
        if self.active_imports >= MAX_ACTIVE_IMPORTS:
            raise SandboxError("too_many_imports")
        job_id = str(uuid.uuid4())
        job = ImportJob(job_id, self._schedule(job_id, self.account.import_delay_seconds), contacts)
        self.imports[job_id] = job
        self.active_imports += 1
        if self.account.import_delay_seconds == 0:
            self.settle()
        self._forget_oldest(self.imports, self._retained_jobs)
        return job

    def import_status(self, job_id: str) -> dict[str, Any]:
        job = self.imports.get(job_id)
        if job is None:
            raise SandboxError("import_not_found", job_id)
        if job.result is None:
            return {"importId": job.id, "status": "NotFinished"}
        return job.result

    def _run_import(self, job: ImportJob, at: float) -> None:
        created: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        duplicates = _duplicate_keys(job.contacts)
        invalid = 0
        duplicate_count = 0
        for item in job.contacts:
            failure = self._check_contact(item, duplicates)
            if failure is not None:
                code, description = failure
                if code == "duplicateIdentifier":
                    duplicate_count += 1
                else:
                    invalid += 1
                failures.append(_failure(item, code, description))
                lists = item.get("lists")
                if not (
                    code == "invalidAddressBookIds"
                    and self.account.list_failures_keep_contact
                    and isinstance(lists, list)
                ):
                    continue
                # Only the list membership failed: the contact itself is imported.
                known = [i for i in lists if type(i) is int and i in self.books]
                item = {**item, "lists": known}
            contact, is_new = self._upsert(item, at)
            reference = {"contactId": contact.id, "identifiers": contact.identifiers()}
            (created if is_new else updated).append(reference)
        job.result = {
            "importId": job.id,
            "status": "Finished",
            "summary": {
                "newContacts": len(created),
                "updatedContacts": len(updated),
                "globallySuppressed": 0,
                "invalidEntries": invalid,
                "duplicateIdentifiers": duplicate_count,
            },
            "created": created,
            "updated": updated,
            "failures": failures,
        }
        job.contacts = []  # the request is no longer needed; keep memory flat
        self.active_imports -= 1

    def _check_contact(self, item: Any, duplicates: set[tuple[str, str]]) -> tuple[str, str] | None:
        """Why this import item fails, as (failureCode, description), or ``None``."""
        if not isinstance(item, dict) or not isinstance(item.get("identifiers"), dict):
            return ("noValidIdentifiers", "The contact has no identifiers")
        identifiers: dict[str, Any] = item["identifiers"]
        match = _match_of(item)
        email = identifiers.get("email")
        mobile = identifiers.get("mobileNumber")
        if email is not None and (not isinstance(email, str) or not _EMAIL.match(email)):
            return ("invalidEmail", "Invalid value for 'email'")
        if mobile is not None and (not isinstance(mobile, str) or not _MOBILE.match(mobile)):
            return ("invalidPhoneNumber", "Invalid value for 'mobileNumber'")
        if match not in ("email", "mobileNumber", "contactId"):
            return ("invalidMatchIdentifier", f"Invalid match identifier '{match}'")
        value = identifiers.get(match)
        if value is None:
            return ("noValidIdentifiers", f"No value given for the match identifier '{match}'")
        key = _identity(match, value)
        if key in duplicates:
            return (
                "duplicateIdentifier",
                f"Duplicate identifier detected for {match} '{value}'",
            )
        if match == "contactId" and self._resolve(match, value) is None:
            return ("invalidContactId", f"No contact has the contactId '{value}'")
        lists = item.get("lists", [])
        if not isinstance(lists, list) or any(
            isinstance(i, bool) or not isinstance(i, int) or i not in self.books for i in lists
        ):
            return (
                "invalidAddressBookIds",
                f"One or more of the list ids {lists!r} do not exist in the account",
            )
        return None

    def _resolve(self, match: str, value: Any) -> Contact | None:
        if match == "email":
            return self._by_email.get(str(value).lower())
        if match == "mobileNumber":
            return self._by_mobile.get(str(value).lstrip("+"))
        try:
            return self.contacts.get(int(value))
        except (TypeError, ValueError):
            return None

    def _upsert(self, item: dict[str, Any], at: float) -> tuple[Contact, bool]:
        identifiers: dict[str, Any] = item["identifiers"]
        contact = self._resolve(_match_of(item), identifiers[_match_of(item)])
        email = identifiers.get("email")
        mobile = identifiers.get("mobileNumber")
        is_new = contact is None
        if contact is None:
            contact = Contact(self._ids.contact_id(), None, None, at, at)
            self.contacts[contact.id] = contact
            self._contact_ids.add(contact.id)
        changed = False
        # An email that already belongs to another contact stays with that contact.
        if email is not None and email.lower() not in self._by_email:
            if contact.email is not None:
                del self._by_email[contact.email.lower()]
            contact.email = email
            self._by_email[email.lower()] = contact
            changed = True
        if mobile is not None and mobile.lstrip("+") not in self._by_mobile:
            if contact.mobile is not None:
                self._by_mobile.pop(contact.mobile, None)
            contact.mobile = mobile.lstrip("+")
            self._by_mobile[contact.mobile] = contact
            changed = True
        data_fields = item.get("dataFields")
        if isinstance(data_fields, dict):
            for name, value in data_fields.items():
                # DotDigital: a null value clears the field.
                if value is None:
                    changed |= contact.data_fields.pop(name, _ABSENT) is not _ABSENT
                elif contact.data_fields.get(name, _ABSENT) != value:
                    contact.data_fields[name] = value
                    changed = True
        for book_id in item.get("lists", []):
            if book_id not in contact.lists:
                self.books[book_id].members.add(contact.id)
                contact.lists.add(book_id)
                changed = True
            else:
                self.no_op_adds += 1
        if changed:
            contact.updated = at
        return contact, is_new

    # -- bulk removal -------------------------------------------------------------------

    def submit_deletion(self, book_id: int, contact_ids: Iterable[int]) -> DeletionJob:
        self.get_book(book_id)
        job_id = str(uuid.uuid4())
        job = DeletionJob(
            job_id,
            self._schedule(job_id, self.account.deletion_delay_seconds),
            book_id,
            list(contact_ids),
        )
        self.deletions[job_id] = job
        if self.account.deletion_delay_seconds == 0:
            self.settle()
        self._forget_oldest(self.deletions, self._retained_jobs)
        return job

    def deletion_status(self, job_id: str) -> dict[str, Any]:
        job = self.deletions.get(job_id)
        if job is None:
            raise SandboxError("deletion_not_found", job_id)
        return {"id": job.id, "status": "Completed" if job.completed else "Started"}

    def _run_deletion(self, job: DeletionJob, at: float) -> None:
        book = self.books.get(job.book_id)
        if book is not None:
            for contact_id in job.contact_ids:
                # Unknown ids and non-members are skipped: removal is idempotent.
                if contact_id in book.members:
                    book.members.discard(contact_id)
                    contact = self.contacts[contact_id]
                    contact.lists.discard(job.book_id)
                    contact.updated = at
                else:
                    self.no_op_removals += 1
        job.contact_ids = []
        job.completed = True


class SandboxState:
    """All accounts of one sandbox, by lower-cased username."""

    def __init__(
        self, accounts: Iterable[SandboxAccount], clock: Clock, retained_jobs: int
    ) -> None:
        accounts = tuple(accounts)
        seeded = [book.id for account in accounts for book in account.address_books]
        ids = _Ids(max([10_000, *seeded]) + 1)
        self.accounts: dict[str, AccountState] = {
            account.username.lower(): AccountState(account, clock, ids, retained_jobs)
            for account in accounts
        }

    def account(self, username: str) -> AccountState | None:
        return self.accounts.get(username.lower())


def _failure(item: Any, code: str, description: str) -> dict[str, Any]:
    """A failure entry echoing the item's identifiers the way the spec types them: string
    identifiers under ``identifiers``, a numeric contact id as ``contactId``."""
    given = item.get("identifiers") if isinstance(item, dict) else None
    given = given if isinstance(given, dict) else {}
    entry: dict[str, Any] = {
        "matchIdentifier": _match_of(item),
        "identifiers": {k: v for k, v in given.items() if isinstance(v, str) and k != "contactId"},
        "failures": [{"failureCode": code, "description": description}],
    }
    contact_id = given.get("contactId")
    if isinstance(contact_id, int) and not isinstance(contact_id, bool):
        entry["contactId"] = contact_id
    return entry


def _is_done(job: ImportJob | DeletionJob) -> bool:
    if isinstance(job, ImportJob):
        return job.result is not None
    return job.completed


def _match_of(item: Any) -> str:
    match = item.get("matchIdentifier", "email") if isinstance(item, dict) else "email"
    return match if isinstance(match, str) else str(match)


def _identity(match: str, value: Any) -> tuple[str, str]:
    text = str(value)
    if match == "email":
        text = text.lower()
    elif match == "mobileNumber":
        text = text.lstrip("+")
    return (match, text)


def _duplicate_keys(items: list[Any]) -> set[tuple[str, str]]:
    """Identities given more than once in one import: every occurrence of them fails."""
    counts: Counter[tuple[str, str]] = Counter()
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("identifiers"), dict):
            match = _match_of(item)
            value = item["identifiers"].get(match)
            if value is not None:
                counts[_identity(match, value)] += 1
    return {key for key, count in counts.items() if count > 1}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
