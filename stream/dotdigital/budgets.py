"""One account's rate limiters, keyed by the tier DotDigital counts each call against.

DotDigital's tiered scheme counts every call against one tier of the account (Low, Medium,
High...), each with its own budget a minute, and names the tier of each response in
``X-RateLimit-Scope``. Which calls share a tier is not documented call by call (imports and
bulk removals may both be "Low"; so may ``GET /contacts/v3``, a "large data return"). So the
limiters are learnt:

* Before any response names a tier, each operation is paced by the configured budget it
  starts from (:data:`STARTING_BUDGET`: imports by ``add_requests_per_minute``, bulk removals by
  ``remove_requests_per_minute``, every other call by ``other_requests_per_minute``).
* Once a response of an operation names its scope, that operation is paced by the limiter of
  that scope from then on, shared with every other operation whose responses name the same
  scope, so that operations that share a tier spend one budget instead of each its own. The
  first operation to name a tier hands it its limiter when no other operation was paced by it
  (so the requests it sent in the last minute still count), and a limiter that paces no
  operation any more is dropped (``on_gone``).
* A scope name must look like one (:data:`_SCOPE_NAME`) and at most :data:`MAX_SCOPES` are
  learnt: a server (or a proxy) sending junk cannot grow memory nor metric labels without
  bound. Responses without the header (the flat scheme, errors of a proxy) teach nothing.

Contract: :meth:`Budgets.for_operation` is the limiter an operation's next request must acquire;
:meth:`Budgets.learn` is called with every response's headers before the limiter observes them,
and returns the limiter that must observe them. Pure: no I/O; time only through the limiters'
clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Literal, get_args

from stream.clock import Clock
from stream.dotdigital.observe import ApiOperation
from stream.dotdigital.ratelimit import RateLimiter, RateLimitStatus, header

__all__ = ["MAX_SCOPES", "STARTING_BUDGET", "Budget", "Budgets"]

Budget = Literal["add", "remove", "other"]

# The configured budget each operation is paced by until a response names its tier.
STARTING_BUDGET: Mapping[ApiOperation, Budget] = {
    "import": "add",
    "removal": "remove",
}

MAX_SCOPES = 8
_OPERATIONS: tuple[ApiOperation, ...] = get_args(ApiOperation)
_SCOPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def starting_budget(operation: ApiOperation) -> Budget:
    """The configured budget ``operation`` is paced by before any tier is learnt."""
    return STARTING_BUDGET.get(operation, "other")


class Budgets:
    """The limiters of one account: the configured starting ones, then one per learnt tier.

    ``on_new`` is told the name and limiter of each limiter as it is created (the starting ones
    at once), so that metrics can export each budget at scrape time; ``on_gone`` the name of
    each limiter dropped because no operation is paced by it any more.
    """

    def __init__(
        self,
        starting: Mapping[Budget, int],
        clock: Clock,
        *,
        on_new: Callable[[str, RateLimiter], None] | None = None,
        on_gone: Callable[[str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_new = on_new
        self._on_gone = on_gone
        self._limiters: dict[str, RateLimiter] = {}
        self._learnt = 0
        # operation -> the scope its responses named last (absent: its starting budget)
        self._scope_of: dict[ApiOperation, str] = {}
        for name, per_minute in starting.items():
            self._add(name, RateLimiter(per_minute, clock, operation=name))

    def for_operation(self, operation: ApiOperation) -> RateLimiter:
        """The limiter ``operation``'s next request acquires."""
        return self._limiters[self.name_of(operation)]

    def name_of(self, operation: ApiOperation) -> str:
        """The name of the limiter that paces ``operation``: its scope once learnt, else its
        starting budget (``add``, ``remove``, ``other``)."""
        return self._scope_of.get(operation) or starting_budget(operation)

    def learn(self, operation: ApiOperation, headers: Mapping[str, str]) -> RateLimiter:
        """Note the tier a response of ``operation`` names; returns the limiter that must
        observe that response's headers (the one that will pace the operation from now on)."""
        scope = header(headers, "X-RateLimit-Scope")
        if scope is None:
            return self.for_operation(operation)
        scope = scope.strip()
        if scope == self._scope_of.get(operation):
            return self._limiters[scope]
        if not _SCOPE_NAME.match(scope) or scope in ("add", "remove", "other"):
            return self.for_operation(operation)
        before = self.name_of(operation)
        limiter = self._limiters.get(scope)
        if limiter is None:
            if self._learnt >= MAX_SCOPES:
                return self.for_operation(operation)
            self._learnt += 1
            previous = self._limiters[before]
            if self._paced_by(before) == [operation]:
                # Its own limiter becomes the tier's: the requests it sent still count.
                del self._limiters[before]
                if self._on_gone is not None:
                    self._on_gone(before)
                limiter = previous
                limiter.operation = scope
            else:
                # Seeded with the budget the operation had; the response's X-RateLimit-Limit,
                # which the caller observes next, corrects it.
                limiter = RateLimiter(previous.limit, self._clock, operation=scope)
            self._add(scope, limiter)
        self._scope_of[operation] = scope
        if before in self._limiters and not self._paced_by(before):
            del self._limiters[before]
            if self._on_gone is not None:
                self._on_gone(before)
        return limiter

    def limiter(self, name: str) -> RateLimiter:
        """A limiter by name (a starting budget or a learnt scope); KeyError when unknown."""
        return self._limiters[name]

    def status(self) -> dict[str, RateLimitStatus]:
        """What each limiter knows now, by name."""
        return {name: limiter.status() for name, limiter in self._limiters.items()}

    def _paced_by(self, name: str) -> list[ApiOperation]:
        return [operation for operation in _OPERATIONS if self.name_of(operation) == name]

    def _add(self, name: str, limiter: RateLimiter) -> None:
        self._limiters[name] = limiter
        if self._on_new is not None:
            self._on_new(name, limiter)
