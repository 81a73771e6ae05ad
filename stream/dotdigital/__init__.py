"""The DotDigital side of ddsync: a client with rate limiting and retries, and its commands.

Build a client per connector with :meth:`DotDigitalClient.connect`; see the client module for
the contracts of the bulk operations.

The client (and with it aiohttp, its default transport) is imported on first use of
``DotDigitalClient``, ``Operation`` or ``PollSchedule``: the pure parts (rate limiting, retry
policy, errors, models) import without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stream.dotdigital.errors import (
    AddressBookNotFoundError,
    AuthenticationError,
    DotDigitalError,
    DuplicateAddressBookError,
    ImportFailedError,
    PermanentError,
    RemovalFailedError,
    RetriesExhausted,
    ThrottledError,
    TransientError,
    UnrecognizedNotFoundError,
    WrongRegionError,
)
from stream.dotdigital.models import (
    AccountInfo,
    AddressBook,
    ImportOutcome,
    Rejection,
    RemovalOutcome,
    normalize_email,
)
from stream.dotdigital.ratelimit import RateLimiter, RateLimitStatus
from stream.dotdigital.retry import RetryPolicy

if TYPE_CHECKING:
    from stream.dotdigital.client import DotDigitalClient, Operation, PollSchedule

_FROM_CLIENT = frozenset({"DotDigitalClient", "Operation", "PollSchedule"})

__all__ = [
    "AccountInfo",
    "AddressBook",
    "AddressBookNotFoundError",
    "AuthenticationError",
    "DotDigitalClient",
    "DotDigitalError",
    "DuplicateAddressBookError",
    "ImportFailedError",
    "ImportOutcome",
    "Operation",
    "PermanentError",
    "PollSchedule",
    "RateLimitStatus",
    "RateLimiter",
    "Rejection",
    "RemovalFailedError",
    "RemovalOutcome",
    "RetriesExhausted",
    "RetryPolicy",
    "ThrottledError",
    "TransientError",
    "UnrecognizedNotFoundError",
    "WrongRegionError",
    "normalize_email",
]


def __getattr__(name: str) -> object:
    if name in _FROM_CLIENT:
        from stream.dotdigital import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
