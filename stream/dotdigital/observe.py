"""What a :class:`~stream.dotdigital.client.DotDigitalClient` reports of its traffic.

The client knows nothing of Prometheus (the CLI commands use it without metrics): it calls a
:class:`ClientObserver`, whose methods do nothing unless overridden. ddsync's pipeline passes
one that feeds its Prometheus metrics; the library imports nothing of the application.

Contract: callbacks run on the client's event loop, synchronously, and must not raise nor block.
Their arguments are drawn from small sets (no path, address book id, email nor credential
reaches an observer; a limiter name is a configured budget or one of at most
:data:`~stream.dotdigital.budgets.MAX_SCOPES` well-formed tier names), so they are safe as metric
labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

__all__ = [
    "NO_OBSERVER",
    "ApiOperation",
    "ClientObserver",
    "StatusClass",
    "ThrottleKind",
    "operation_of",
    "status_class",
]

ApiOperation = Literal[
    "account_info",
    "address_books",
    "import",
    "import_status",
    "removal",
    "removal_status",
    "contact_lookup",
    "contact_list",
    "other",
]
StatusClass = Literal["1xx", "2xx", "3xx", "4xx", "5xx", "network"]
ThrottleKind = Literal["http_429", "apiusage_exceeded", "concurrency_cap"]
# A limiter's name: the configured budget it starts from ("add", "remove", "other") or the
# tier DotDigital names in X-RateLimit-Scope (e.g. "lowCallRate"); see budgets.py.
Limiter = str


def operation_of(method: str, path: str) -> ApiOperation:
    """Which API operation a request is, from its method and (encoded) path."""
    path = path.split("?", 1)[0]
    if path == "/v2/account-info":
        return "account_info"
    if path.startswith("/contacts/v3/import"):
        return "import" if method == "PUT" else "import_status"
    if path.startswith("/v2/address-books"):
        return "removal" if path.endswith("/contacts/delete") else "address_books"
    if path.startswith("/v2/contacts/deletion/"):
        return "removal_status"
    if path.startswith("/contacts/v3/email/"):
        return "contact_lookup"
    if path == "/contacts/v3":
        return "contact_list"
    return "other"


def status_class(status: int) -> StatusClass:
    """``2xx`` for 200..299 and so on; a status outside 100..599 counts as ``5xx``."""
    if 100 <= status < 500:
        return ("1xx", "2xx", "3xx", "4xx")[status // 100 - 1]
    return "5xx"


class ClientObserver:
    """No-op callbacks of one client (one connector); subclass and override what you need."""

    def request(self, operation: ApiOperation, outcome: StatusClass) -> None:
        """A request was answered (``outcome`` its status class) or got no response
        (``network``: timeout, refused or dropped connection)."""

    def throttled(self, kind: ThrottleKind) -> None:
        """A response throttled the request (it will be retried if the budget allows)."""

    def retried(self, operation: ApiOperation) -> None:
        """A request is being sent again after a failed attempt."""

    def queued(self, limiter: Limiter, seconds: float) -> None:
        """A request waited ``seconds`` for the client's own rate limiter (0 when it did not)."""

    def budget(self, limiter: Limiter, per_minute: Callable[[], int]) -> None:
        """A rate limiter exists (the starting ones at once, one per tier as it is learnt);
        ``per_minute()`` reads its current budget, and is cheap and thread-safe to call."""

    def budget_gone(self, limiter: Limiter) -> None:
        """A rate limiter paces no operation any more (its tier was learnt under another
        name); it will not be queued for again."""

    def import_active(self, delta: int) -> None:
        """An accepted import started (+1) or stopped (-1) being polled."""

    def import_finished(self, created: int, updated: int, failed: int) -> None:
        """A finished import's report: contacts created, updated and failed."""


NO_OBSERVER = ClientObserver()
