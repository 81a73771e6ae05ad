"""Per-account call budgets: DotDigital's tiered (per minute) and flat (per hour) schemes.

Tiered: every call counts against one budget of its account, each with its own number of calls
per fixed calendar minute (windows aligned to the Unix epoch, like DotDigital's "calls per
minute"). Every response to an authenticated call carries ``X-RateLimit-Limit``,
``-Remaining``, ``-Reset`` and ``-Scope`` for the budget it counted against; past the budget the
call is refused with 429 and does not count.

Which budget a call counts against depends on the account's ``tier_layout``, because DotDigital
does not document which tier ``GET /contacts/v3`` is in, nor whether imports and bulk removals
share one (its rate-limit page says only that "Low" covers "imports / large data returns"):

====================  ===================================  =====================================
call                  ``"separate"`` (default)             ``"shared"``
====================  ===================================  =====================================
import (PUT)          ``add``: mediumCallRate,             ``low``: lowCallRate, add_per_minute
                      add_per_minute                       (one budget for all three rows)
list removal          ``remove``: lowCallRate,             ``low``
(bulk POST, DELETE)   remove_per_minute
``GET /contacts/v3``  ``other``: highCallRate,             ``low``
                      other_per_minute
anything else         ``other``                            ``other``: highCallRate,
                                                           other_per_minute
====================  ===================================  =====================================

``remove_per_minute`` is unused in the shared layout. Budget names are also the keys of
``GET /_sandbox/stats``.

Flat: one budget of calls per calendar hour for the whole account; past it the call is refused
with 400 ``ERROR_APIUSAGE_EXCEEDED``. The flat scheme predates the headers, so none are sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from stream.clock import Clock
from stream.sandbox.accounts import SandboxAccount, TierLayout
from stream.sandbox.settings import ResetHeaderMode

LimitTier = Literal["add", "remove", "low", "other"]
CallKind = Literal["import", "removal", "listing", "other"]

LAYOUTS: dict[TierLayout, dict[CallKind, LimitTier]] = {
    "separate": {"import": "add", "removal": "remove", "listing": "other", "other": "other"},
    "shared": {"import": "low", "removal": "low", "listing": "low", "other": "other"},
}

# X-RateLimit-Scope per budget. DotDigital names its tiers low/medium/high call rate; the only
# published row (Low = 35/minute) matches the removal budget, so in the separate layout removal
# is "low", imports "medium" and everything else "high".
SCOPES: dict[LimitTier, str] = {
    "add": "mediumCallRate",
    "remove": "lowCallRate",
    "low": "lowCallRate",
    "other": "highCallRate",
}

MINUTE = 60.0
HOUR = 3600.0


@dataclass(frozen=True)
class Charge:
    """The outcome of charging one call: allowed or not, and the headers to send."""

    allowed: bool
    headers: dict[str, str] = field(default_factory=dict)
    scheme: Literal["tiered", "flat", "none"] = "tiered"


@dataclass
class _Window:
    index: int
    used: int = 0


class AccountLimits:
    """Counts calls per (account, tier) in fixed windows of the given clock's wall time."""

    def __init__(self, clock: Clock, reset_header: ResetHeaderMode = "seconds") -> None:
        self._clock = clock
        self._reset_header = reset_header
        self._windows: dict[tuple[str, str], _Window] = {}

    def charge(self, account: SandboxAccount, tier: LimitTier) -> Charge:
        """Count one call of ``tier`` for ``account`` unless its budget is spent."""
        now = self._clock.time()
        # The hourly count feeds account-info's ApiCallsInLastHour whatever the scheme.
        hourly = self._window(account.username, "hour", now, HOUR)
        if not account.rate_limits_enabled:
            hourly.used += 1
            return Charge(True, scheme="none")
        if account.rate_limit_scheme == "flat":
            if hourly.used >= account.flat_per_hour:
                return Charge(False, scheme="flat")
            hourly.used += 1
            return Charge(True, scheme="flat")
        limit = self.limit(account, tier)
        window = self._window(account.username, tier, now, MINUTE)
        allowed = window.used < limit
        if allowed:
            window.used += 1
            hourly.used += 1
        reset_at = (window.index + 1) * MINUTE
        if self._reset_header == "epoch":
            reset = str(int(reset_at))
        else:
            reset = str(max(1, math.ceil(reset_at - now)))
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - window.used)),
            "X-RateLimit-Reset": reset,
            "X-RateLimit-Scope": SCOPES[tier],
        }
        return Charge(allowed, headers)

    def calls_in_last_hour(self, account: SandboxAccount) -> int:
        """Calls counted in the current calendar hour (account-info's ``ApiCallsInLastHour``)."""
        return self._window(account.username, "hour", self._clock.time(), HOUR).used

    @staticmethod
    def limit(account: SandboxAccount, tier: LimitTier) -> int:
        if tier in ("add", "low"):
            return account.add_per_minute
        if tier == "remove":
            return account.remove_per_minute
        return account.other_per_minute

    def _window(self, username: str, tier: str, now: float, length: float) -> _Window:
        index = int(now // length)
        key = (username, tier)
        window = self._windows.get(key)
        if window is None or window.index != index:
            window = _Window(index)
            self._windows[key] = window
        return window
