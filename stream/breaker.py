"""The dead-letter circuit breaker: stop consuming when most records are failing.

Dead-lettering is right for a record that can never succeed, and wrong for a whole topic that a
bad setting (a wrong password, a deleted address book, a producer bug) makes fail: that would
empty the topic into the DLQ and commit past it. The breaker tells the two apart by share: the
share of the input that is bad, not the order in which outcomes happen to arrive.

Outcomes arrive out of order. A record rejected at decode is final the moment it is read; a
valid one only when its batch has been sent, up to a window (20 minutes) and a retry budget
later. Counting outcomes as they arrive would make the first few hundred finished records of any
backlog all dead letters, whatever the stream's real share of bad records. So the breaker keeps
two measures, each over records in the order they were *consumed*:

* **input**: every consumed record, once, when it is decoded: bad (not JSON, wrong shape, no
  identifier, unknown connector) or good. Decoding happens in consumption order, so this is the
  exact share of bad records among the last ``window`` read. A topic of records for a connector
  the configuration lacks opens it after ``min_records`` records.
* **delivery**: every decoded record whose DotDigital outcome is known: synced, or failed for
  good (rejected contact, address book gone, credentials refused, retries exhausted). Outcomes
  are placed by the record's consumption sequence number and the measure covers the ``window``
  most recently *consumed* records with a known outcome, so a batch failing late is weighed
  against the records read at the same time as it, not against whatever finished just before.
  A wrong password or a deleted address book of the only connector fails every outcome, and
  opens it after ``min_records`` failures: within about ``window`` records of the first one.

Contract:

* :meth:`DeadLetterBreaker.decoded` once per consumed record; :meth:`DeadLetterBreaker.delivered`
  once per record whose dispatch outcome is final, with its consumption ``sequence`` (increasing
  in consumption order).
* :attr:`DeadLetterBreaker.is_open` becomes ``True`` when either measure, holding at least
  ``min_records`` records, has a bad share strictly greater than ``ratio``. With ``ratio`` = 1
  it never opens.
* **Once open it stays open**, whatever is recorded afterwards. The service stops consuming
  (pauses its partitions and keeps polling, so it stays in the group without taking work) and
  an operator must look, fix the cause, and restart it; records not yet final stay uncommitted,
  so nothing is lost. Re-closing by itself would just let the same fault drain the topic again,
  one window at a time.
* O(1) per record when outcomes come in consumption order, O(``window``) for one that comes
  out of order; memory O(``window``).
"""

from __future__ import annotations

import bisect
from collections import deque

from stream.config import DeadLetterSettings


class ShareWindow:
    """The ``size`` latest records by sequence number, and how many of them were bad."""

    __slots__ = ("_bad", "_sequences", "_size", "_verdicts")

    def __init__(self, size: int) -> None:
        self._size = size
        self._sequences: deque[int] = deque()
        self._verdicts: deque[bool] = deque()
        self._bad = 0

    def add(self, sequence: int, bad: bool) -> None:
        sequences = self._sequences
        if not sequences or sequence >= sequences[-1]:
            sequences.append(sequence)
            self._verdicts.append(bad)
        elif len(sequences) >= self._size and sequence < sequences[0]:
            return  # older than every record the window holds: it has moved past it
        else:
            at = bisect.bisect_right(sequences, sequence)
            sequences.insert(at, sequence)
            self._verdicts.insert(at, bad)
        self._bad += bad
        if len(sequences) > self._size:
            sequences.popleft()
            self._bad -= self._verdicts.popleft()

    @property
    def seen(self) -> int:
        return len(self._sequences)

    @property
    def bad(self) -> int:
        return self._bad


class DeadLetterBreaker:
    """Opens, for good, when too large a share of recent input, or of recent deliveries, failed."""

    MEASURES = ("input", "delivery")

    def __init__(self, window: int, ratio: float, min_records: int) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        if not 0 < ratio <= 1:
            raise ValueError("ratio must be in (0, 1]")
        if not 1 <= min_records <= window:
            raise ValueError("min_records must be between 1 and window (else it never opens)")
        self._ratio = ratio
        self._min_records = min_records
        self._windows = {measure: ShareWindow(window) for measure in self.MEASURES}
        self._input_sequence = 0
        self._opened: tuple[str, int, int] | None = None

    @classmethod
    def from_settings(cls, settings: DeadLetterSettings) -> DeadLetterBreaker:
        return cls(
            window=settings.breaker_window,
            ratio=settings.breaker_ratio,
            min_records=settings.breaker_min_records,
        )

    def decoded(self, bad: bool) -> None:
        """One consumed record was decoded: ``bad`` when it was rejected (dead-lettered)."""
        self._input_sequence += 1
        self._record("input", self._input_sequence, bad)

    def delivered(self, sequence: int, failed: bool) -> None:
        """The dispatch outcome of the record consumed ``sequence``-th is final: ``failed``
        when it goes to the dead-letter topic."""
        self._record("delivery", sequence, failed)

    def _record(self, measure: str, sequence: int, bad: bool) -> None:
        if self._opened is not None:
            return
        window = self._windows[measure]
        window.add(sequence, bad)
        if window.seen >= self._min_records and window.bad > self._ratio * window.seen:
            self._opened = (measure, window.bad, window.seen)

    @property
    def is_open(self) -> bool:
        return self._opened is not None

    def share(self, measure: str) -> float:
        """Bad share of ``measure``'s window (frozen at the moment the breaker opened)."""
        if self._opened is not None and self._opened[0] == measure:
            _, bad, seen = self._opened
        else:
            window = self._windows[measure]
            bad, seen = window.bad, window.seen
        return bad / seen if seen else 0.0

    def describe(self) -> str:
        """One line for the log and the operator."""
        rule = f"opens above {self._ratio:.0%} of at least {self._min_records}"
        if self._opened is not None:
            measure, bad, seen = self._opened
            return f"dead-letter breaker open: {_what(measure, bad, seen)} ({rule})"
        parts = [_what(m, self._windows[m].bad, self._windows[m].seen) for m in self.MEASURES]
        return f"dead-letter breaker closed: {'; '.join(parts)} ({rule})"


def _what(measure: str, bad: int, seen: int) -> str:
    if measure == "input":
        return f"{bad} of the last {seen} records read were invalid"
    return f"{bad} of the last {seen} records sent to DotDigital failed"
