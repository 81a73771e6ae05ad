"""The bound on a shutdown: from SIGTERM to the process's end, whatever state it is in.

Contract:

* :class:`ShutdownBudget` splits ``batching.shutdown_timeout_seconds``, counted from the moment
  the shutdown was asked for: flushes (a revoke's included) get until ``flush_deadline``
  (``shutdown_flush_seconds``), dead-letter acknowledgements at least
  :data:`~stream.settings.SHUTDOWN_DRAIN_SECONDS` more when there is room, the final commit and
  leaving the group what remains up to ``commit_deadline``, just before ``deadline``.
* :class:`Stopping` is the shutdown as every part of the pipeline sees it: asked for once
  (the bound counts from the first :meth:`Stopping.stop`), its budget, and whether the last
  flushes started (:attr:`Stopping.closing`). A revoke waits no longer than its flush deadline.
* :class:`Watchdog` is the last resort: armed when the shutdown is asked for, it ends the
  process at ``deadline`` with :data:`ABANDONED` (logged) if it is still running, whatever is
  blocked (a consumer close that waits for a broker, a stuck thread). Offsets are committed
  only as far as records are final, so ending at any point loses nothing: what was not
  committed is read again by the next owner.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from stream.clock import Clock
from stream.exitcodes import ExitCode
from stream.settings import SHUTDOWN_COMMIT_SECONDS, SHUTDOWN_DRAIN_SECONDS, BatchingSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
# The pipeline gives up on the final commit this long before the watchdog would end the
# process, so that it can say so itself.
EXIT_MARGIN_SECONDS = 0.5
# The status of a shutdown cut at its bound: the broker did not take the final commit or the
# group leave in time (or something else hung); what was not committed is read again.
ABANDONED = ExitCode.UNAVAILABLE


@dataclass(frozen=True)
class ShutdownBudget:
    started: float
    flush_seconds: float
    timeout_seconds: float

    @classmethod
    def starting(cls, clock: Clock, batching: BatchingSettings) -> ShutdownBudget:
        return cls(
            clock.monotonic(), batching.shutdown_flush_seconds, batching.shutdown_timeout_seconds
        )

    @property
    def deadline(self) -> float:
        """When the process must have ended."""
        return self.started + self.timeout_seconds

    @property
    def flush_deadline(self) -> float:
        """When flushes still running, a revoke's as the shutdown's, are abandoned."""
        return min(self.started + self.flush_seconds, self.commit_deadline)

    @property
    def commit_deadline(self) -> float:
        """When the final commit and leaving the group are abandoned."""
        return self.deadline - EXIT_MARGIN_SECONDS

    def drain_deadline(self, now: float) -> float:
        """Until when dead-letter acknowledgements are awaited, from ``now``: a few seconds of
        their own even when the flushes used theirs up, unless the final commit needs them."""
        latest = self.commit_deadline - SHUTDOWN_COMMIT_SECONDS
        return max(min(max(self.flush_deadline, now + SHUTDOWN_DRAIN_SECONDS), latest), now)


class Stopping:
    """A pipeline's shutdown, shared by the parts that must keep to its bound. On one event
    loop; :meth:`stop` is safe from a signal handler on it."""

    def __init__(self, clock: Clock, batching: BatchingSettings) -> None:
        self._clock = clock
        self._batching = batching
        self._asked = asyncio.Event()
        # Counted from the first stop().
        self.budget: ShutdownBudget | None = None
        # The consumer thread ended and the last flushes started: a revoke flushes no more.
        self.closing = False

    def stop(self) -> None:
        """Ask for the shutdown; the bound counts from the first call."""
        if self.budget is None:
            self.budget = ShutdownBudget.starting(self._clock, self._batching)
        self._asked.set()

    @property
    def asked(self) -> bool:
        return self._asked.is_set()

    async def wait(self) -> None:
        """Return once the shutdown was asked for."""
        await self._asked.wait()

    async def flush_deadline_passed(self) -> None:
        """Return once the shutdown was asked for and its flush deadline passed."""
        await self._asked.wait()
        assert self.budget is not None
        await self._clock.sleep(self.budget.flush_deadline - self._clock.monotonic())


def in_daemon_thread(function: Callable[[], T]) -> asyncio.Future[T]:
    """``function()`` in a thread of its own that the process does not wait for at exit (unlike
    ``asyncio.to_thread``'s): a call that may block on an unreachable broker can be abandoned."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
            loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=run, name="kafka-close", daemon=True).start()
    return future


class Watchdog:
    """Ends the process ``seconds`` after :meth:`arm`, unless it ended first."""

    def __init__(self, seconds: float, exit: Callable[[int], object] = os._exit) -> None:
        self._seconds = seconds
        self._exit = exit
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        """Start counting (again calls are ignored: the first signal starts the shutdown)."""
        if self._timer is not None:
            return
        self._timer = threading.Timer(self._seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        log.critical(
            "shutdown still running after batching.shutdown_timeout_seconds (%g s): exiting "
            "now with status %d; what was not committed is read again after the restart",
            self._seconds,
            ABANDONED,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit(int(ABANDONED))
