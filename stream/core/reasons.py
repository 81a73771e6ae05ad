"""Why a record went to the dead-letter topic: the one vocabulary.

Its values are stable strings: they appear in dead-letter headers, metric labels, outcome
records and operators' replay filters (``ddsync replay --reason``). The decoder
(:mod:`stream.core.events`), the dispatcher and the suspensions all use these members.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a record went to the dead-letter topic. Values are stable: they are a public format."""

    # The record itself is unusable (decoder).
    INVALID_EVENT = "invalid_event"
    MISSING_IDENTIFIER = "missing_identifier"
    UNKNOWN_CONNECTOR = "unknown_connector"
    # DotDigital said no (dispatcher).
    CONTACT_REJECTED = "contact_rejected"
    ADDRESS_BOOK_NOT_FOUND = "address_book_not_found"
    IMPORT_FAILED = "import_failed"
    REMOVAL_FAILED = "removal_failed"
    # Transient failures that outlasted dispatch.retry_timeout_seconds.
    RETRIES_EXHAUSTED = "retries_exhausted"
    AUTH_FAILED = "auth_failed"
    # Not sent: the connector's account failed (stream.core.suspensions); replay once it works.
    CONNECTOR_SUSPENDED = "connector_suspended"
    # Not sent: the flush would remove too much of its address book (stream.core.removal_guard);
    # replaying the records releases them.
    REMOVAL_GUARD = "removal_guard"
    # A defect in ddsync itself; the record is kept for replay once it is fixed.
    INTERNAL_ERROR = "internal_error"
