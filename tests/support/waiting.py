"""Waiting for a condition, the one way every test does it.

Both helpers take ``(check, seconds, what)`` in that order, call ``check`` until it returns
something truthy and return that value; after ``seconds`` they raise ``AssertionError`` with
``what`` (say what was expected: ``"the breaker did not open"``) and, when ``check`` returned
more than a bare ``False`` or ``None``, the last value seen, so that a failure shows what was
there.

* :func:`wait_until` blocks (a test function, a helper thread); with ``process`` it gives up as
  soon as that process exited.
* :func:`eventually` is the coroutine twin for tests that run on the event loop; with
  ``blocking=True`` each ``check`` runs in a worker thread (a check that asks the broker).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["eventually", "wait_until"]

T = TypeVar("T")


def _timed_out(what: str, seconds: float, last: object) -> AssertionError:
    seen = "" if last is None or last is False else f"; last seen: {last!r}"
    return AssertionError(f"{what} within {seconds} s{seen}")


def wait_until(
    check: Callable[[], T],
    seconds: float,
    what: str,
    *,
    process: subprocess.Popen[Any] | None = None,
    interval: float = 0.2,
) -> T:
    """The first truthy value of ``check()`` within ``seconds``, polling every ``interval``."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise _timed_out(what, seconds, value)
        time.sleep(interval)


async def eventually(
    check: Callable[[], T],
    seconds: float,
    what: str,
    *,
    interval: float = 0.1,
    blocking: bool = False,
) -> T:
    """The first truthy value of ``check()`` within ``seconds``, polling every ``interval``
    without blocking the event loop (``blocking``: ``check`` itself blocks, run it in a
    thread)."""
    deadline = time.monotonic() + seconds
    while True:
        value = await asyncio.to_thread(check) if blocking else check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, seconds, value)
        await asyncio.sleep(interval)
