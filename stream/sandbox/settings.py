"""How one sandbox runs: its accounts, where it listens, and its initial faults."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from stream.clock import Clock, SystemClock
from stream.sandbox.accounts import (
    SandboxAccount,
    check_accounts,
    default_accounts,
)

ResetHeaderMode = Literal["seconds", "epoch"]
UnknownContactRemoval = Literal["404", "204"]


@dataclass(frozen=True)
class SandboxSettings:
    """Settings of :func:`stream.sandbox.run_sandbox`.

    * ``port=0`` binds each region to a free port; ``port=N`` binds r1, r2, r3 to N, N+1, N+2.
    * ``advertised_host`` is the host put into ``ApiEndpoint`` and :attr:`Sandbox.urls`
      (default: ``host``, or 127.0.0.1 when ``host`` is a wildcard address).
    * ``seed`` makes fault injection reproducible (``None`` = random).
    * ``reset_header``: ``X-RateLimit-Reset`` as seconds until the window resets (``"seconds"``,
      what DotDigital's PHP SDK documents) or as the Unix time of the reset (``"epoch"``).
    * ``error_rate``/``latency_seconds``/``drop_rate``/``throttle_rate``: initial faults;
      change them at run time through :attr:`Sandbox.faults` or ``POST /_sandbox/faults``.
    * ``unknown_contact_removal``: what ``DELETE /v2/address-books/{id}/contacts/{contactId}``
      answers for a contact id the account does not know ("404" ``ERROR_CONTACT_NOT_FOUND``,
      or "204" as if removed). A known contact that is not in the book always gets 204.
    * ``journal_limit``: the journal keeps at least this many most recent requests (bounded so
      that a long-running sandbox does not grow without end); ``None`` keeps all.
    * ``clock``: time for rate-limit windows and job delays (tests may pass a FakeClock).
    """

    accounts: Sequence[SandboxAccount] = field(default_factory=default_accounts)
    host: str = "127.0.0.1"
    port: int = 0
    advertised_host: str | None = None
    seed: int | None = 0
    reset_header: ResetHeaderMode = "seconds"
    error_rate: float = 0.0
    latency_seconds: float = 0.0
    drop_rate: float = 0.0
    throttle_rate: float = 0.0
    unknown_contact_removal: UnknownContactRemoval = "404"
    journal_limit: int | None = 100_000
    # How many finished import/deletion jobs each account remembers for polling.
    retained_jobs: int = 2_000
    clock: Clock = field(default_factory=SystemClock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.accounts:
            raise ValueError("the sandbox needs at least one account")
        check_accounts(self.accounts)
        if self.reset_header not in ("seconds", "epoch"):
            raise ValueError("reset_header must be 'seconds' or 'epoch'")
        if self.unknown_contact_removal not in ("404", "204"):
            raise ValueError("unknown_contact_removal must be '404' or '204'")
        if not 0 <= self.port <= 65533:
            raise ValueError("port must be 0 or a port number leaving room for N+1 and N+2")
        for name in ("error_rate", "drop_rate", "throttle_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.latency_seconds < 0:
            raise ValueError("latency_seconds must not be negative")
