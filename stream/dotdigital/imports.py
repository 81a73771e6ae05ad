"""Bulk add: contacts put into an address book with one v3 import, polled until it finishes.

Contract (:meth:`Imports.run`): every input email (the caller's spelling) comes back imported
(with its contact id, also remembered for removals) or rejected (DotDigital's failure code;
``missingFromResult`` when the result does not mention it; ``invalidEmail`` for an empty
string, not sent). A contact the result lists as created or updated *and* as failed is
rejected: ddsync sends only its email and the list, so what failed is its membership of the
book. Emails compare case-insensitively; one contact is sent per distinct email. At most
``max_active_imports`` imports of one client run at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from stream.dotdigital.address_books import AddressBooks
from stream.dotdigital.contact_ids import ContactIds
from stream.dotdigital.emails import Names, email_of
from stream.dotdigital.errors import ImportFailedError
from stream.dotdigital.http import BookCall, Http, Tally
from stream.dotdigital.jobs import Job, Jobs, job_id
from stream.dotdigital.models import MISSING_FROM_RESULT, ImportOutcome, Rejection
from stream.dotdigital.observe import ClientObserver

__all__ = ["IMPORT_FAILED_STATUSES", "Imports"]

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
# The v3 import's per-contact failure for a list id the account does not have (the specs'
# examples are camelCase, the docs' table PascalCase: compared case-folded).
INVALID_LIST_FAILURE = "invalidaddressbookids"


class Imports:
    """The imports of one client."""

    def __init__(
        self,
        http: Http,
        jobs: Jobs,
        books: AddressBooks,
        contact_ids: ContactIds,
        observer: ClientObserver,
        *,
        max_active: int,
    ) -> None:
        self._http = http
        self._jobs = jobs
        self._books = books
        self._contact_ids = contact_ids
        self._observer = observer
        self._active = asyncio.Semaphore(max_active)

    async def run(self, call: BookCall, emails: Sequence[str]) -> ImportOutcome:
        """Add ``emails`` to the call's address book (see the module's contract).

        Raises :class:`ImportFailedError` when the import as a whole ends badly,
        :class:`AddressBookNotFoundError` when contacts failed for an unknown list id and
        ``GET /v2/address-books/{id}`` confirms the book is gone (as a removal from it would),
        :class:`RetriesExhausted` past the call's deadline, or the request's error when it is
        not retryable.
        """
        names = Names(emails)
        rejected = names.empty_rejections()
        if not names.sent:
            return ImportOutcome(import_id=None, imported={}, rejected=rejected)
        await self._jobs.settle(call, "add")
        import_id, result = await self._import(call, names)

        imported_ids: dict[str, int] = {}
        created_keys: set[str] = set()
        for section in ("created", "updated"):
            for item in result.get(section) or ():
                key = email_of(item)
                contact_id = item.get("contactId") if isinstance(item, Mapping) else None
                if key in names.spellings and isinstance(contact_id, int):
                    imported_ids[key] = contact_id
                    if section == "created":
                        created_keys.add(key)
        failed: dict[str, tuple[str, str]] = {}
        for item in result.get("failures") or ():
            key = email_of(item)
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
            await self._books.get(call)

        imported: dict[str, int] = {}
        created: set[str] = set()
        for key, spellings in names.spellings.items():
            contact_id = imported_ids.get(key)
            if contact_id is not None:
                # The contact exists, even when its membership failed: its id is good.
                self._contact_ids.learn(key, contact_id)
            if contact_id is not None and key not in failed:
                for email in spellings:
                    imported[email] = contact_id
                if key in created_keys:
                    created.update(spellings)
                continue
            code, description = failed.get(
                key, (MISSING_FROM_RESULT, f"import {import_id} did not report this contact")
            )
            for email in spellings:
                rejected[email] = Rejection(email, code, description)
        return ImportOutcome(
            import_id=import_id, imported=imported, rejected=rejected, created=frozenset(created)
        )

    async def _import(self, call: BookCall, names: Names) -> tuple[str, Mapping[str, Any]]:
        """Send the import and poll it until it finishes: its id and its result."""
        body = {
            "mergeOption": "overwrite",
            "contacts": [
                {
                    "matchIdentifier": "email",
                    "identifiers": {"email": email},
                    "lists": [call.book_id],
                }
                for email in names.sent.values()
            ],
        }
        async with self._active:
            tally = Tally()
            try:
                accepted = (
                    await self._http.call(
                        "PUT",
                        "/contacts/v3/import",
                        body=body,
                        policy=call.policy,
                        deadline=call.deadline,
                        tally=tally,
                        expect=lambda data: bool(job_id(data, "importId")),
                    )
                ).data
            except BaseException:
                self._jobs.fence_unanswered(call.book_id, "add", tally)
                raise
            import_id = job_id(accepted, "importId")
            job = Job(
                call.book_id,
                f"import {import_id}",
                f"/contacts/v3/import/{quote(import_id, safe='')}",
                "Finished",
                IMPORT_FAILED_STATUSES,
            )
            self._observer.import_active(+1)
            try:
                status, result = await self._jobs.await_job(job, "NotFinished", call)
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
        return import_id, result


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
