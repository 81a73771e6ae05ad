"""Rate limits (tiered and flat), the 25-active-imports cap, and faults, over real HTTP.

Time-dependent behaviour runs on a FakeClock given to the sandbox, so windows reset and
imports finish when the test says, not after real minutes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from stream.clock import FakeClock
from stream.sandbox import (
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    run_sandbox,
)
from tests.support import Api, validate_journal
from tests.support.openapi import validate_error_body

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

USER = "limits@apiconnector.com"
PASSWORD = "pw"
# 10 s into a minute (and into an hour), so window arithmetic is easy to read.
START = 1_700_000_000 - (1_700_000_000 % 3600) + 10.0
IMPORT = {"contacts": [{"matchIdentifier": "email", "identifiers": {"email": "a@example.com"}}]}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def account(**kwargs: Any) -> SandboxAccount:
    base: dict[str, Any] = {
        "import_delay_seconds": 0,
        "address_books": (SandboxAddressBook(77, "Book"),),
    }
    base.update(kwargs)
    return SandboxAccount(USER, PASSWORD, **base)


# -- tiered ----------------------------------------------------------------------------------


async def test_every_authenticated_response_has_rate_limit_headers(
    session: aiohttp.ClientSession,
) -> None:
    clock = FakeClock(START)
    async with run_sandbox(SandboxSettings(accounts=[account()], clock=clock)) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        calls = [
            ("GET", "/v2/account-info", None, "r1", 200, "highCallRate", "3000"),
            ("GET", "/v2/address-books/9", None, "r1", 404, "highCallRate", "3000"),
            ("PUT", "/contacts/v3/import", IMPORT, "r1", 202, "mediumCallRate", "75"),
            ("POST", "/v2/address-books/77/contacts/delete", [1], "r1", 202, "lowCallRate", "35"),
            ("DELETE", "/v2/address-books/77/contacts/1", None, "r1", 404, "lowCallRate", "35"),
            ("GET", "/v2/address-books", None, "r2", 403, "highCallRate", "3000"),
            ("GET", "/contacts/v3?~listId=77", None, "r1", 200, "highCallRate", "3000"),
        ]
        for method, path, body, region, status, scope, limit in calls:
            reply = await api.call(method, path, body, region=region)
            assert reply.status == status, (method, path, reply.text)
            assert reply.headers["X-RateLimit-Scope"] == scope
            assert reply.headers["X-RateLimit-Limit"] == limit
            assert reply.headers["X-RateLimit-Reset"] == "50"  # seconds to the next minute
        other = await api.call("GET", "/v2/account-info")
        # account-info, the 404, the 403, the listing and this call: five "other" calls so far.
        assert other.headers["X-RateLimit-Remaining"] == str(3000 - 5)
        assert sb.stats.as_dict()["calls"] == {USER: {"add": 1, "remove": 2, "other": 5}}
        validate_journal(sb.journal)


async def test_shared_layout_spends_one_low_budget_on_imports_removals_and_listing(
    session: aiohttp.ClientSession,
) -> None:
    clock = FakeClock(START)
    shared = account(tier_layout="shared", add_per_minute=4, remove_per_minute=1000)
    async with run_sandbox(SandboxSettings(accounts=[shared], clock=clock)) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        spent = [
            ("PUT", "/contacts/v3/import", IMPORT, 202),
            ("POST", "/v2/address-books/77/contacts/delete", [1], 202),
            ("GET", "/contacts/v3?~listId=77", None, 200),
            ("DELETE", "/v2/address-books/77/contacts/1", None, 404),
        ]
        for left, (method, path, body, status) in zip((3, 2, 1, 0), spent, strict=True):
            reply = await api.call(method, path, body)
            assert reply.status == status, (method, path, reply.text)
            assert reply.headers["X-RateLimit-Scope"] == "lowCallRate"
            assert reply.headers["X-RateLimit-Limit"] == "4"
            assert reply.headers["X-RateLimit-Remaining"] == str(left)
        # The shared budget is spent, whichever of the three kinds of call comes next.
        for method, path, body in (
            ("PUT", "/contacts/v3/import", IMPORT),
            ("POST", "/v2/address-books/77/contacts/delete", [1]),
            ("GET", "/contacts/v3", None),
        ):
            refused = await api.call(method, path, body)
            assert refused.status == 429, (method, path)
            assert refused.headers["X-RateLimit-Scope"] == "lowCallRate"
            validate_error_body(path, refused.body, 429)
        # Everything else has its own budget.
        others = await api.call("GET", "/contacts/v3/email/a@example.com")
        assert others.status == 200
        assert others.headers["X-RateLimit-Scope"] == "highCallRate"
        assert others.headers["X-RateLimit-Limit"] == "3000"
        stats = sb.stats.as_dict()
        assert stats["calls"] == {USER: {"low": 4, "other": 1}}
        assert stats["rate_limited"] == {USER: {"low": 3}}
        assert stats["totals"] == {USER: {"calls": 5, "rate_limited": 3, "requests": 8}}
        clock.advance(50)  # the next minute
        again = await api.call("GET", "/contacts/v3")
        assert again.status == 200
        assert again.headers["X-RateLimit-Remaining"] == "3"
        validate_journal(sb.journal)


async def test_tier_budget_exhausted_is_429_until_the_minute_ends(
    session: aiohttp.ClientSession,
) -> None:
    clock = FakeClock(START)
    settings = SandboxSettings(accounts=[account(add_per_minute=3)], clock=clock)
    async with run_sandbox(settings) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        remaining = []
        for _ in range(3):
            reply = await api.call("PUT", "/contacts/v3/import", IMPORT)
            assert reply.status == 202
            remaining.append(reply.headers["X-RateLimit-Remaining"])
        assert remaining == ["2", "1", "0"]
        clock.advance(20)
        refused = await api.call("PUT", "/contacts/v3/import", IMPORT)
        assert refused.status == 429
        assert refused.body["errorCode"] == "contacts:tooManyRequests"
        validate_error_body("/contacts/v3/import", refused.body, 429)
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert refused.headers["X-RateLimit-Reset"] == "30"
        assert refused.headers["X-RateLimit-Scope"] == "mediumCallRate"
        # Other tiers are counted separately.
        assert (await api.call("GET", "/v2/address-books")).status == 200
        clock.advance(30)  # the next minute
        again = await api.call("PUT", "/contacts/v3/import", IMPORT)
        assert again.status == 202
        assert again.headers["X-RateLimit-Remaining"] == "2"
        assert sb.stats.as_dict()["rate_limited"] == {USER: {"add": 1}}
        validate_journal(sb.journal)


async def test_v2_429_body_and_epoch_reset(session: aiohttp.ClientSession) -> None:
    clock = FakeClock(START)
    settings = SandboxSettings(
        accounts=[account(remove_per_minute=1)], clock=clock, reset_header="epoch"
    )
    async with run_sandbox(settings) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        path = "/v2/address-books/77/contacts/delete"
        assert (await api.call("POST", path, [1])).status == 202
        refused = await api.call("POST", path, [1])
        assert refused.status == 429
        assert refused.body["message"].endswith("ERROR_RATE_LIMIT_EXCEEDED")
        assert int(refused.headers["X-RateLimit-Reset"]) == int(START - 10 + 60)


async def test_no_rate_limits_for_benchmarks(session: aiohttp.ClientSession) -> None:
    settings = SandboxSettings(accounts=[account(add_per_minute=1, rate_limits_enabled=False)])
    async with run_sandbox(settings) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        for _ in range(5):
            reply = await api.call("PUT", "/contacts/v3/import", IMPORT)
            assert reply.status == 202
            assert "X-RateLimit-Limit" not in reply.headers


# -- flat ------------------------------------------------------------------------------------


async def test_flat_scheme_caps_the_hour_with_apiusage_exceeded(
    session: aiohttp.ClientSession,
) -> None:
    clock = FakeClock(START)
    settings = SandboxSettings(
        accounts=[account(rate_limit_scheme="flat", flat_per_hour=3)], clock=clock
    )
    async with run_sandbox(settings) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        info = await api.call("GET", "/v2/account-info")
        props = {p["name"]: p["value"] for p in info.body["properties"]}
        assert (props["ApiCallsInLastHour"], props["ApiCallsRemaining"]) == ("1", "2")
        assert "X-RateLimit-Limit" not in info.headers
        assert (await api.call("PUT", "/contacts/v3/import", IMPORT)).status == 202
        assert (await api.call("GET", "/v2/address-books")).status == 200
        for method, path, body in (
            ("GET", "/v2/address-books", None),
            ("PUT", "/contacts/v3/import", IMPORT),
        ):
            capped = await api.call(method, path, body)
            assert capped.status == 400
            assert capped.body["message"].endswith("ERROR_APIUSAGE_EXCEEDED")
            validate_error_body(path, capped.body, 400)
        clock.advance(3600)
        assert (await api.call("GET", "/v2/address-books")).status == 200


# -- the active-import cap -------------------------------------------------------------------


async def test_at_most_25_active_imports(session: aiohttp.ClientSession) -> None:
    clock = FakeClock(START)
    settings = SandboxSettings(accounts=[account(import_delay_seconds=30)], clock=clock)
    async with run_sandbox(settings) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        ids = []
        for _ in range(25):
            reply = await api.call("PUT", "/contacts/v3/import", IMPORT)
            assert reply.status == 202
            ids.append(reply.body["importId"])
        refused = await api.call("PUT", "/contacts/v3/import", IMPORT)
        assert refused.status == 429
        assert refused.body == {
            "errorCode": "contacts:tooManyActiveImports",
            "description": "Your import request cannot be accepted as too many imports are "
            "being processed for you account. Please wait for an import to complete and then "
            "resubmit.",
        }
        assert "X-RateLimit-Scope" in refused.headers
        status = await api.call("GET", f"/contacts/v3/import/{ids[0]}")
        assert status.body["status"] == "NotFinished"
        clock.advance(30)
        status = await api.call("GET", f"/contacts/v3/import/{ids[0]}")
        assert status.body["status"] == "Finished"
        assert (await api.call("PUT", "/contacts/v3/import", IMPORT)).status == 202
        assert sb.stats.too_many_imports == 1
        validate_journal(sb.journal)


# -- faults ----------------------------------------------------------------------------------


async def test_fail_next_serves_503_html_then_recovers(session: aiohttp.ClientSession) -> None:
    async with run_sandbox(SandboxSettings(accounts=[account()])) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        sb.faults.fail_next = 2
        for _ in range(2):
            reply = await api.call("GET", "/v2/address-books")
            assert reply.status == 503
            assert "Service Unavailable" in reply.text
            assert "X-RateLimit-Limit" not in reply.headers  # faults cost no budget
        assert (await api.call("GET", "/v2/address-books")).status == 200
        assert [e.status for e in sb.journal] == [503, 503, 200]
        assert sb.stats.as_dict()["faults"] == {"503": 2}


async def test_proxy_404_serves_an_html_page_without_dotdigitals_error_body(
    session: aiohttp.ClientSession,
) -> None:
    async with run_sandbox(SandboxSettings(accounts=[account()])) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        async with session.post(
            sb.urls["r1"] + "/_sandbox/faults", json={"proxy_404_next": 1}
        ) as r:
            assert r.status == 200
        reply = await api.call("GET", "/contacts/v3/email/a@example.com")
        assert reply.status == 404
        assert reply.headers["Content-Type"].startswith("text/html")
        assert "errorCode" not in reply.text
        assert "ERROR_" not in reply.text
        # Then DotDigital's own answer again.
        reply = await api.call("GET", "/contacts/v3/email/a@example.com")
        assert reply.status == 404
        assert "contacts:contactNotFound" in reply.text
        assert sb.stats.as_dict()["faults"] == {"404": 1}


async def test_error_rate_one_fails_every_api_call_but_not_control(
    session: aiohttp.ClientSession,
) -> None:
    settings = SandboxSettings(accounts=[account()], error_rate=1.0, seed=7)
    async with run_sandbox(settings) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        statuses = {(await api.call("GET", "/v2/account-info")).status for _ in range(20)}
        assert statuses == {500, 503}
        async with session.get(sb.urls["r1"] + "/_sandbox/faults") as r:
            assert r.status == 200
            assert (await r.json())["error_rate"] == 1.0


async def test_error_rate_is_a_share_and_reproducible(session: aiohttp.ClientSession) -> None:
    async def run() -> list[int]:
        settings = SandboxSettings(accounts=[account()], error_rate=0.3, seed=42)
        async with run_sandbox(settings) as sb:
            api = Api(session, sb.urls, USER, PASSWORD)
            return [(await api.call("GET", "/v2/address-books")).status for _ in range(200)]

    first, second = await run(), await run()
    assert first == second
    failed = sum(1 for s in first if s >= 500)
    assert 30 <= failed <= 90


async def test_dropped_connection(session: aiohttp.ClientSession) -> None:
    async with run_sandbox(SandboxSettings(accounts=[account()])) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        sb.faults.drop_next = 1
        # aiohttp silently retries idempotent methods (GET, PUT, DELETE) once on a dropped
        # connection; POST is not retried, so the client sees the drop.
        path = "/v2/address-books/77/contacts/delete"
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await api.call("POST", path, [1])
        assert sb.journal[-1].status is None
        assert (await api.call("POST", path, [1])).status == 202
        sb.faults.drop_rate = 1.0
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await api.call("PUT", "/contacts/v3/import", IMPORT)
        assert sb.stats.as_dict()["faults"]["drop"] >= 2


async def test_latency(session: aiohttp.ClientSession) -> None:
    async with run_sandbox(SandboxSettings(accounts=[account()], latency_seconds=1.0)) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        started = time.perf_counter()
        assert (await api.call("GET", "/v2/address-books")).status == 200
        assert time.perf_counter() - started >= 1.0
        # Control paths are not delayed (the margin is wide: a busy machine is no failure).
        started = time.perf_counter()
        async with session.get(sb.urls["r1"] + "/_sandbox/health") as r:
            assert r.status == 200
        assert time.perf_counter() - started < 0.9


async def test_faults_control_endpoint(session: aiohttp.ClientSession) -> None:
    async with run_sandbox(SandboxSettings(accounts=[account()])) as sb:
        url = sb.urls["r2"] + "/_sandbox/faults"
        async with session.post(url, json={"error_rate": 1.0, "latency_seconds": 0.01}) as r:
            assert r.status == 200
            assert await r.json() == {
                "error_rate": 1.0,
                "latency_seconds": 0.01,
                "drop_rate": 0.0,
                "throttle_rate": 0.0,
                "throttle_reset_seconds": 2.0,
                "proxy_404_rate": 0.0,
                "fail_next": 0,
                "drop_next": 0,
                "proxy_404_next": 0,
            }
        assert sb.faults.error_rate == 1.0
        api = Api(session, sb.urls, USER, PASSWORD)
        assert (await api.call("GET", "/v2/address-books")).status in (500, 503)
        for bad in (
            {"error_rate": 2},
            {"drop_rate": -1},
            {"throttle_rate": 1.5},
            {"proxy_404_rate": 1.5},
            {"proxy_404_next": 0.5},
            {"bogus": 1},
            {"fail_next": 1.5},
            [1],
        ):
            async with session.post(url, json=bad) as r:
                assert r.status == 400, bad
        async with session.post(url, data=b"{nope") as r:
            assert r.status == 400
        async with session.post(url, json={"error_rate": 0, "latency_seconds": 0}) as r:
            assert r.status == 200
        async with session.get(url) as r:
            assert (await r.json())["error_rate"] == 0.0
        assert (await api.call("GET", "/v2/address-books")).status == 200


async def test_a_throttling_storm_answers_429_with_rate_limit_headers(
    session: aiohttp.ClientSession,
) -> None:
    async with run_sandbox(SandboxSettings(accounts=[account()], throttle_rate=1.0)) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        for path in ("/v2/address-books", "/contacts/v3/email/a@example.com"):
            answer = await api.call("GET", path)
            assert answer.status == 429
            assert answer.headers["X-RateLimit-Remaining"] == "0"
            assert answer.headers["X-RateLimit-Reset"] == "2"
        sb.faults.update({"throttle_rate": 0})
        assert (await api.call("GET", "/v2/address-books")).status == 200
        assert sb.stats.faults["429"] == 2


async def test_concurrent_load_is_consistent(session: aiohttp.ClientSession) -> None:
    """Many concurrent imports and removals over many books end in the expected membership."""
    settings = SandboxSettings(
        accounts=[account(rate_limits_enabled=False, import_delay_seconds=0.01)]
    )
    async with run_sandbox(settings) as sb:
        api = Api(session, sb.urls, USER, PASSWORD)
        books = []
        for i in range(20):
            reply = await api.call("POST", "/v2/address-books", {"name": f"Load {i}"})
            books.append(reply.body["id"])

        async def fill(book: int) -> None:
            contacts = [
                {
                    "matchIdentifier": "email",
                    "identifiers": {"email": f"c{i}@example.com"},
                    "lists": [book],
                }
                for i in range(100)
            ]
            reply = await api.call("PUT", "/contacts/v3/import", {"contacts": contacts})
            assert reply.status == 202
            while True:
                status = await api.call("GET", f"/contacts/v3/import/{reply.body['importId']}")
                if status.body["status"] == "Finished":
                    break
                await asyncio.sleep(0.01)
            ids = [c["contactId"] for c in status.body["created"] + status.body["updated"]]
            removal = await api.call("POST", f"/v2/address-books/{book}/contacts/delete", ids[:50])
            assert removal.status == 202

        started = time.perf_counter()
        await asyncio.gather(*(fill(book) for book in books))
        elapsed = time.perf_counter() - started
        for book in books:
            assert sb.members(USER, book) == {f"c{i}@example.com" for i in range(50, 100)}
        assert elapsed < 10
