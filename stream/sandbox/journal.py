"""The journal: every API request the sandbox received, for tests to inspect and validate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JournalEntry:
    """One API request and what the sandbox answered.

    ``body`` is the parsed JSON request body (``None`` when there was none or it was not
    JSON; ``raw_body`` then has the bytes). ``account`` is the authenticated username, or
    ``None`` when authentication failed or the call never got that far (faults).
    ``status`` is ``None`` for a dropped connection; ``response`` is the JSON body sent back.
    """

    method: str
    path: str
    query: Mapping[str, str]
    body: Any
    account: str | None
    region: str
    status: int | None
    response: Any
    raw_body: bytes = b""


class Journal(list[JournalEntry]):
    """A list of :class:`JournalEntry`, oldest first, trimmed to the most recent ``limit``.

    Trimming happens in steps (when twice the limit is reached) so appends stay O(1) amortized.
    """

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = limit

    def record(self, entry: JournalEntry) -> None:
        self.append(entry)
        if self.limit is not None and len(self) >= 2 * self.limit:
            del self[: len(self) - self.limit]
