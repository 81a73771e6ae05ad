"""The DotDigital side of ddsync: a client with rate limiting and retries, and its commands.

Build a client per connector with :meth:`DotDigitalClient.connect`; see the client module for
the contracts of the bulk operations.
"""

from stream.dotdigital.client import DotDigitalClient, Operation, PollSchedule
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
