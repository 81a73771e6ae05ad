"""The state one sandbox shares across its three regional applications, and request keys."""

from __future__ import annotations

import base64
import binascii
import contextvars
import random
from collections import Counter
from typing import Any

from aiohttp import web

from stream.sandbox.faults import Faults
from stream.sandbox.journal import Journal
from stream.sandbox.ratelimits import AccountLimits
from stream.sandbox.settings import SandboxSettings
from stream.sandbox.state import AccountState, SandboxState

# Request-scoped values. aiohttp runs each request in its own task, so context variables set
# by the middleware are what its handler sees (and work on every aiohttp 3.x, unlike typed
# request keys).
INVALID_JSON: Any = object()
CURRENT_ACCOUNT: contextvars.ContextVar[AccountState] = contextvars.ContextVar("sandbox_account")
CURRENT_BODY: contextvars.ContextVar[Any] = contextvars.ContextVar("sandbox_body")


class Stats:
    """Counters for ``GET /_sandbox/stats`` (benchmarks read how often limits bit).

    ``calls`` and ``rate_limited`` are per account and budget (the budget names of
    :mod:`.ratelimits`: ``add``/``remove``/``other`` in the separate tier layout, ``low``/
    ``other`` in the shared one); ``totals`` per account: ``calls`` that passed the limiter,
    ``rate_limited`` refusals, and ``requests``, their sum. Faults and 401s happen before an
    account is known and are counted only in ``faults`` and ``unauthorized``.
    """

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.rate_limited: Counter[tuple[str, str]] = Counter()
        self.faults: Counter[str] = Counter()
        self.unauthorized = 0
        self.wrong_region = 0
        self.too_many_imports = 0

    def as_dict(self) -> dict[str, Any]:
        def nested(counter: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for (user, tier), count in sorted(counter.items()):
                out.setdefault(user, {})[tier] = count
            return out

        totals: dict[str, dict[str, int]] = {}
        for key, counter in (("calls", self.calls), ("rate_limited", self.rate_limited)):
            for (user, _), count in counter.items():
                entry = totals.setdefault(user, {"calls": 0, "rate_limited": 0})
                entry[key] += count
        for entry in totals.values():
            entry["requests"] = entry["calls"] + entry["rate_limited"]
        return {
            "calls": nested(self.calls),
            "rate_limited": nested(self.rate_limited),
            "rate_limited_total": sum(self.rate_limited.values()),
            "totals": dict(sorted(totals.items())),
            "faults": dict(self.faults),
            "unauthorized": self.unauthorized,
            "wrong_region": self.wrong_region,
            "too_many_imports": self.too_many_imports,
        }


class SandboxCore:
    """State shared by the three regional applications of one sandbox."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.state = SandboxState(settings.accounts, settings.clock, settings.retained_jobs)
        self.limiter = AccountLimits(settings.clock, settings.reset_header)
        self.faults = Faults(
            error_rate=settings.error_rate,
            latency_seconds=settings.latency_seconds,
            drop_rate=settings.drop_rate,
            throttle_rate=settings.throttle_rate,
        )
        self.rng = random.Random(settings.seed)
        self.journal = Journal(settings.journal_limit)
        self.stats = Stats()
        # Filled in by the server once the ports are bound.
        self.urls: dict[str, str] = {}
        # Decoded Authorization headers, so each distinct header is parsed once.
        self._auth_cache: dict[str, AccountState | None] = {}

    def authenticate(self, header: str | None) -> AccountState | None:
        if not header:
            return None
        if header in self._auth_cache:
            return _unlocked(self._auth_cache[header])
        found: AccountState | None = None
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            username, sep, password = decoded.partition(":")
            account = self.state.account(username) if sep else None
            if account is not None and account.account.password == password:
                found = account
        if len(self._auth_cache) < 10_000:  # bounded: junk headers must not grow memory
            self._auth_cache[header] = found
        return _unlocked(found)


def _unlocked(account: AccountState | None) -> AccountState | None:
    # DotDigital answers a locked API user (or a disabled account) as a wrong password: 401.
    return None if account is None or account.locked else account


CORE = web.AppKey("sandbox_core", SandboxCore)
REGION = web.AppKey("sandbox_region", str)
