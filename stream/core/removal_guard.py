"""The mass-removal guard: how many removals an address book may take before an operator looks.

A wrong audience definition (a filter inverted, a source table truncated) turns into a flood of
leave transitions. Batches hold at most ``batching.max_contacts`` contacts, so a flood arrives
as many ordinary-looking flushes: a limit per flush would let a 100,000-member book be emptied
1,000 at a time. The guard therefore counts the removals sent to each address book over a
sliding window and holds a flush's removals when they would take the window's total past the
book's allowance.

Contract:

* :meth:`RemovalGuard.admits` says whether a flush of ``count`` removals may be sent to a book
  whose size DotDigital reports as ``size`` now. The allowance is
  ``max(min_contacts, share * (size + removed))``, where ``removed`` is what this guard let
  through to that book in the last ``window_seconds`` (the book's size before the window's
  removals). The flush is admitted when ``removed + count`` does not exceed it.
* Admitted removals count (:meth:`RemovalGuard.sent`) once they were sent; held ones never do,
  so once the window slides past a burst, normal churn flows again and a flood goes on being
  held flush after flush.
* A flush is held whole, never split: what is held is the flush the operator sees in the
  dead-letter topic, all or nothing.
* The count is per guard (one per ddsync instance): with N instances sharing a consumer group,
  each sees its own partitions' share of a book's removals. A restart starts the count afresh.
* Pure: time from the injected clock only, memory O(books x flushes in the window).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from stream.clock import Clock
from stream.settings import RemovalGuardSettings

__all__ = ["RemovalGuard", "RemovalGuardLimits", "Verdict", "removal_guard_of"]


@dataclass(frozen=True)
class RemovalGuardLimits:
    """When a book's removals are held: past ``share`` of it and past ``min_contacts``, within
    ``window_seconds``."""

    share: float
    min_contacts: int
    window_seconds: float


@dataclass(frozen=True)
class Verdict:
    """The guard's answer for one flush, with the figures an operator needs to judge it."""

    admitted: bool
    count: int
    removed_in_window: int
    allowance: int
    size: int

    def describe(self) -> str:
        return (
            f"{self.count} removals held: with the {self.removed_in_window} sent in the guard's "
            f"window they exceed the allowance of {self.allowance} for an address book of "
            f"{self.size} contacts"
        )


class RemovalGuard:
    """Removals sent per address book over a sliding window. See the module's contract."""

    def __init__(self, limits: RemovalGuardLimits, clock: Clock) -> None:
        self._limits = limits
        self._clock = clock
        # Per book: (monotonic time, removals sent), oldest first.
        self._sent: dict[tuple[str, int], deque[tuple[float, int]]] = {}

    def admits(self, book: tuple[str, int], count: int, size: int) -> Verdict:
        removed = self._removed(book)
        allowance = max(
            self._limits.min_contacts, int(self._limits.share * (max(size, 0) + removed))
        )
        return Verdict(removed + count <= allowance, count, removed, allowance, size)

    def sent(self, book: tuple[str, int], count: int) -> None:
        """``count`` removals were sent to ``book`` (admitted, or released by an operator)."""
        if count > 0:
            self._sent.setdefault(book, deque()).append((self._clock.monotonic(), count))

    def _removed(self, book: tuple[str, int]) -> int:
        sent = self._sent.get(book)
        if not sent:
            return 0
        horizon = self._clock.monotonic() - self._limits.window_seconds
        while sent and sent[0][0] <= horizon:
            sent.popleft()
        if not sent:
            del self._sent[book]
            return 0
        return sum(count for _, count in sent)


def removal_guard_of(settings: RemovalGuardSettings, clock: Clock) -> RemovalGuard | None:
    """The guard ``[removal_guard]`` configures; None when it is turned off."""
    if not settings.enabled:
        return None
    limits = RemovalGuardLimits(settings.share, settings.min_contacts, settings.window_seconds)
    return RemovalGuard(limits, clock)
