from __future__ import annotations

import pytest

from stream.dotdigital.observe import operation_of, status_class
from stream.observability.client_metrics import MetricsObserver
from stream.observability.metrics import Metrics


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("GET", "/v2/account-info", "account_info"),
        ("GET", "/v2/address-books?select=1000&skip=0", "address_books"),
        ("POST", "/v2/address-books", "address_books"),
        ("GET", "/v2/address-books/7", "address_books"),
        ("PUT", "/contacts/v3/import", "import"),
        ("GET", "/contacts/v3/import/a%2Fb", "import_status"),
        ("POST", "/v2/address-books/7/contacts/delete", "removal"),
        ("GET", "/v2/contacts/deletion/d-1", "removal_status"),
        ("GET", "/contacts/v3/email/jane@example.com", "contact_lookup"),
        ("GET", "/contacts/v3?~listId=7&limit=5000", "contact_list"),
        ("GET", "/contacts/v3", "contact_list"),
        ("GET", "/v2/something-new", "other"),
    ],
)
def test_every_request_maps_to_one_operation(method: str, path: str, operation: str) -> None:
    assert operation_of(method, path) == operation


def test_status_classes() -> None:
    assert [status_class(s) for s in (200, 202, 301, 400, 429, 500, 503)] == [
        "2xx", "2xx", "3xx", "4xx", "4xx", "5xx", "5xx",
    ]  # fmt: skip
    assert status_class(999) == "5xx"


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"connector": "eu", **labels})


def test_the_observer_feeds_the_connectors_series() -> None:
    metrics = Metrics()
    observer = MetricsObserver(metrics, "eu")
    observer.request("import", "2xx")
    observer.request("import", "2xx")
    observer.request("contact_lookup", "network")
    observer.throttled("http_429")
    observer.throttled("apiusage_exceeded")
    observer.retried("import")
    observer.queued("add", 1.5)
    observer.queued("add", 0.0)
    observer.queued("other", 0.0)
    observer.import_active(+1)
    observer.import_active(+1)
    observer.import_active(-1)
    observer.import_finished(created=3, updated=2, failed=1)
    requests = "ddsync_dotdigital_requests_total"
    assert value(metrics, requests, operation="import", status_class="2xx") == 2
    assert value(metrics, requests, operation="contact_lookup", status_class="network") == 1
    assert value(metrics, requests, operation="import", status_class="5xx") is None
    throttled = "ddsync_dotdigital_throttled_total"
    assert value(metrics, throttled, kind="http_429") == 1
    assert value(metrics, throttled, kind="apiusage_exceeded") == 1
    assert value(metrics, throttled, kind="concurrency_cap") is None
    assert value(metrics, "ddsync_dotdigital_retries_total", operation="import") == 1
    wait = "ddsync_rate_limiter_wait_seconds_total"
    assert value(metrics, wait, limiter="add") == 1.5
    assert value(metrics, wait, limiter="other") == 0  # present before any queueing
    assert value(metrics, "ddsync_dotdigital_active_imports") == 1
    contacts = "ddsync_import_contacts_total"
    assert [value(metrics, contacts, outcome=o) for o in ("created", "updated", "failed")] == [
        3, 2, 1,
    ]  # fmt: skip


def test_budgets_are_read_at_scrape_time_and_a_retired_one_disappears() -> None:
    metrics = Metrics()
    observer = MetricsObserver(metrics, "eu")
    budget = {"add": 75}
    observer.budget("add", lambda: budget["add"])
    observer.budget("lowCallRate", lambda: 60)
    name = "ddsync_rate_limit_budget_per_minute"
    assert value(metrics, name, limiter="add") == 75
    budget["add"] = 2
    assert value(metrics, name, limiter="add") == 2
    observer.budget_gone("add")
    observer.budget_gone("never-there")
    assert value(metrics, name, limiter="add") is None
    assert value(metrics, name, limiter="lowCallRate") == 60
