"""Following DotDigital's import and removal jobs, and fencing an address book's jobs in order.

Contract:

* A job DotDigital accepted is polled (:class:`PollSchedule`) for up to the policy's
  ``total_seconds`` from its acceptance, or up to the call's deadline.
* A job given up on (still running at the deadline, its polls failing, or the call cancelled)
  may yet take effect. It is remembered, and the next import or removal of that address book
  first waits for it to end (:meth:`Jobs.settle`), for up to one more budget, so that within
  this process a later change of a contact is not overtaken by an earlier one. Past that the
  book goes on without it (an error is logged): one stuck job must not stall its book for good.
* An import or removal request that failed in a way DotDigital may have accepted it anyway
  (sent, then a timeout, a dropped connection, a malformed answer or an accepted answer without
  a job id) is remembered too when its call fails (:meth:`Jobs.fence_unanswered`); its id is
  unknown, so it cannot be polled: the book's next call of the other kind waits out one budget
  from then (two imports, or two removals, commute). When a later attempt of the same call is
  accepted and ends, the call succeeded and an earlier unanswered attempt is not waited for: it
  carried the same contacts, and DotDigital is assumed to run a book's jobs in the order it
  accepted them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from stream.clock import Clock
from stream.dotdigital.errors import PermanentError, RetriesExhausted, TransientError
from stream.dotdigital.guard import current_guard
from stream.dotdigital.http import BookCall, Http, Tally, is_mapping

__all__ = ["Job", "Jobs", "Operation", "PollSchedule", "job_id"]

log = logging.getLogger(__name__)

Operation = Literal["add", "remove"]


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
class Job:
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


def job_id(accepted: object, name: str) -> str:
    """The job id under ``name`` in an answer accepting a job, "" when there is none."""
    found = accepted.get(name) if isinstance(accepted, Mapping) else None
    return found if isinstance(found, str) else ""


class Jobs:
    """The jobs of one client: polls them, and remembers those given up on, by address book."""

    def __init__(self, http: Http, clock: Clock, poll: PollSchedule) -> None:
        self._http = http
        self._clock = clock
        self._poll = poll
        # Jobs given up on while perhaps still running, by address book and poll path; the
        # next import or removal of the book waits for them (one waiter per book at a time).
        self._unfinished: dict[int, dict[str, tuple[Job, float]]] = {}  # -> given up at
        self._fences: dict[int, asyncio.Lock] = {}
        self._unknown_jobs = 0

    async def await_job(
        self,
        job: Job,
        status: str,
        call: BookCall,
        *,
        until: float | None = None,
        earlier: bool = False,
    ) -> tuple[str, Mapping[str, Any]]:
        """Poll ``job`` from ``status`` until it ends; returns its last status and body.

        Polls up to the call's deadline (or ``until``, if sooner), the last wait cut short to
        poll once more at the deadline, then raises :class:`RetriesExhausted`. A job not seen
        to end, for whatever reason, is remembered for :meth:`settle`. ``earlier``: the job
        of an earlier call, polled at once (it may have ended long ago).
        """
        delays = self._poll.delays()
        if earlier:
            delays = itertools.chain((0.0,), delays)
        job_deadline = self._deadline(call)
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
                    await self._http.call(
                        "GET",
                        job.path,
                        policy=call.policy,
                        deadline=call.deadline,
                        expect=is_mapping,
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

    def fence_unanswered(self, book_id: int, kind: Operation, tally: Tally) -> None:
        """After a job-starting call failed: if one of its attempts may have been accepted
        (``tally.unanswered``), hold the book's next call of the other kind (see
        :meth:`settle`). Two imports (or two removals) of a book commute; an import and a
        removal do not."""
        if not tally.unanswered:
            return
        self._unknown_jobs += 1
        name = "import" if kind == "add" else "removal"
        job = Job(
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

    async def settle(self, call: BookCall, kind: Operation) -> None:
        """Wait for the jobs of this address book given up on earlier to end, so that this
        call (of ``kind``) does not overtake them: each for up to this call's budget from when
        it was given up on, then go on without it (logged as an error). A job of unknown id
        cannot be polled: a call of the other kind waits out that budget. :class:`RetriesExhausted`
        when this call's own deadline comes first."""
        book_id = call.book_id
        if book_id not in self._unfinished:
            return
        async with self._fences.setdefault(book_id, asyncio.Lock()):
            for job, given_up_at in list(self._unfinished.get(book_id, {}).values()):
                until = given_up_at + call.policy.total_seconds
                if job.path is None:
                    if job.kind != kind:
                        await self._outwait(job, until, call)
                    continue
                log.info("address book %s: waiting for the earlier %s first", book_id, job.name)
                try:
                    await self.await_job(job, "unknown", call, until=until, earlier=True)
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

    def _forget(self, job: Job) -> None:
        unfinished = self._unfinished.get(job.book_id)
        if unfinished is not None:
            unfinished.pop(job.key, None)
            if not unfinished:
                del self._unfinished[job.book_id]

    async def _outwait(self, job: Job, until: float, call: BookCall) -> None:
        """Wait until ``until`` for ``job``, whose id we never learnt; :class:`RetriesExhausted`
        (at the call's deadline) when the deadline comes first."""
        ends = self._deadline(call)
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

    def _deadline(self, call: BookCall) -> float:
        """How long to wait for an accepted job: the call's deadline, else a budget from now."""
        return call.deadline if call.deadline is not None else call.policy.deadline(self._clock)
