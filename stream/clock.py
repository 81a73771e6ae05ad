"""Time as a dependency.

The pure parts of ddsync (windows, offsets, rate limiting, retry policy) never read the system
clock themselves: they take a :class:`Clock`, so tests drive them with :class:`FakeClock` and run
in microseconds instead of waiting out real windows.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time for aligning windows, monotonic time for measuring spans."""

    def time(self) -> float:
        """Seconds since the Unix epoch (may jump)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to; ``sleep`` advances it instantly.

    ``advance`` and ``sleep`` move ``time()`` and ``monotonic()`` together; ``step_wall`` moves
    the wall clock alone, either way, as an NTP correction or an operator's ``date -s`` does.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = 0.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self._now + self._wall_offset

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += seconds

    def step_wall(self, seconds: float) -> None:
        """Move the wall clock by ``seconds`` (negative: back); ``monotonic()`` stays put."""
        self._wall_offset += seconds

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.slept.append(seconds)
        self.advance(seconds)
        # Yield so that other tasks see the new time, as a real sleep would.
        await asyncio.sleep(0)
