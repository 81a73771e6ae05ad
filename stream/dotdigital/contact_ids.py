"""The contact ids a client has learnt, by normalized email: a bounded cache whose entries expire.

Imports report the id of every contact they create or update, and paging an address book's
members (``GET /contacts/v3?~listId=``) reports the ids of the members read; remembering them
lets a removal go out without resolving the emails again. An id can go stale (the contact
deleted and re-created in DotDigital with a new id), which is why entries expire after ``ttl``
seconds and why each entry keeps the wall-clock time it was learnt at: a removal by remembered
ids is verified by asking DotDigital for the members created since the oldest of them.

Contract: at most ``size`` entries (the oldest learnt are dropped first, a tenth at a time, so
that ``learn`` stays amortized O(1)); ``get`` never returns an entry ``ttl`` seconds old or
older. Pure: time comes from the injected clock.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from stream.clock import Clock

__all__ = ["ContactIds", "Learnt"]


@dataclass(frozen=True)
class Learnt:
    """A remembered contact id and when it was learnt (``clock.time()``, Unix seconds)."""

    contact_id: int
    at: float


class ContactIds:
    """Contact ids by normalized email, at most ``size`` of them, each for ``ttl`` seconds."""

    def __init__(self, size: int, ttl: float, clock: Clock) -> None:
        if size <= 0 or ttl <= 0:
            raise ValueError("size and ttl must be positive")
        self._size = size
        self._ttl = ttl
        self._clock = clock
        # key -> (contact id, wall time learnt, monotonic time learnt); insertion order is age
        # order. Plain tuples: about 260 bytes an entry with its key, 80 fewer than objects.
        self._entries: dict[str, tuple[int, float, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Learnt | None:
        """What was learnt for ``key``, unless it is ``ttl`` seconds old or older."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        contact_id, at, learnt_at = entry
        if self._clock.monotonic() - learnt_at >= self._ttl:
            del self._entries[key]
            return None
        return Learnt(contact_id, at)

    def learn(self, key: str, contact_id: int) -> None:
        """Remember ``contact_id`` for ``key`` as of now (replacing what was known)."""
        entries = self._entries
        if key not in entries and len(entries) >= self._size:
            for old in list(itertools.islice(entries, max(1, self._size // 10))):
                del entries[old]
        # Re-inserted, not updated in place: the dict's order stays the order of age.
        entries.pop(key, None)
        entries[key] = (contact_id, self._clock.time(), self._clock.monotonic())

    def forget(self, key: str) -> None:
        """Drop what was learnt for ``key``, if anything."""
        self._entries.pop(key, None)
