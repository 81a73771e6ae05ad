"""Classification of DotDigital error responses."""

from __future__ import annotations

import orjson
import pytest

from stream.dotdigital.errors import (
    AddressBookNotFoundError,
    AuthenticationError,
    DotDigitalError,
    DuplicateAddressBookError,
    PermanentError,
    RetriesExhausted,
    ThrottledError,
    TransientError,
    UnrecognizedNotFoundError,
    WrongRegionError,
    error_from_response,
    parse_error_body,
)


def v2(message: str) -> bytes:
    return orjson.dumps({"message": message})


def v3(code: str, description: str, details: list[dict[str, str]] | None = None) -> bytes:
    body: dict[str, object] = {"errorCode": code, "description": description}
    if details is not None:
        body["details"] = details
    return orjson.dumps(body)


@pytest.mark.parametrize(
    ("body", "code", "text"),
    [
        (v2("Error: ERROR_ADDRESSBOOK_NOT_FOUND"), "ERROR_ADDRESSBOOK_NOT_FOUND", None),
        (
            v2("That name is in use already, please choose another. ERROR_ADDRESSBOOK_DUPLICATE"),
            "ERROR_ADDRESSBOOK_DUPLICATE",
            "That name is in use already",
        ),
        (v2("Authorization has been denied for this request."), None, "Authorization has"),
        (v3("contacts:badJson", "The request JSON is badly formed"), "contacts:badJson", "badly"),
        (
            v3("contacts:contactNotFound", "Not found", [{"item": "a@b.c", "description": "nope"}]),
            "contacts:contactNotFound",
            "a@b.c: nope",
        ),
        (b"<html><body>Bad Gateway</body></html>", None, "Bad Gateway"),
        (b"", None, ""),
        (b"[1, 2]", None, "[1, 2]"),
    ],
)
def test_parse_error_body(body: bytes, code: str | None, text: str | None) -> None:
    parsed_code, parsed_text = parse_error_body(body)
    assert parsed_code == code
    if text is not None:
        assert text in parsed_text


def test_long_non_json_bodies_are_trimmed() -> None:
    _, text = parse_error_body(b"x" * 10_000)
    assert len(text) <= 200


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, v2("Authorization has been denied for this request."), AuthenticationError),
        (401, b"", AuthenticationError),
        (403, b"Forbidden: Access is denied", WrongRegionError),
        (429, b"", ThrottledError),
        (429, v3("contacts:tooManyActiveImports", "too many"), ThrottledError),
        (500, b"", TransientError),
        (503, b"<html>down</html>", TransientError),
        (502, v2("oops"), TransientError),
        (400, v2("Email is not a valid email address. ERROR_PARAMETER_INVALID"), PermanentError),
        (404, v2("Error: ERROR_ADDRESSBOOK_NOT_FOUND"), AddressBookNotFoundError),
        (400, v2("In use already. ERROR_ADDRESSBOOK_DUPLICATE"), DuplicateAddressBookError),
        (409, v3("contacts:idAlreadyExists", "exists"), PermanentError),
        (400, v2("Address book is in use. ERROR_ADDRESSBOOK_IN_USE"), TransientError),
    ],
)
def test_classification(status: int, body: bytes, kind: type[DotDigitalError]) -> None:
    error = error_from_response(status, body, what="GET /x")
    assert type(error) is kind
    assert error.status == status
    assert "GET /x" in error.message


@pytest.mark.parametrize("status", [400, 403, 500, 200])
def test_apiusage_exceeded_is_throttling_whatever_the_status(status: int) -> None:
    body = v2(
        "Your account has generated excess API activity and is being temporarily capped. "
        "Please contact support. ERROR_APIUSAGE_EXCEEDED"
    )
    error = error_from_response(status, body, what="GET /v2/address-books", retry_after=5.0)
    assert isinstance(error, ThrottledError)
    assert error.code == "ERROR_APIUSAGE_EXCEEDED"
    assert error.retry_after == 5.0
    assert not error.concurrency_cap


def test_permanent_errors_carry_the_token_or_the_v3_code() -> None:
    error = error_from_response(
        400, v2("Email is not a valid email address. ERROR_PARAMETER_INVALID"), what="POST /y"
    )
    assert error.code == "ERROR_PARAMETER_INVALID"
    error = error_from_response(400, v3("contacts:invalidId", "bad id"), what="GET /z")
    assert error.code == "contacts:invalidId"
    assert "bad id" in error.message


def test_concurrency_cap_is_told_apart_from_the_call_rate() -> None:
    error = error_from_response(429, v3("contacts:tooManyActiveImports", "wait"), what="PUT /i")
    assert isinstance(error, ThrottledError)
    assert error.concurrency_cap
    rate = error_from_response(429, b"", what="PUT /i")
    assert isinstance(rate, ThrottledError)
    assert not rate.concurrency_cap


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html><head><title>404 Not Found</title></head><body>nginx</body></html>",
        b'{"error": "not found"}',
        v2("No HTTP resource was found that matches the request URI."),
    ],
)
def test_a_404_without_dotdigitals_code_is_not_taken_for_dotdigitals_answer(body: bytes) -> None:
    error = error_from_response(404, body, what="GET /v2/address-books/9")
    assert type(error) is UnrecognizedNotFoundError
    assert isinstance(error, TransientError)  # retried within the budget, never success
    assert error.code is None
    assert "without DotDigital's error body" in error.message
    assert "GET /v2/address-books/9" in error.message


def test_a_404_with_dotdigitals_code_keeps_its_meaning() -> None:
    book = error_from_response(
        404, v2("Error: ERROR_ADDRESSBOOK_NOT_FOUND"), what="GET /v2/address-books/9"
    )
    assert type(book) is AddressBookNotFoundError
    contact = error_from_response(
        404, v3("contacts:contactNotFound", "gone"), what="GET /contacts/v3/email/{email}"
    )
    assert type(contact) is PermanentError
    assert contact.code == "contacts:contactNotFound"


def test_retries_exhausted_keeps_the_last_error() -> None:
    last = TransientError("GET /x failed with HTTP 503: down", status=503)
    exhausted = RetriesExhausted(last, attempts=4, elapsed=12.3)
    assert exhausted.last_error is last
    assert exhausted.status == 503
    assert "4 attempts" in exhausted.message
    assert "HTTP 503" in str(exhausted)


def test_repr_shows_status_code_and_message() -> None:
    error = PermanentError("GET /x failed", status=400, code="ERROR_X")
    assert repr(error) == "PermanentError(status=400, code='ERROR_X', message='GET /x failed')"
