"""The DotDigital traffic series, from a client talking to the sandbox over real HTTP.

As in ``test_client.py``, the client and the sandbox share one FakeClock (the ``clock`` and
``sandbox`` fixtures of ``tests/support/client_sandbox.py``): rate-limit windows and backoff take
no real time. The client reports through the same observer the pipeline uses, and the series
are read from the registry.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream.clock import FakeClock
from stream.dotdigital import DotDigitalClient, RetriesExhausted
from stream.observability.client_metrics import MetricsObserver
from stream.observability.metrics import Metrics
from stream.pipeline.clients import client_config
from stream.sandbox import Sandbox
from tests.support.client_accounts import (
    BOOK_A,
    FLAT,
    STUCK,
    STUCK_BOOK,
    TIGHT,
    TIGHT_BOOK,
    USER,
    connector,
    fast_retry,
)

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

NAME = "main"


async def observed(
    sb: Sandbox, clock: FakeClock, metrics: Metrics, username: str = USER, **overrides: Any
) -> DotDigitalClient:
    client = await DotDigitalClient.connect(
        client_config(connector(sb, username, **overrides)),
        clock=clock,
        retry=fast_retry(),
        observer=MetricsObserver(metrics, NAME),
    )
    return client


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"connector": NAME, **labels})
    return 0.0 if value is None else value


def requests(metrics: Metrics, operation: str, status_class: str) -> float:
    return sample(
        metrics,
        "ddsync_dotdigital_requests_total",
        operation=operation,
        status_class=status_class,
    )


async def test_requests_by_operation_and_status_class_and_retries(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    metrics = Metrics()
    async with await observed(sandbox, clock, metrics) as client:
        # Detection: account-info on r1 is a 403 (the account lives in r2); then r2 answers.
        assert requests(metrics, "account_info", "4xx") == 0
        assert requests(metrics, "account_info", "2xx") == 1
        sandbox.faults.update({"fail_next": 2})
        await client.list_address_books()
        # A POST, which aiohttp does not resend by itself on a dropped keep-alive connection.
        sandbox.faults.update({"drop_next": 1})
        await client.create_address_book("Metrics")
        await client.import_contacts(BOOK_A, ["d@example.com"])
        await client.remove_contacts(BOOK_A, ["d@example.com", "nobody@example.com"])
    assert requests(metrics, "address_books", "5xx") == 2
    assert requests(metrics, "address_books", "network") == 1
    assert requests(metrics, "address_books", "2xx") == 2
    assert sample(metrics, "ddsync_dotdigital_retries_total", operation="address_books") == 3
    assert requests(metrics, "import", "2xx") == 1
    assert sample(metrics, "ddsync_dotdigital_retries_total", operation="import") == 0
    assert requests(metrics, "import_status", "2xx") >= 1
    assert requests(metrics, "contact_lookup", "4xx") == 1  # nobody@: not found, removed
    assert requests(metrics, "removal", "2xx") == 1
    assert requests(metrics, "removal_status", "2xx") >= 1
    journal = len(sandbox.journal)
    counted = sum(
        s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "ddsync_dotdigital_requests_total"
    )
    assert counted == journal  # every request the sandbox saw, once


async def test_import_outcomes_and_active_imports(sandbox: Sandbox, clock: FakeClock) -> None:
    metrics = Metrics()
    async with await observed(sandbox, clock, metrics) as client:
        await client.import_contacts(BOOK_A, ["a@example.com", "b@example.com", "not-an-email"])
        await client.import_contacts(BOOK_A, ["a@example.com"])
        assert sample(metrics, "ddsync_dotdigital_active_imports") == 0
    outcome = "ddsync_import_contacts_total"
    assert sample(metrics, outcome, outcome="created") == 2
    assert sample(metrics, outcome, outcome="updated") == 1
    assert sample(metrics, outcome, outcome="failed") == 1

    async with await observed(sandbox, clock, metrics, STUCK) as client:
        stuck = asyncio.create_task(
            client.import_contacts(STUCK_BOOK, ["s@example.com"], deadline=clock.monotonic() + 1e6)
        )
        polled = requests(metrics, "import_status", "2xx")
        for _ in range(1000):
            if requests(metrics, "import_status", "2xx") > polled:
                break
            await asyncio.sleep(0.01)
        assert sample(metrics, "ddsync_dotdigital_active_imports") == 1
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        assert sample(metrics, "ddsync_dotdigital_active_imports") == 0


async def test_throttles_by_kind_and_the_learnt_budget(sandbox: Sandbox, clock: FakeClock) -> None:
    metrics = Metrics()
    async with await observed(sandbox, clock, metrics, TIGHT) as client:
        budget = "ddsync_rate_limit_budget_per_minute"
        assert sample(metrics, budget, limiter="add") == 75  # configured, nothing learnt yet
        # All three are sent before any answer says that the budget is 2: one 429.
        await asyncio.gather(
            *(client.import_contacts(TIGHT_BOOK, [f"y{i}@example.com"]) for i in range(3))
        )
        # Learnt from the headers: the tier imports count against, and its X-RateLimit-Limit.
        assert sample(metrics, budget, limiter="mediumCallRate") == 2
        assert (
            metrics.registry.get_sample_value(budget, {"connector": NAME, "limiter": "add"}) is None
        )
    assert sample(metrics, "ddsync_dotdigital_throttled_total", kind="http_429") == 1
    assert requests(metrics, "import", "4xx") == 1
    assert sample(metrics, "ddsync_dotdigital_retries_total", operation="import") == 1
    # The third import queued behind our own limiter for the rest of the minute.
    assert sample(metrics, "ddsync_rate_limiter_wait_seconds_total", limiter="mediumCallRate") > 0

    async with await observed(
        sandbox, clock, metrics, FLAT, api_endpoint=sandbox.urls["r1"]
    ) as client:
        for _ in range(3):
            await client.list_address_books()
        with pytest.raises(RetriesExhausted):
            await client.list_address_books(deadline=clock.monotonic() + 10)
    assert sample(metrics, "ddsync_dotdigital_throttled_total", kind="apiusage_exceeded") == 1

    async with await observed(sandbox, clock, metrics, max_active_imports=30) as client:
        # Configured above DotDigital's cap of 25, the 26th concurrent import meets a 429.
        await asyncio.gather(
            *(client.import_contacts(BOOK_A, [f"c{i}@example.com"]) for i in range(30))
        )
    assert sample(metrics, "ddsync_dotdigital_throttled_total", kind="concurrency_cap") >= 1
