"""When and how long to wait before trying a failed DotDigital call again.

Pure policy plus one async helper, :meth:`RetryPolicy.run`, which drives an operation with an
injected clock:

* :class:`TransientError`: exponential backoff with *full* jitter
  (``uniform(0, min(max_delay, base_delay * 2**attempt))``), so that many clients failing at
  once do not retry in lock-step.
* :class:`ThrottledError`: the reset the server announced (``retry_after``), else
  ``throttle_delay``; a little jitter on top spreads the herd after a shared reset.
* :class:`AuthenticationError`: retried like a transient error only when
  ``retry_authentication`` (the pipeline: the password may be being rotated); otherwise raised.
* Anything else (:class:`PermanentError`, :class:`WrongRegionError`, :class:`RetriesExhausted`
  from a nested call): raised at once.

A time budget bounds the whole. A backoff that would pass the deadline is cut short, so the
last attempt is made at the deadline: a failing call is retried for its whole budget, not given
up on up to ``max_delay`` early. A reset announced beyond the deadline is not waited for (the
server said no until then), nor is one that is not a number (NaN: ``throttle_delay``
instead). Past the deadline :class:`RetriesExhausted` is raised with the last
error. Time the operation reports as
``not_counted`` (a request queued for its rate limiter: waiting, not failing) moves the deadline
out by as much.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from stream.clock import Clock
from stream.dotdigital.errors import (
    AuthenticationError,
    DotDigitalError,
    RetriesExhausted,
    ThrottledError,
    TransientError,
)

__all__ = ["RetryPolicy"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How to retry; immutable, so one policy can be shared by every call.

    ``total_seconds`` is the budget from the first attempt when ``run`` gets no explicit
    ``deadline`` (a value of the clock's ``monotonic()``). ``random`` returns floats in [0, 1)
    and is injectable for tests.
    """

    total_seconds: float = 600.0
    base_delay: float = 0.5
    max_delay: float = 30.0
    throttle_delay: float = 60.0
    throttle_jitter: float = 0.1
    retry_authentication: bool = False
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def delay(self, error: DotDigitalError, attempt: int) -> float | None:
        """Seconds to wait after failed attempt number ``attempt`` (0-based), None: give up."""
        if isinstance(error, ThrottledError):
            return self._reset(error) * (1.0 + self.throttle_jitter * self.random())
        if isinstance(error, TransientError) or (
            isinstance(error, AuthenticationError) and self.retry_authentication
        ):
            ceiling = min(self.max_delay, self.base_delay * (2.0 ** min(attempt, 62)))
            return ceiling * self.random()
        return None

    def _reset(self, error: ThrottledError) -> float:
        """When the server lets us in again, before jitter."""
        wait = error.retry_after
        if wait is None or math.isnan(wait):
            wait = self.throttle_delay
        # An infinite reset stays infinite: beyond any deadline, so run() gives up at once.
        return max(0.0, wait)

    def deadline(self, clock: Clock) -> float:
        """The monotonic deadline of a budget starting now."""
        return clock.monotonic() + self.total_seconds

    async def run(
        self,
        operation: Callable[[], Awaitable[T]],
        clock: Clock,
        *,
        deadline: float | None = None,
        not_counted: Callable[[], float] | None = None,
    ) -> T:
        """Await ``operation()`` until it succeeds, retrying as the policy says.

        Raises the operation's error when it is not retryable, :class:`RetriesExhausted` when
        it failed at or after ``deadline`` (default: now + ``total_seconds``) plus the seconds
        ``not_counted()`` returns by then, or when a throttle's reset lies beyond it. At least
        one attempt is always made.
        """
        started = clock.monotonic()
        if deadline is None:
            deadline = started + self.total_seconds
        attempt = 0
        refused: AuthenticationError | None = None
        while True:
            try:
                return await operation()
            except RetriesExhausted:
                raise
            except DotDigitalError as error:
                if isinstance(error, AuthenticationError):
                    refused = error
                wait = self.delay(error, attempt)
                if wait is None:
                    raise
                now = clock.monotonic()
                credit = not_counted() if not_counted is not None else 0.0
                remaining = deadline + credit - now
                if remaining <= 0 or (
                    isinstance(error, ThrottledError) and self._reset(error) > remaining
                ):
                    raise RetriesExhausted(
                        error, attempts=attempt + 1, elapsed=now - started, refused=refused
                    ) from error
                attempt += 1
                await clock.sleep(min(wait, remaining))
