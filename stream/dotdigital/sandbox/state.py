"""What the sandbox remembers: address books, contacts, memberships, import and deletion jobs.

Contract:

* Every operation is O(1) or O(size of its own batch): contacts are found through dicts keyed
  by lower-cased email, mobile number and id; memberships are sets on both sides (book ->
  contact ids, contact -> book ids), so a book's ``contacts`` count is ``len`` of a set.
* Asynchronous jobs (imports, bulk removals) take effect when they complete, not when they are
  submitted: :meth:`AccountState.settle` applies every job whose due time has passed, in due
  order, and is called before anything reads or writes the account. So a poll that says
  ``Finished``/``Completed`` and a later look-up always agree.
* Emails are matched case-insensitively; a contact keeps the spelling it was created with.
* Contact ids and address-book ids are unique across the whole sandbox, like DotDigital's.
* Nothing here knows HTTP; :mod:`stream.dotdigital.sandbox.routes` maps the results and
  :class:`SandboxError` to responses.
"""

from __future__ import annotations

import heapq
import re
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from stream.clock import Clock
from stream.dotdigital.sandbox.accounts import RESERVED_BOOK_NAMES, SandboxAccount

MAX_ACTIVE_IMPORTS = 25
MAX_BOOK_NAME = 128

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


@dataclass
class AddressBook:
    id: int
    name: str
    visibility: str
    members: set[int] = field(default_factory=set)

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
    created: str
    updated: str
    data_fields: dict[str, Any] = field(default_factory=dict)
    lists: set[int] = field(default_factory=set)

    def identifiers(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.email is not None:
            found["email"] = self.email
        if self.mobile is not None:
            found["mobileNumber"] = self.mobile
        return found


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
        self._by_email: dict[str, Contact] = {}
        self._by_mobile: dict[str, Contact] = {}
        self.imports: dict[str, ImportJob] = {}
        self.deletions: dict[str, DeletionJob] = {}
        self._due: list[tuple[float, int, str]] = []
        self._sequence = 0
        self.active_imports = 0
        for seed in account.address_books:
            self._add_book(seed.id, seed.name, seed.visibility)

    # -- jobs ---------------------------------------------------------------------------

    def settle(self) -> None:
        """Complete every job whose due time has passed, oldest first."""
        now = self._clock.monotonic()
        while self._due and self._due[0][0] <= now:
            _, _, job_id = heapq.heappop(self._due)
            if job_id in self.imports and self.imports[job_id].result is None:
                self._run_import(self.imports[job_id])
            elif job_id in self.deletions and not self.deletions[job_id].completed:
                self._run_deletion(self.deletions[job_id])

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
        return [self.contacts[i] for i in sorted(book.members)[skip : skip + select]]

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

    def contact_as_api(self, contact: Contact) -> dict[str, Any]:
        return {
            "contactId": contact.id,
            "status": "subscribed",
            "created": contact.created,
            "updated": contact.updated,
            "identifiers": contact.identifiers(),
            "dataFields": dict(contact.data_fields),
            "channelProperties": {
                "email": {"emailType": "Html", "optInType": "Single", "status": "subscribed"}
            },
            "lists": [
                {"id": book_id, "name": self.books[book_id].name, "status": "subscribed"}
                for book_id in sorted(contact.lists)
                if book_id in self.books
            ],
        }

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
        del self._by_email[email.lower()]
        if old.mobile is not None:
            self._by_mobile.pop(old.mobile, None)
        now = _iso(self._clock.time())
        new = Contact(self._ids.contact_id(), old.email, None, now, now)
        self.contacts[new.id] = new
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
        book.members.discard(contact_id)
        contact.lists.discard(book_id)

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

    def _run_import(self, job: ImportJob) -> None:
        now = _iso(self._clock.time())
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
                continue
            contact, is_new = self._upsert(item, now)
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

    def _upsert(self, item: dict[str, Any], now: str) -> tuple[Contact, bool]:
        identifiers: dict[str, Any] = item["identifiers"]
        contact = self._resolve(_match_of(item), identifiers[_match_of(item)])
        email = identifiers.get("email")
        mobile = identifiers.get("mobileNumber")
        is_new = contact is None
        if contact is None:
            contact = Contact(self._ids.contact_id(), None, None, now, now)
            self.contacts[contact.id] = contact
        contact.updated = now
        # An email that already belongs to another contact stays with that contact.
        if email is not None and email.lower() not in self._by_email:
            if contact.email is not None:
                del self._by_email[contact.email.lower()]
            contact.email = email
            self._by_email[email.lower()] = contact
        if mobile is not None and mobile.lstrip("+") not in self._by_mobile:
            if contact.mobile is not None:
                self._by_mobile.pop(contact.mobile, None)
            contact.mobile = mobile.lstrip("+")
            self._by_mobile[contact.mobile] = contact
        data_fields = item.get("dataFields")
        if isinstance(data_fields, dict):
            for name, value in data_fields.items():
                # DotDigital: a null value clears the field.
                if value is None:
                    contact.data_fields.pop(name, None)
                else:
                    contact.data_fields[name] = value
        for book_id in item.get("lists", []):
            self.books[book_id].members.add(contact.id)
            contact.lists.add(book_id)
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

    def _run_deletion(self, job: DeletionJob) -> None:
        book = self.books.get(job.book_id)
        if book is not None:
            for contact_id in job.contact_ids:
                contact = self.contacts.get(contact_id)
                # Unknown ids and non-members are skipped: removal is idempotent.
                if contact is not None:
                    book.members.discard(contact_id)
                    contact.lists.discard(job.book_id)
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
