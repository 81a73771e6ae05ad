"""Rebalances: partitions assigned, revoked (flush, hand over, stop sends, wait, commit), lost.

Contract:

* Assign: the partitions are owned in the ledger (:mod:`stream.core.ledger`) from now on; a
  partition assigned again starts from nothing.
* Revoke: the revoked partitions' buffered records are flushed and awaited for at most
  ``batching.revoke_flush_seconds``. Then what is still being sent for them stops before its
  next request, and what DotDigital may already be doing for them (a request in the air, an
  accepted import or removal) is awaited for at most ``batching.revoke_job_seconds``. Their
  offsets are committed as far as they are final (a contact whose records span revoked and
  kept partitions is handed over whole: :func:`stream.core.windowing.handover`); the rest is
  dropped, uncommitted, for the new owner to read again, and is taken out of every batch not
  yet sent: once the revoke returned, this instance makes no DotDigital request for a record
  of those partitions (beyond the status polls of a job it stopped waiting for at that bound).
  From the moment sends stop, the ledger no longer *holds* the revoked partitions' records
  (:meth:`stream.core.ledger.Ledger.revoking`), although they are open until the revoke
  forgets them: an operation stopped by the revoke that starts again while the revoke still
  waits leaves them out. Dead letters decided meanwhile and acknowledged within
  :data:`~stream.settings.REVOKE_DRAIN_SECONDS` are committed with the revoke.
* A revoke under way or starting during a shutdown (:class:`~stream.pipeline.shutdown.Stopping`)
  stops waiting at the shutdown's flush deadline and commits what is final of its partitions;
  one starting after the last flushes started flushes nothing more of its own.
* Lost (partitions taken without a clean revoke): another member may own them already, so
  nothing more is sent for them, nothing is waited for, and nothing of them is committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence

from stream.clock import Clock
from stream.core.ledger import Ledger
from stream.core.offsets import RecordRef, TopicPartitionKey
from stream.core.windowing import Handover, Windower, handover
from stream.pipeline.dispatch import Dispatcher
from stream.pipeline.outcomes import OutputTopics
from stream.pipeline.shutdown import Stopping
from stream.settings import REVOKE_DRAIN_SECONDS, BatchingSettings

__all__ = ["Rebalance"]

log = logging.getLogger(__name__)


class Rebalance:
    """Assign, revoke and lose partitions, on the loop."""

    def __init__(
        self,
        batching: BatchingSettings,
        *,
        ledger: Ledger,
        windows: Windower,
        dispatcher: Dispatcher,
        dead_letters: OutputTopics,
        stopping: Stopping,
        clock: Clock,
    ) -> None:
        self._batching = batching
        self._ledger = ledger
        self._windows = windows
        self._dispatcher = dispatcher
        self._dead_letters = dead_letters
        self._stopping = stopping
        self._clock = clock

    def assign(self, partitions: Sequence[TopicPartitionKey]) -> None:
        for tp in partitions:
            self._ledger.assign(tp)

    async def revoke(self, partitions: Sequence[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Give ``partitions`` up; returns the offsets to commit for them."""
        revoked = set(partitions)
        batching = self._batching
        dispatcher = self._dispatcher
        if not self._stopping.closing:
            for batch in self._windows.drain_partitions(revoked):
                dispatcher.submit(batch)
            if (
                await self._unless_shutdown_cuts(
                    dispatcher.wait(batching.revoke_flush_seconds, revoked)
                )
                is False
            ):
                log.info(
                    "revoke: flushes still in flight after %.0f s; stopping what DotDigital "
                    "has not taken on yet",
                    batching.revoke_flush_seconds,
                )
        with self._ledger.revoking(revoked):
            # A contact across revoked and kept partitions goes whole to whoever has its newest
            # record; the other side's older records are final now, and those kept are not sent
            # any more (the dispatcher stops what the listener no longer holds).
            split = self._handover(revoked)
            for ref in split.overtaken + split.yielded:
                self._ledger.settle(ref)
            if (
                await self._unless_shutdown_cuts(
                    dispatcher.revoke(revoked, batching.revoke_job_seconds)
                )
                is False
            ):
                log.warning(
                    "revoke: DotDigital jobs for revoked partitions still running after %.0f s; "
                    "no longer waiting for them (the new owner's changes may be overtaken)",
                    batching.revoke_job_seconds,
                )
            # Dead letters decided by the flushes and jobs above, acknowledged now, are final and
            # committed with the revoke instead of being redone by the new owner.
            drained = self._clock.monotonic() + REVOKE_DRAIN_SECONDS
            budget = self._stopping.budget
            if budget is not None:
                drained = min(drained, budget.drain_deadline(self._clock.monotonic()))
            await self._dead_letters.drain(drained)
            positions = self._ledger.committable(revoked)
            self._warn_if_reread(split.overtaken)
            self._forget(partitions)
        return positions

    def lose(self, partitions: Sequence[TopicPartitionKey]) -> None:
        """Partitions taken without a clean revoke: another member may own them already, so
        nothing more is sent for them, and nothing waited for."""
        # Their uncommitted newest records of contacts across partitions are read again by the
        # next owner: the older ones kept here must not be sent after them (as in revoke).
        for ref in self._handover(set(partitions)).yielded:
            self._ledger.settle(ref)
        self._dispatcher.stop_sending(set(partitions))
        self._forget(partitions)

    def _warn_if_reread(self, overtaken: Sequence[RecordRef]) -> None:
        # The one case a rebalance may leave a book older (windowing, "Across partitions").
        reread = [
            ref
            for ref in overtaken
            if (position := self._ledger.position(ref.tp)) is None or position <= ref.offset
        ]
        if reread:
            log.warning(
                "revoke: %d records superseded by newer ones of their contact on partitions "
                "kept stay below the revoked partitions' commit; their new owner re-applies "
                "them, possibly after the newer ones (first: %s)",
                len(reread),
                reread[0],
            )

    def _handover(self, revoked: set[TopicPartitionKey]) -> Handover:
        contacts = [(b.key, c) for b in self._dispatcher.batches for c in b.contacts()]
        contacts += self._windows.pending_contacts()
        return handover(contacts, revoked, self._ledger.is_open)

    async def _unless_shutdown_cuts(self, waiting: Awaitable[bool]) -> bool | None:
        """``waiting``'s answer, or None once a shutdown's flush deadline passed first: the
        consumer thread waits inside the revoke, and the shutdown's bound must hold."""
        wait = asyncio.ensure_future(waiting)
        cut = asyncio.ensure_future(self._stopping.flush_deadline_passed())
        try:
            await asyncio.wait([wait, cut], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            wait.cancel()
            raise
        finally:
            cut.cancel()
        if wait.done():
            return wait.result()
        wait.cancel()
        await asyncio.wait([wait])
        log.warning(
            "revoke: shutting down; no longer waiting for what DotDigital may still be doing "
            "for the revoked partitions (the new owner's changes may be overtaken)"
        )
        return None

    def _forget(self, partitions: Sequence[TopicPartitionKey]) -> None:
        """Drop a partition's buffered records and its open records; nothing of it is committed
        afterwards, so the next owner reads its open records again."""
        revoked = set(partitions)
        dropped = self._windows.drop_partitions(revoked)
        if dropped.dropped:
            log.info(
                "dropped %d buffered records of revoked partitions, uncommitted",
                len(dropped.dropped),
            )
        # Older records of partitions we keep, whose newer record the next owner will sync.
        for ref in dropped.superseded:
            self._ledger.settle(ref)
        for tp in partitions:
            self._ledger.forget(tp)
