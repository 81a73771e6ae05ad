"""Client-side rate limiting of DotDigital calls, corrected by the server's headers.

One :class:`RateLimiter` per connector and operation (add, remove). It combines three limits,
and a request may be sent only when all three allow it:

1. Our own sliding log: never more than ``limit`` requests of ours in any ``window`` seconds.
   A sliding log rather than a fixed local window, because the server's window boundaries are
   unknown to us: a sliding log never exceeds ``limit`` in *any* window of that length.
2. The server's view, from ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset``: the budget left
   in the account's current window, which includes what other instances sharing the account
   have spent. This is what makes several instances converge on the account's real budget.
3. A block after HTTP 429 (``throttled``): nothing is sent until the reset, never longer than
   :data:`MAX_RETRY_AFTER_SECONDS`.

Header values are the server's (or a proxy's) and may be anything: parsing them never raises,
and no value blocks a limiter for longer than a window (``X-RateLimit-*``) or
:data:`MAX_RETRY_AFTER_SECONDS` (``Retry-After``).

Pure logic: time comes from an injected :class:`~stream.clock.Clock` (``monotonic`` for spans,
``time`` only to read an epoch ``X-RateLimit-Reset``). ``acquire`` is the only coroutine.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from stream.clock import Clock

__all__ = [
    "MAX_RETRY_AFTER_SECONDS",
    "RateLimitStatus",
    "RateLimiter",
    "header",
    "parse_reset",
    "parse_retry_after",
]

WINDOW_SECONDS = 60.0
# Values of X-RateLimit-Reset at or above this are Unix epoch seconds, below it seconds-to-wait:
# DotDigital's SDK documents the latter, an aggregator the former (see dotdigital-api.md 6.2).
EPOCH_THRESHOLD = 1e9
# A reset "now" or slightly in the past still leaves the window closed until the server rolls
# it; waiting a moment avoids a 429 ping-pong.
MIN_RESET_SECONDS = 1.0
# The longest a 429 may block a limiter. DotDigital's longest rate window is the flat scheme's
# hour (ERROR_APIUSAGE_EXCEEDED, "calls in a one hour period"), so no reset it announces is
# further away than that; a larger Retry-After is a wrong clock, an epoch read as seconds or a
# broken proxy. Callers whose retry budget ends sooner give up at once (retry.py) rather than
# wait it out.
MAX_RETRY_AFTER_SECONDS = 3600.0
# Responses to requests we sent within this much of each other belong to the same server window.
_SAME_WINDOW_SLACK = 2.0


def parse_reset(value: str, now_epoch: float, window: float = WINDOW_SECONDS) -> float | None:
    """Seconds until the reset that ``X-RateLimit-Reset: value`` announces, in (0, window].

    Epoch values are compared with the *local* wall clock. DotDigital's window is a minute, so
    a reset beyond one window either way means one of the clocks is wrong: the whole window is
    assumed then, which is always safe. Returns None when ``value`` is not a number.
    """
    raw = _float(value)
    if raw is None or math.isnan(raw):
        return None
    seconds = raw - now_epoch if raw >= EPOCH_THRESHOLD else raw
    if seconds > window or seconds < -window:
        return window
    return min(max(seconds, MIN_RESET_SECONDS), window)


def parse_retry_after(value: str, now_epoch: float) -> float | None:
    """Seconds to wait that ``Retry-After: value`` asks for, in [0, MAX_RETRY_AFTER_SECONDS].

    RFC 9110 allows delta-seconds and an HTTP-date; the date is compared with the local wall
    clock (``now_epoch``). A number at or above :data:`EPOCH_THRESHOLD` is read as Unix epoch
    seconds, as ``X-RateLimit-Reset`` is. A date in the past is 0. Returns None when the value
    means nothing (negative, NaN, not a number nor a date): the caller then uses the reset it
    knows.
    """
    raw = _float(value)
    if raw is None:
        try:
            when = parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        raw = max(0.0, when.timestamp() - now_epoch)
    elif raw >= EPOCH_THRESHOLD:
        raw = max(0.0, raw - now_epoch)
    if math.isnan(raw) or raw < 0:
        return None
    return min(raw, MAX_RETRY_AFTER_SECONDS)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` in ``headers``, matched case-insensitively."""
    # aiohttp's CIMultiDict is case-insensitive already; plain dicts (tests, other transports)
    # are not, hence the fallback scan.
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    """A count from a header: None unless it is a finite number (``inf`` would overflow)."""
    number = _float(value)
    if number is None or not math.isfinite(number):
        return None
    return int(number)


@dataclass(frozen=True)
class RateLimitStatus:
    """A snapshot for humans (``ddsync check``) and metrics."""

    operation: str
    limit: int
    # Requests we may still send now without waiting, by our own log and the server's view.
    available: int
    # What the server last said was left in its window, if it said anything still current.
    server_remaining: int | None
    # Seconds until the server's window resets, if known.
    reset_in: float | None
    # Seconds for which a 429 blocks all requests.
    blocked_for: float


class RateLimiter:
    """Paces one operation's requests for one connector.

    Contract:

    * ``delay()`` is how long the next request must wait; ``try_acquire()`` takes a slot only
      when that is zero; ``acquire()`` waits (via the clock) and takes one, first come first
      served.
    * ``observe(headers, sent_at=...)`` after every response of this operation, with the
      monotonic time at which its request was acquired.
    * ``throttled(retry_after)`` after a 429: nothing is sent until the reset.
    """

    def __init__(
        self,
        requests_per_minute: int,
        clock: Clock,
        *,
        operation: str = "",
        window: float = WINDOW_SECONDS,
    ) -> None:
        if requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be positive")
        self.operation = operation
        self._clock = clock
        self._window = window
        self._limit = requests_per_minute
        self._sent: deque[float] = deque()
        self._server_remaining: int | None = None
        self._server_reset_at: float | None = None
        self._blocked_until = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def limit(self) -> int:
        """Requests per window, as configured or as the server last said."""
        return self._limit

    def delay(self) -> float:
        """Seconds until a request may be sent; 0.0 when it may be sent now."""
        now = self._clock.monotonic()
        self._expire(now)
        ready = self._blocked_until
        if len(self._sent) >= self._limit:
            # The oldest request among the last ``limit`` must leave the window first.
            ready = max(ready, self._sent[len(self._sent) - self._limit] + self._window)
        if self._server_remaining is not None and self._server_remaining <= 0:
            assert self._server_reset_at is not None
            ready = max(ready, self._server_reset_at)
        return max(0.0, ready - now)

    def try_acquire(self) -> bool:
        """Take a slot if one is free now; returns whether it did."""
        if self.delay() > 0:
            return False
        self._take(self._clock.monotonic())
        return True

    async def acquire(self) -> float:
        """Wait until a request may be sent, take the slot, and return its monotonic time.

        Waiters are served in arrival order; the state is re-read after every sleep, so that
        headers or a 429 seen meanwhile (from requests already in flight) are obeyed.
        """
        async with self._lock:
            while True:
                wait = self.delay()
                if wait <= 0:
                    now = self._clock.monotonic()
                    self._take(now)
                    return now
                await self._clock.sleep(wait)

    def observe(self, headers: Mapping[str, str], *, sent_at: float | None = None) -> None:
        """Correct the limit and the server's budget from ``X-RateLimit-*`` response headers.

        ``sent_at`` is the time ``acquire`` returned for the request this response answers.
        Requests we sent after it may not be counted in ``X-RateLimit-Remaining`` yet, so they
        are deducted: the estimate errs on the side of sending less.
        """
        now = self._clock.monotonic()
        limit = _int(header(headers, "X-RateLimit-Limit"))
        if limit is not None and limit > 0:
            self._limit = limit
        remaining = _int(header(headers, "X-RateLimit-Remaining"))
        reset_value = header(headers, "X-RateLimit-Reset")
        reset_in = parse_reset(reset_value, self._clock.time()) if reset_value else None
        if remaining is None:
            if reset_in is not None and self._server_remaining is not None:
                self._server_reset_at = now + reset_in
            return
        newer = 0
        if sent_at is not None:
            for stamp in reversed(self._sent):
                if stamp <= sent_at:
                    break
                newer += 1
        estimate = max(0, remaining - newer)
        reset_at = now + (reset_in if reset_in is not None else self._window)
        self._expire(now)
        same_window = (
            self._server_reset_at is not None
            and abs(reset_at - self._server_reset_at) <= _SAME_WINDOW_SLACK
        )
        if same_window and self._server_remaining is not None:
            # Responses can arrive out of order: within one window the budget only shrinks.
            self._server_remaining = min(self._server_remaining, estimate)
        else:
            self._server_remaining = estimate
            self._server_reset_at = reset_at

    def throttled(self, retry_after: float | None = None) -> float:
        """Record a 429: block every request until the reset; returns the seconds blocked.

        ``retry_after`` (seconds) comes from the response; without it (or when it is not a
        positive number), the server's last announced reset is used, else a whole window. The
        block never exceeds :data:`MAX_RETRY_AFTER_SECONDS`.
        """
        now = self._clock.monotonic()
        if retry_after is None or math.isnan(retry_after) or retry_after <= 0:
            if self._server_reset_at is not None and self._server_reset_at > now:
                retry_after = self._server_reset_at - now
            else:
                retry_after = self._window
        retry_after = min(max(retry_after, MIN_RESET_SECONDS), MAX_RETRY_AFTER_SECONDS)
        self._blocked_until = max(self._blocked_until, now + retry_after)
        self._server_remaining = 0
        self._server_reset_at = self._blocked_until
        return self._blocked_until - now

    def blocked_for(self) -> float:
        """Seconds for which a 429 still blocks every request; 0.0 when none does."""
        return max(0.0, self._blocked_until - self._clock.monotonic())

    def status(self) -> RateLimitStatus:
        """What the limiter knows now."""
        now = self._clock.monotonic()
        self._expire(now)
        available = max(0, self._limit - len(self._sent))
        if self._server_remaining is not None:
            available = min(available, self._server_remaining)
        blocked_for = max(0.0, self._blocked_until - now)
        if blocked_for > 0:
            available = 0
        return RateLimitStatus(
            operation=self.operation,
            limit=self._limit,
            available=available,
            server_remaining=self._server_remaining,
            reset_in=None if self._server_reset_at is None else self._server_reset_at - now,
            blocked_for=blocked_for,
        )

    def _take(self, now: float) -> None:
        self._sent.append(now)
        if self._server_remaining is not None:
            self._server_remaining -= 1

    def _expire(self, now: float) -> None:
        horizon = now - self._window
        while self._sent and self._sent[0] <= horizon:
            self._sent.popleft()
        if self._server_reset_at is not None and now >= self._server_reset_at:
            # The server's window rolled over: its budget is whole again, as far as we know.
            self._server_remaining = None
            self._server_reset_at = None
