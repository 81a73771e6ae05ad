"""The dead-letter circuit breaker: stop consuming when most records are failing.

Dead-lettering is right for a record that can never succeed, and wrong for a whole topic that a
bad setting (a wrong password, a deleted address book, a producer bug) makes fail: that would
empty the topic into the DLQ and commit past it. The breaker tells the two apart by share: the
share of the input that is bad, not the order in which outcomes happen to arrive.

Outcomes arrive out of order. A record rejected at decode is final the moment it is read; a
valid one only when its batch has been sent, up to a window (20 minutes) and a retry budget
later. Counting both kinds of outcome in one window as they arrive made the first few hundred
finished records of any backlog all dead letters, whatever the stream's real share of bad
records. So the breaker keeps two measures, each over its own kind of outcome, which arrive in
an order that says something:

* **input**: every consumed record, once, when it is decoded: bad (not JSON, wrong shape, no
  identifier, unknown connector) or good. Decoding happens in consumption order, so this is the
  exact share of bad records among the last ``window`` read. A topic of records for a connector
  the configuration lacks opens it after ``min_records`` records.
* **delivery**: every decoded contact whose DotDigital outcome is final, as the outcomes come:
  synced, or failed for good (rejected contact, address book gone, retries exhausted). Counted
  per contact, not per record: a contact coalesced from 200 records of one window is one
  outcome, so one flapping contact with a rejected address weighs once. Rejected contacts are
  spread through the batches, so a stream with a few bad addresses stays far below the ratio.
  A connector carrying most of the traffic whose failures come back while a healthy one's
  successes keep arriving opens it. What it cannot tell apart: failures that come back together,
  a whole batch at once, weigh as much as they are many.

Account-level failures (credentials refused, access denied, every book of a connector gone) are
not counted here: they suspend their connector (:mod:`stream.core.suspensions`), whose records are
then dead-lettered for a replay while the other connectors go on. When every connector is
suspended, nothing can succeed, and the pipeline opens the breaker
(:meth:`~DeadLetterBreaker.trip`).

Contract:

* :meth:`DeadLetterBreaker.decoded` once per consumed record; :meth:`DeadLetterBreaker.delivered`
  once per contact whose dispatch outcome is final (not for account-level failures);
  :meth:`DeadLetterBreaker.trip` opens it for a cause found elsewhere.
* :attr:`DeadLetterBreaker.is_open` becomes ``True`` when either measure, holding at least
  ``min_records`` records, has a bad share strictly greater than ``ratio``. With ``ratio`` = 1
  it never opens.
* **Once open it stays open**, whatever is recorded afterwards. The service stops consuming
  (pauses its partitions and keeps polling, so it stays in the group without taking work) and
  an operator must look, fix the cause, and restart it; records not yet final stay uncommitted,
  so nothing is lost. Re-closing by itself would just let the same fault drain the topic again,
  one window at a time.
* O(1) per record; memory O(``window``).
"""

from __future__ import annotations

from collections import deque

from stream.settings import DeadLetterSettings


class ShareWindow:
    """The last ``size`` verdicts, and how many of them were bad."""

    __slots__ = ("_bad", "_verdicts")

    def __init__(self, size: int) -> None:
        self._verdicts: deque[bool] = deque(maxlen=size)
        self._bad = 0

    def add(self, bad: bool) -> None:
        verdicts = self._verdicts
        if len(verdicts) == verdicts.maxlen and verdicts[0]:
            self._bad -= 1  # the oldest falls out on append
        verdicts.append(bad)
        self._bad += bad

    @property
    def seen(self) -> int:
        return len(self._verdicts)

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
        self._opened: tuple[str, int, int] | None = None
        self._tripped: str | None = None

    @classmethod
    def from_settings(cls, settings: DeadLetterSettings) -> DeadLetterBreaker:
        return cls(
            window=settings.breaker_window,
            ratio=settings.breaker_ratio,
            min_records=settings.breaker_min_records,
        )

    def decoded(self, bad: bool) -> None:
        """One consumed record was decoded: ``bad`` when it was rejected (dead-lettered)."""
        self._record("input", bad)

    def delivered(self, failed: bool) -> None:
        """One decoded contact's dispatch outcome is final: ``failed`` when it goes to the
        dead-letter topic."""
        self._record("delivery", failed)

    def trip(self, cause: str) -> None:
        """Open it for ``cause`` (one line for the operator), unless it is open already."""
        if not self.is_open:
            self._tripped = cause

    def _record(self, measure: str, bad: bool) -> None:
        if self.is_open:
            return
        window = self._windows[measure]
        window.add(bad)
        # Past min_records only a bad verdict can lift the share above the ratio: a good one
        # either adds to the count or replaces a verdict no better than itself. So most records
        # skip the check; reaching min_records may open it whatever the verdict.
        seen = window.seen
        if (bad or seen == self._min_records) and (
            seen >= self._min_records and window.bad > self._ratio * seen
        ):
            self._opened = (measure, window.bad, window.seen)

    @property
    def is_open(self) -> bool:
        return self._opened is not None or self._tripped is not None

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
        if self._tripped is not None:
            return f"dead-letter breaker open: {self._tripped}"
        rule = f"opens above {self._ratio:.0%} of at least {self._min_records}"
        if self._opened is not None:
            measure, bad, seen = self._opened
            return f"dead-letter breaker open: {_what(measure, bad, seen)} ({rule})"
        parts = [_what(m, self._windows[m].bad, self._windows[m].seen) for m in self.MEASURES]
        return f"dead-letter breaker closed: {'; '.join(parts)} ({rule})"


def _what(measure: str, bad: int, seen: int) -> str:
    if measure == "input":
        return f"{bad} of the last {seen} records read were invalid"
    return f"{bad} of the last {seen} contacts sent to DotDigital failed"
