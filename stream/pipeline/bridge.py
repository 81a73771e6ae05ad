"""The consumer thread's one way onto the event loop.

Threads: the Kafka consumer runs in its own thread (:mod:`stream.kafka.source`); everything else —
windows, the ledger of open records, dispatcher, dead-letter producer — lives on one asyncio
event loop and is touched only from it. The consumer thread hands over records and rebalance
events by running a coroutine on the loop and waiting for it, so the two never race and the
consumer cannot run ahead of what the loop has taken in. A pipeline driven turn by turn (a test
on an in-memory broker) takes each turn in a worker thread with the same hand-over.

Contract: :meth:`LoopBridge.call` and :meth:`LoopBridge.wait_for` are called from a thread other
than the loop's, once :meth:`LoopBridge.attach` named the loop; they return what the work
returned on the loop, or raise what it raised. Called from the loop itself they would deadlock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["LoopBridge"]

T = TypeVar("T")


class LoopBridge:
    """Runs another thread's calls on one event loop and waits for them."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the calls run on (the pipeline's, once it runs)."""
        self._loop = loop

    def call(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` on the loop; waits for it."""
        return self.wait_for(_sync(function, *args))

    def wait_for(self, work: Callable[[], Awaitable[T]]) -> T:
        """Await ``work()`` on the loop; waits for it."""
        assert self._loop is not None, "attach() first"
        return asyncio.run_coroutine_threadsafe(_awaited(work), self._loop).result()


async def _awaited(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


def _sync(function: Callable[..., T], *args: object) -> Callable[[], Awaitable[T]]:
    """A plain function call as an awaitable factory, so it runs on the loop."""

    async def run() -> T:
        return function(*args)

    return run
