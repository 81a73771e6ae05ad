"""Errors of the DotDigital client, classified by what a caller should do about them.

* :class:`ThrottledError` and :class:`TransientError`: wait and try again.
* :class:`AuthenticationError`: the credentials are wrong (or being rotated); a long-running
  pipeline may retry, an interactive command should stop.
* :class:`WrongRegionError`: the account lives on another regional host; configuration problem.
* :class:`PermanentError`: trying again will not help (bad request, address book gone, ...).
* :class:`UnrecognizedNotFoundError`: a 404 that is not DotDigital's own answer (a proxy's, a
  wrong ``api_endpoint``'s); retried like a transient error, within the budget.
* :class:`RetriesExhausted`: the retry budget ran out; ``last_error`` says why.

Contract: messages and ``repr`` never contain the password nor the ``Authorization`` header.
They hold the HTTP method and path, the status and what DotDigital said about it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "AddressBookNotFoundError",
    "AuthenticationError",
    "DotDigitalError",
    "DuplicateAddressBookError",
    "ImportFailedError",
    "PermanentError",
    "RemovalFailedError",
    "RetriesExhausted",
    "ThrottledError",
    "TransientError",
    "UnrecognizedNotFoundError",
    "WrongRegionError",
    "error_from_response",
    "parse_error_body",
]

APIUSAGE_EXCEEDED = "ERROR_APIUSAGE_EXCEEDED"
ADDRESSBOOK_NOT_FOUND = "ERROR_ADDRESSBOOK_NOT_FOUND"
ADDRESSBOOK_DUPLICATE = "ERROR_ADDRESSBOOK_DUPLICATE"
# Tokens DotDigital documents as "retrying later may succeed" although they come with a 4xx.
_TRANSIENT_TOKENS = frozenset({"ERROR_ADDRESSBOOK_IN_USE"})
# Concurrency caps: throttling, but not of the per-minute call rate.
CONCURRENCY_CODES = frozenset(
    {
        "contacts:tooManyActiveImports",
        "contacts:tooManyBulkDeleteJobs",
        "ERROR_IMPORT_TOOMANYACTIVEIMPORTS",
    }
)

_TOKEN = re.compile(r"ERROR_[A-Z0-9_]+")
# Non-JSON bodies (proxies' HTML error pages) are cut to keep log lines readable.
_MAX_TEXT = 200


class DotDigitalError(Exception):
    """Base of every error the client raises.

    ``status`` is the HTTP status when there was a response, ``code`` DotDigital's machine code
    (v2 ``ERROR_*`` token or v3 ``errorCode``) when it sent one, ``message`` the readable text.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r})"
        )


class AuthenticationError(DotDigitalError):
    """HTTP 401: DotDigital refused the API user's credentials."""


class WrongRegionError(DotDigitalError):
    """HTTP 403: valid credentials on the wrong regional host."""


class ThrottledError(DotDigitalError):
    """HTTP 429, or ``ERROR_APIUSAGE_EXCEEDED`` with any status.

    ``retry_after`` is the number of seconds until the budget resets, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after

    @property
    def concurrency_cap(self) -> bool:
        """True when the cap on concurrent jobs was hit, rather than the call rate."""
        return self.code in CONCURRENCY_CODES


class TransientError(DotDigitalError):
    """5xx, timeouts, refused or reset connections: the same request may succeed later."""


class UnrecognizedNotFoundError(TransientError):
    """HTTP 404 without DotDigital's error body: neither a v2 ``ERROR_*`` token nor a v3
    ``errorCode`` (an HTML page, an empty body, JSON of another shape).

    DotDigital names what it did not find (``ERROR_ADDRESSBOOK_NOT_FOUND``,
    ``contacts:contactNotFound``, ...); a bare 404 comes from something in between (a proxy
    or load balancer without a route, a wrong ``api_endpoint``), so it says nothing about the
    contact, the address book or the job asked for. It must never count as "already removed"
    nor as "address book gone". It is a :class:`TransientError`: a proxy being redeployed
    recovers, so it is retried within the call's budget; then :class:`RetriesExhausted` carries
    it, and the pipeline dead-letters its records as ``retries_exhausted`` with this message
    (replay them once the endpoint is fixed). A wrong endpoint fails every record, so the
    dead-letter circuit breaker stops the consumer rather than empty the topic.
    """


class PermanentError(DotDigitalError):
    """A 4xx other than 401/403/429: the same request will fail again."""


class AddressBookNotFoundError(PermanentError):
    """The address book does not exist (``ERROR_ADDRESSBOOK_NOT_FOUND``)."""


class DuplicateAddressBookError(PermanentError):
    """An address book or segment already has that name (``ERROR_ADDRESSBOOK_DUPLICATE``)."""


class ImportFailedError(PermanentError):
    """A contact import ended in a status other than ``Finished``.

    ``import_id`` and ``import_status`` (e.g. ``RejectedByWatchdog``) say which and how.
    """

    def __init__(self, message: str, *, import_id: str, import_status: str):
        super().__init__(message, code=import_status)
        self.import_id = import_id
        self.import_status = import_status


class RemovalFailedError(PermanentError):
    """A bulk removal from an address book ended ``Failed``."""

    def __init__(self, message: str, *, deletion_id: str, deletion_status: str):
        super().__init__(message, code=deletion_status)
        self.deletion_id = deletion_id
        self.deletion_status = deletion_status


class RetriesExhausted(DotDigitalError):
    """The retry budget was spent; ``last_error`` is the failure of the last attempt, and
    ``refused`` the last :class:`AuthenticationError` among the attempts (credentials refused
    once are refused: a 5xx after it does not make the call's failure transient)."""

    def __init__(
        self,
        last_error: DotDigitalError,
        *,
        attempts: int,
        elapsed: float,
        refused: AuthenticationError | None = None,
    ):
        super().__init__(
            f"gave up after {attempts} attempt{'s' if attempts != 1 else ''} "
            f"in {elapsed:.1f}s: {last_error.message}",
            status=last_error.status,
            code=last_error.code,
        )
        self.last_error = last_error
        self.attempts = attempts
        self.elapsed = elapsed
        self.refused = last_error if isinstance(last_error, AuthenticationError) else refused


def parse_error_body(body: bytes) -> tuple[str | None, str]:
    """Return ``(code, text)`` from a DotDigital error body.

    v2: ``{"message": "Human text ERROR_TOKEN"}`` -> the token is the last word.
    v3: ``{"errorCode": "contacts:x", "description": "...", "details": [...]}``.
    Anything else (empty, HTML, JSON of another shape) -> ``(None, <trimmed text>)``.
    """
    if not body.strip():
        return None, ""
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, _trim(body.decode("utf-8", errors="replace"))
    if isinstance(parsed, Mapping):
        error_code = parsed.get("errorCode")
        if isinstance(error_code, str):
            description = parsed.get("description")
            text = description if isinstance(description, str) else ""
            details = _details(parsed.get("details"))
            return error_code, f"{text} ({details})" if details else text
        message = parsed.get("message", parsed.get("Message"))
        if isinstance(message, str):
            words = message.split()
            last = words[-1].strip(".,;:") if words else ""
            return (last if _TOKEN.fullmatch(last) else None), message
    return None, _trim(body.decode("utf-8", errors="replace"))


def _details(details: object) -> str:
    if not isinstance(details, list):
        return ""
    parts = []
    for item in details[:5]:
        if isinstance(item, Mapping):
            what = item.get("item")
            why = item.get("description", item.get("error"))
            parts.append(": ".join(str(x) for x in (what, why) if x is not None))
    more = f"; and {len(details) - 5} more" if len(details) > 5 else ""
    return "; ".join(p for p in parts if p) + more


def _trim(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def error_from_response(
    status: int,
    body: bytes,
    *,
    what: str,
    retry_after: float | None = None,
) -> DotDigitalError:
    """Classify a failed response.

    ``what`` names the request for the message (``"GET /v2/address-books/7"``: method and path
    only, never the URL's credentials or headers). ``retry_after`` is the caller's reading of
    the rate-limit headers. Only DotDigital's own code says what was not found: a 404 without
    one is :class:`UnrecognizedNotFoundError`, whatever the path.
    """
    code, text = parse_error_body(body)
    detail = f"{code}: {text}" if code and code not in text else (text or "no details")
    message = f"{what} failed with HTTP {status}: {detail}"
    # The flat (hourly) scheme signals over-use with a 400 carrying this token.
    if APIUSAGE_EXCEEDED in text or code == APIUSAGE_EXCEEDED:
        return ThrottledError(
            message, status=status, code=APIUSAGE_EXCEEDED, retry_after=retry_after
        )
    if status == 429 or code in CONCURRENCY_CODES:
        return ThrottledError(message, status=status, code=code, retry_after=retry_after)
    if status == 401:
        return AuthenticationError(
            f"{what}: DotDigital rejected the API user's credentials (HTTP 401)",
            status=status,
            code=code,
        )
    if status == 403:
        return WrongRegionError(
            f"{what}: access denied (HTTP 403); the account is probably on another "
            "regional endpoint",
            status=status,
            code=code,
        )
    if status >= 500 or status == 408 or code in _TRANSIENT_TOKENS:
        return TransientError(message, status=status, code=code)
    if code == ADDRESSBOOK_NOT_FOUND:
        return AddressBookNotFoundError(message, status=status, code=code)
    if code == ADDRESSBOOK_DUPLICATE:
        return DuplicateAddressBookError(message, status=status, code=code)
    if status == 404 and code is None:
        return UnrecognizedNotFoundError(
            f"{what} failed with HTTP 404 without DotDigital's error body (a proxy's or another "
            f"server's answer; is api_endpoint right?): {text or 'empty body'}",
            status=status,
        )
    return PermanentError(message, status=status, code=code)
