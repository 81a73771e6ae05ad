"""The dead-letter circuit breaker: stop consuming when most records are failing.

Dead-lettering is right for a record that can never succeed, and wrong for a whole topic that a
bad setting (a wrong password, a deleted address book, a producer bug) makes fail: that would
empty the topic into the DLQ and commit past it. The breaker tells the two apart by share.

Contract:

* :meth:`DeadLetterBreaker.record` is called once per *finished* record (final outcome), with
  ``True`` when the outcome was the DLQ.
* :attr:`DeadLetterBreaker.is_open` becomes ``True`` when, over the last ``window`` finished
  records, at least ``min_records`` were seen and the share dead-lettered is strictly greater
  than ``ratio``. With ``ratio`` = 1 it never opens.
* **Once open it stays open**, whatever is recorded afterwards. The service stops consuming
  (pauses its partitions and keeps polling, so it stays in the group without taking work) and
  an operator must look, fix the cause, and restart it; records not yet final stay uncommitted,
  so nothing is lost. Re-closing by itself would just let the same fault drain the topic again,
  one window at a time.
* O(1) per record; memory O(``window``).
"""

from __future__ import annotations

from collections import deque

from stream.config import DeadLetterSettings


class DeadLetterBreaker:
    """Opens, for good, when too large a share of recent records went to the DLQ."""

    def __init__(self, window: int, ratio: float, min_records: int) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        if not 0 < ratio <= 1:
            raise ValueError("ratio must be in (0, 1]")
        if not 1 <= min_records <= window:
            raise ValueError("min_records must be between 1 and window (else it never opens)")
        self._window = window
        self._ratio = ratio
        self._min_records = min_records
        self._recent: deque[bool] = deque(maxlen=window)
        self._dead = 0
        self._open = False
        self._opened_with: tuple[int, int] | None = None

    @classmethod
    def from_settings(cls, settings: DeadLetterSettings) -> DeadLetterBreaker:
        return cls(
            window=settings.breaker_window,
            ratio=settings.breaker_ratio,
            min_records=settings.breaker_min_records,
        )

    def record(self, dead_lettered: bool) -> None:
        """One record finished; ``dead_lettered`` says whether it went to the DLQ."""
        if self._open:
            return
        recent = self._recent
        if len(recent) == self._window and recent[0]:
            self._dead -= 1  # the oldest falls out of the window on append
        recent.append(dead_lettered)
        if dead_lettered:
            self._dead += 1
        seen = len(recent)
        if seen >= self._min_records and self._dead > self._ratio * seen:
            self._open = True
            self._opened_with = (self._dead, seen)

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def share(self) -> float:
        """Dead-lettered share of the current window (frozen at the moment it opened)."""
        dead, seen = self._opened_with or (self._dead, len(self._recent))
        return dead / seen if seen else 0.0

    def describe(self) -> str:
        """One line for the log and the operator."""
        dead, seen = self._opened_with or (self._dead, len(self._recent))
        state = "open" if self._open else "closed"
        return (
            f"dead-letter breaker {state}: {dead} of the last {seen} finished records "
            f"dead-lettered (opens above {self._ratio:.0%} of at least {self._min_records})"
        )
