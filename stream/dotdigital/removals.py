"""Bulk remove: contacts taken out of an address book (the contacts themselves stay).

Contract (:meth:`Removals.run`): contact ids come from what imports and pages of members taught
the client, else from DotDigital (:mod:`~stream.dotdigital.members`). A contact DotDigital does
not know, or that is not in the book, counts as removed (listed in ``not_found`` too). The rest
go in bulk removals (``POST /v2/address-books/{id}/contacts/delete``) polled until
``Completed``. A remembered id may be stale (the contact deleted and re-created with a new id:
DotDigital then completes the removal of the old id and the contact stays), so a removal by
remembered ids is verified with one paged call once it completed, and a contact still a member
under a new id is removed again: a removal is never a silent no-op.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from urllib.parse import quote

from stream.dotdigital.address_books import AddressBooks
from stream.dotdigital.contact_ids import ContactIds, Learnt
from stream.dotdigital.emails import Names
from stream.dotdigital.errors import AddressBookNotFoundError, PermanentError, RemovalFailedError
from stream.dotdigital.http import BookCall, Http, Tally
from stream.dotdigital.jobs import Job, Jobs, job_id
from stream.dotdigital.members import Members
from stream.dotdigital.models import Rejection, RemovalOutcome

__all__ = ["CLOCK_SKEW_SECONDS", "DELETION_FAILED_STATUSES", "Removals"]

log = logging.getLogger(__name__)

DELETION_FAILED_STATUSES = frozenset({"Failed", "NotAvailableInThisVersion"})
# How much DotDigital's clock may be behind ours when a removal by remembered ids is verified
# with ~created (see Removals._remove_stale): a wider margin only reads more members.
CLOCK_SKEW_SECONDS = 300.0


class Removals:
    """The removals of one client, at most ``chunk_size`` contacts a bulk removal."""

    def __init__(
        self,
        http: Http,
        jobs: Jobs,
        books: AddressBooks,
        members: Members,
        contact_ids: ContactIds,
        *,
        chunk_size: int,
    ) -> None:
        self._http = http
        self._jobs = jobs
        self._books = books
        self._members = members
        self._contact_ids = contact_ids
        self._chunk_size = chunk_size

    async def run(self, call: BookCall, emails: Sequence[str]) -> RemovalOutcome:
        """Take ``emails`` out of the call's address book (see the module's contract).

        Raises :class:`AddressBookNotFoundError` when the book does not exist (asked with
        ``GET /v2/address-books/{id}`` when no removal is to be sent),
        :class:`RemovalFailedError` when DotDigital reports the removal ``Failed``,
        :class:`RetriesExhausted` past the call's deadline.
        """
        # Before resolving: an earlier import still running may yet add these contacts.
        await self._jobs.settle(call, "remove")
        names = Names(emails)
        rejected = names.empty_rejections()
        remembered: dict[str, Learnt] = {}
        unresolved: dict[str, str] = {}
        for key, email in names.sent.items():
            learnt = self._contact_ids.get(key)
            if learnt is None:
                unresolved[key] = email
            else:
                remembered[key] = learnt
        found = await self._members.resolve(unresolved, call)
        ids = {key: learnt.contact_id for key, learnt in remembered.items()} | dict(found.ids)
        if not ids and found.absent and not found.book_checked:
            # No removal goes out to say the book is gone: ask, so that a deleted book is
            # address_book_not_found whatever the contacts (one call, only in this case).
            await self._books.get(call)

        deletion_ids: list[str] = []
        keys = list(ids)
        for start in range(0, len(keys), self._chunk_size):
            chunk = keys[start : start + self._chunk_size]
            try:
                deletion_ids.append(await self._delete(call, [ids[k] for k in chunk]))
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
                again = await self._members.resolve({k: names.sent[k] for k in stale}, call)
                found |= again
                ids.update(again.ids)
                retry_ids = [ids[k] for k in chunk if k in ids]
                if retry_ids:
                    deletion_ids.append(await self._delete(call, retry_ids))
        deletion_ids.extend(await self._remove_stale(remembered, names, call))

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

    async def _remove_stale(
        self, sent: Mapping[str, Learnt], names: Names, call: BookCall
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
        lookups = self._members.cost("contact_lookup", len(sent))
        page_cost = self._members.cost("contact_list", 1)
        if page_cost <= lookups:
            since = min(learnt.at for learnt in sent.values()) - CLOCK_SKEW_SECONDS
            spent = 0.0
            complete = False
            async with contextlib.aclosing(self._members.pages(call, created_since=since)) as pages:
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
            found = await self._members.look_up({k: names.sent[k] for k in unseen}, call)
            current.update(
                (key, contact_id)
                for key, contact_id in found.ids.items()
                if contact_id != unseen[key].contact_id
            )
        if not current:
            return []
        log.info(
            "address book %s: %d remembered contact ids were stale", call.book_id, len(current)
        )
        contact_ids = list(current.values())
        size = self._chunk_size
        return [
            await self._delete(call, contact_ids[start : start + size])
            for start in range(0, len(contact_ids), size)
        ]

    async def _delete(self, call: BookCall, contact_ids: list[int]) -> str:
        """One bulk removal, polled until it ends; its deletion id."""
        tally = Tally()
        try:
            reply = await self._http.call(
                "POST",
                f"/v2/address-books/{call.book_id}/contacts/delete",
                body=contact_ids,
                policy=call.policy,
                deadline=call.deadline,
                tally=tally,
                expect=lambda data: bool(job_id(data, "id")),
            )
        except BaseException:
            self._jobs.fence_unanswered(call.book_id, "remove", tally)
            raise
        accepted = reply.data
        deletion_id = job_id(accepted, "id")
        job = Job(
            call.book_id,
            f"removal {deletion_id}",
            f"/v2/contacts/deletion/{quote(deletion_id, safe='')}",
            "Completed",
            DELETION_FAILED_STATUSES,
            "remove",
        )
        status = str(accepted.get("status", "Started"))
        status, _ = await self._jobs.await_job(job, status, call)
        if status != job.done:
            raise RemovalFailedError(
                f"removal {deletion_id} from address book {call.book_id} ended {status}",
                deletion_id=deletion_id,
                deletion_status=status,
            )
        return deletion_id
