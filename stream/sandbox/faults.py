"""Switchable faults: errors, throttling, latency and dropped connections on API calls.

Faults model the network and DotDigital's front end, so they apply before authentication and
rate limiting, to API paths only (never to ``/_sandbox/...``), and they consume no rate budget.
Decisions draw from one seeded :class:`random.Random`, so a given seed and request order give
the same faults every run.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

FaultKind = Literal["drop", "500", "503", "429", "404"]


@dataclass
class Faults:
    """Mutable fault switches (shared by all regions of one sandbox).

    * ``error_rate``: share of API calls answered 500 or 503 (half each).
    * ``latency_seconds``: delay added before every API call is handled.
    * ``drop_rate``: share of API calls whose connection is closed without a response.
    * ``throttle_rate``: share of API calls answered 429 with ``X-RateLimit-Remaining: 0`` and
      a reset ``throttle_reset_seconds`` away: a throttling storm, as when other API users of
      the same account spend its budget.
    * ``proxy_404_rate``: share of API calls answered 404 with an HTML page and no DotDigital
      error body, as a proxy or load balancer without a route for the path answers (or a
      wrong ``api_endpoint``): a client must not read it as DotDigital's "not found".
    * ``fail_next`` / ``drop_next`` / ``proxy_404_next``: the next N API calls fail with 503 /
      are dropped / get the proxy's 404, for deterministic tests; they count down and take
      precedence over the rates.
    """

    error_rate: float = 0.0
    latency_seconds: float = 0.0
    drop_rate: float = 0.0
    throttle_rate: float = 0.0
    throttle_reset_seconds: float = 2.0
    proxy_404_rate: float = 0.0
    fail_next: int = 0
    drop_next: int = 0
    proxy_404_next: int = 0

    def decide(self, rng: random.Random) -> FaultKind | None:
        """Pick this call's fault, if any (consumes ``fail_next``/``drop_next``)."""
        if self.drop_next > 0:
            self.drop_next -= 1
            return "drop"
        if self.fail_next > 0:
            self.fail_next -= 1
            return "503"
        if self.proxy_404_next > 0:
            self.proxy_404_next -= 1
            return "404"
        if self.drop_rate > 0 and rng.random() < self.drop_rate:
            return "drop"
        if self.error_rate > 0 and rng.random() < self.error_rate:
            return "500" if rng.random() < 0.5 else "503"
        if self.throttle_rate > 0 and rng.random() < self.throttle_rate:
            return "429"
        # Last, so that seeds without it draw the same faults as before it existed.
        if self.proxy_404_rate > 0 and rng.random() < self.proxy_404_rate:
            return "404"
        return None

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` (a subset of the fields) atomically; ``ValueError`` names a bad one."""
        checked: dict[str, float | int] = {}
        for key, value in changes.items():
            if key not in _FIELDS:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(sorted(_FIELDS))}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} must be a number")
            if key in _RATES and not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be between 0 and 1")
            if value < 0:
                raise ValueError(f"{key} must not be negative")
            if key in ("fail_next", "drop_next", "proxy_404_next"):
                if int(value) != value:
                    raise ValueError(f"{key} must be a whole number")
                checked[key] = int(value)
            else:
                checked[key] = float(value)
        for key, value in checked.items():
            setattr(self, key, value)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


_FIELDS = frozenset(Faults.__dataclass_fields__)
_RATES = frozenset({"error_rate", "drop_rate", "throttle_rate", "proxy_404_rate"})
