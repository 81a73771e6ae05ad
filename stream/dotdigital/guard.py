"""Stopping a client operation before DotDigital takes it on, and knowing what it took on.

A caller runs an operation (an import, a removal) under a :class:`SendGuard`, set for its task
with :func:`guarded`. The client asks the guard before every request that could start work in
DotDigital or read on its behalf, which is every request except the status polls of a job
DotDigital already accepted. Once the guard is revoked such a request raises
:class:`Abandoned` instead of being sent: the operation stops, before or between its attempts,
and the caller decides what to send instead.

What may already be under way is counted: requests in the air (sent, not answered: DotDigital
may be accepting them) and accepted jobs being polled. :meth:`SendGuard.settled` waits until
there are none, so a caller that gives work away (a revoked partition) can first wait for what
DotDigital may still do with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["Abandoned", "SendGuard", "current_guard", "guarded"]


class Abandoned(Exception):
    """The operation's guard was revoked before this request was sent."""


class SendGuard:
    """One operation's permission to send. Not thread-safe: one event loop."""

    def __init__(self) -> None:
        self._revoked = False
        self._in_air = 0
        self._jobs = 0
        self._settled = asyncio.Event()
        self._settled.set()

    def revoke(self) -> None:
        """No new request from now on; polls of accepted jobs go on."""
        self._revoked = True

    @property
    def revoked(self) -> bool:
        return self._revoked

    @property
    def busy(self) -> bool:
        """A request is in the air or an accepted job is being polled."""
        return bool(self._in_air or self._jobs)

    async def settled(self) -> None:
        """Return once nothing is in the air and no accepted job is being polled."""
        # A request answered 202 sets the event, and its task starts polling the job before it
        # yields: by the time this waiter runs, the guard may be busy again.
        while self.busy:
            await self._settled.wait()

    def sending(self) -> None:
        """Before a request goes out: :class:`Abandoned` when revoked (unless it polls an
        accepted job). Pair with :meth:`answered`."""
        if self._revoked and not self._jobs:
            raise Abandoned("the operation was abandoned before this request was sent")
        self._in_air += 1
        self._settled.clear()

    def answered(self) -> None:
        """The request :meth:`sending` let out is over (answered or failed)."""
        self._in_air -= 1
        self._update()

    def polling(self) -> None:
        """An accepted job is polled from now on: its polls are sent even when revoked. Pair
        with :meth:`polled`."""
        self._jobs += 1
        self._settled.clear()

    def polled(self) -> None:
        """The job :meth:`polling` announced ended, or is no longer followed."""
        self._jobs -= 1
        self._update()

    def _update(self) -> None:
        if not self.busy:
            self._settled.set()


_current: ContextVar[SendGuard | None] = ContextVar("ddsync_send_guard", default=None)


def current_guard() -> SendGuard | None:
    """The guard of the operation this task runs, if its caller set one."""
    return _current.get()


@contextlib.contextmanager
def guarded(guard: SendGuard) -> Iterator[SendGuard]:
    """Run the enclosed client calls (and the tasks they start) under ``guard``."""
    token = _current.set(guard)
    try:
        yield guard
    finally:
        _current.reset(token)
