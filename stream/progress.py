"""Progress of a long command (``ddsync replay``, ``ddsync reconcile``) for the person running it.

A bar redrawn in place on a terminal, a line every few seconds otherwise (a log file gets a
steady trickle, not a flood); time from the injected clock.
"""

from __future__ import annotations

from typing import Final, Protocol, TextIO

from stream.clock import Clock

__all__ = ["Progress", "ProgressReporter"]


class Progress(Protocol):
    @property
    def percent(self) -> int:
        """0 to 100."""
        ...

    def describe(self) -> str:
        """One line, e.g. ``1200 / 5000 records (24%): replayed 900, skipped 300``."""
        ...


class ProgressReporter:
    """Shows a :class:`Progress` on ``stream``. On a terminal (``tty``) a bar redrawn in place
    with ``\\r`` at most every ``redraw`` seconds; otherwise one line every ``every`` seconds,
    starting with ``label``, so a log file gets a steady trickle. :meth:`finish` ends the bar's
    line."""

    BAR_WIDTH: Final = 30

    def __init__(
        self,
        stream: TextIO,
        clock: Clock,
        *,
        tty: bool,
        every: float = 5.0,
        redraw: float = 0.2,
        label: str = "replay",
    ) -> None:
        self._stream = stream
        self._label = label
        self._clock = clock
        self._tty = tty
        self._interval = redraw if tty else every
        self._started = clock.monotonic()
        self._shown_at: float | None = None
        self._drawn = False

    def update(self, progress: Progress) -> None:
        now = self._clock.monotonic()
        last = self._started if self._shown_at is None else self._shown_at
        if now - last < self._interval:
            return
        self._shown_at = now
        if self._tty:
            filled = self.BAR_WIDTH * progress.percent // 100
            bar = "#" * filled + "." * (self.BAR_WIDTH - filled)
            self._stream.write(f"\r[{bar}] {progress.describe()}\x1b[K")
            self._drawn = True
        else:
            self._stream.write(f"{self._label}: {progress.describe()}\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
