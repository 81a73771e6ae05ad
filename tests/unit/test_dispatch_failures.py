"""Which dead-letter reason each error of an add or a removal gets (``dispatch._failure_of``)."""

from __future__ import annotations

import pytest

from stream.core.reasons import Reason
from stream.dotdigital import (
    AddressBookNotFoundError,
    AuthenticationError,
    DotDigitalError,
    ImportFailedError,
    Operation,
    PermanentError,
    RemovalFailedError,
    RetriesExhausted,
    ThrottledError,
    TransientError,
    WrongRegionError,
)
from stream.pipeline.dispatch import _account_level, _failure_of

REFUSED = PermanentError(
    "POST /v2/address-books/7/contacts/delete failed with HTTP 400", status=400
)


@pytest.mark.parametrize(
    ("error", "operation", "reason"),
    [
        (REFUSED, "remove", Reason.REMOVAL_FAILED),
        (REFUSED, "add", Reason.IMPORT_FAILED),
        (WrongRegionError("403", status=403), "remove", Reason.REMOVAL_FAILED),
        (DotDigitalError("odd"), "remove", Reason.REMOVAL_FAILED),
        (
            RemovalFailedError("x", deletion_id="d", deletion_status="Failed"),
            "remove",
            Reason.REMOVAL_FAILED,
        ),
        (
            ImportFailedError("x", import_id="i", import_status="Failed"),
            "add",
            Reason.IMPORT_FAILED,
        ),
        (AddressBookNotFoundError("gone"), "remove", Reason.ADDRESS_BOOK_NOT_FOUND),
        (AuthenticationError("401", status=401), "remove", Reason.AUTH_FAILED),
        (
            RetriesExhausted(TransientError("503"), attempts=3, elapsed=1.0),
            "remove",
            Reason.RETRIES_EXHAUSTED,
        ),
        (
            RetriesExhausted(AuthenticationError("401"), attempts=3, elapsed=1.0),
            "add",
            Reason.AUTH_FAILED,
        ),
        (
            RetriesExhausted(
                TransientError("503"), attempts=9, elapsed=1.0, refused=AuthenticationError("401")
            ),
            "add",
            Reason.AUTH_FAILED,
        ),
        # Retryable errors are never a refusal of the operation, whoever raised them.
        (TransientError("no answer"), "remove", Reason.RETRIES_EXHAUSTED),
        (ThrottledError("429", status=429), "add", Reason.RETRIES_EXHAUSTED),
        (ValueError("bug"), "remove", Reason.INTERNAL_ERROR),
    ],
)
def test_failure_reason(error: BaseException, operation: Operation, reason: Reason) -> None:
    assert _failure_of(error, operation).reason is reason


def test_credentials_refused_on_any_attempt_fail_the_account() -> None:
    refused = AuthenticationError("401", status=401)
    flaky = RetriesExhausted(TransientError("503"), attempts=9, elapsed=1.0, refused=refused)
    assert _account_level(flaky)
    assert _account_level(refused)
    assert _account_level(WrongRegionError("403", status=403))
    assert not _account_level(RetriesExhausted(TransientError("503"), attempts=9, elapsed=1.0))
    assert not _account_level(AddressBookNotFoundError("gone"))
