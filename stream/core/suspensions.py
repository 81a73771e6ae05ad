"""Connector suspensions: one account's failure must not stop the others.

Each connector is its own DotDigital account. Some failures are the account's, not a contact's
or a batch's: DotDigital refuses the API user's credentials (HTTP 401 through the whole retry
budget: a wrong or rotated password, the user locked after failed logins, the account
disabled), denies the account on its endpoint (HTTP 403), or every address book the connector
has been sent records for is gone. Until someone fixes the account or the configuration, every
batch of that connector fails the same way, after waiting out the retry budget.

Before, such a connector's failures filled the dead-letter breaker's delivery measure and
stopped consumption for every connector. Now the connector is *suspended*: no request is made
for it, its contacts fail at once with reason ``connector_suspended`` (dead-lettered with the
cause, committed, replayable once the account works), and the other connectors go on. A probe
asks DotDigital every ``probe_seconds`` whether the account works again; the first success
resumes it.

Contract:

* :meth:`Suspensions.seen` once per submitted batch, with its connector and address book: the
  books a connector is being sent records for. :meth:`Suspensions.succeeded` and
  :meth:`Suspensions.failed` once per operation outcome (an import or a removal of a batch).
* :meth:`Suspensions.failed` suspends the connector when the failure is account-level
  (``account_level=True``: credentials refused or access denied), or when it is
  ``address_book_not_found`` and every book :meth:`seen` for the connector has failed so since
  its last success. It returns the new :class:`Suspension`, or ``None`` (also when the
  connector was suspended already).
* :meth:`Suspensions.of` is the connector's current suspension or ``None``.
* :meth:`Suspensions.due` lists the suspended connectors whose probe is due (each once until
  :meth:`probed` reports it); :meth:`probed` resumes on success, else schedules the next probe
  ``probe_seconds`` later.
* :attr:`Suspensions.all_suspended` is true when every configured connector is suspended: then
  nothing can succeed, and the dead-letter breaker stops consumption instead of dead-lettering
  the whole stream (a single-connector deployment behaves as before).
* Pure and single-threaded (the pipeline's event loop); time from the injected clock.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from stream.clock import Clock
from stream.core.reasons import Reason


@dataclass(frozen=True)
class Suspension:
    """Why and since when a connector is suspended."""

    connector: str
    cause: Reason  # the failure that suspended it: auth_failed, address_book_not_found, ...
    code: str | None
    message: str  # already scrubbed: it comes from a dead-letter Failure
    since: float  # wall-clock seconds

    def describe(self) -> str:
        return f"connector {self.connector} suspended ({self.cause.value}): {self.message}"


class Suspensions:
    def __init__(self, connectors: Collection[str], clock: Clock, probe_seconds: float) -> None:
        self._connectors = frozenset(connectors)
        self._clock = clock
        self._probe_seconds = probe_seconds
        self._suspended: dict[str, Suspension] = {}
        self._next_probe: dict[str, float] = {}  # monotonic; absent while a probe runs
        self._books: dict[str, set[int]] = {}
        self._gone: dict[str, set[int]] = {}

    @property
    def probe_seconds(self) -> float:
        return self._probe_seconds

    def seen(self, connector: str, address_book_id: int) -> None:
        self._books.setdefault(connector, set()).add(address_book_id)

    def succeeded(self, connector: str, address_book_id: int) -> None:
        gone = self._gone.get(connector)
        if gone:
            gone.discard(address_book_id)

    def failed(
        self,
        connector: str,
        address_book_id: int,
        cause: Reason,
        code: str | None,
        message: str,
        *,
        account_level: bool,
    ) -> Suspension | None:
        if connector in self._suspended or connector not in self._connectors:
            return None
        if not account_level:
            if cause is not Reason.ADDRESS_BOOK_NOT_FOUND:
                return None
            gone = self._gone.setdefault(connector, set())
            gone.add(address_book_id)
            if not gone >= self._books.get(connector, set()):
                return None
            message = f"every address book it was sent records for is gone; last: {message}"
        suspension = Suspension(connector, cause, code, message, self._clock.time())
        self._suspended[connector] = suspension
        self._next_probe[connector] = self._clock.monotonic() + self._probe_seconds
        return suspension

    def of(self, connector: str) -> Suspension | None:
        return self._suspended.get(connector)

    def gone_books(self, connector: str) -> frozenset[int]:
        """The connector's books last seen gone (what a probe of a book-gone suspension asks)."""
        return frozenset(self._gone.get(connector, ()))

    @property
    def suspended(self) -> tuple[Suspension, ...]:
        # Read from the HTTP thread too (/ready): one C-level copy, atomic under the GIL.
        return tuple(sorted(tuple(self._suspended.values()), key=lambda s: s.connector))

    @property
    def all_suspended(self) -> bool:
        return bool(self._connectors) and self._connectors <= self._suspended.keys()

    def due(self) -> list[str]:
        now = self._clock.monotonic()
        due = [c for c, at in self._next_probe.items() if at <= now]
        for connector in due:
            del self._next_probe[connector]
        return sorted(due)

    def probed(self, connector: str, ok: bool) -> Suspension | None:
        """A probe's answer; returns the suspension it ended, if it did."""
        if connector not in self._suspended:
            return None
        if not ok:
            self._next_probe[connector] = self._clock.monotonic() + self._probe_seconds
            return None
        self._next_probe.pop(connector, None)
        self._gone.pop(connector, None)
        return self._suspended.pop(connector)

    def describe(self) -> str:
        return "; ".join(s.describe() for s in self.suspended) or "no connector suspended"
