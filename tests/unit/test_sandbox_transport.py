"""The DotDigital client against the sandbox in process (:mod:`stream.sandbox.transport`).

No socket: each request goes through the region's aiohttp application (faults, auth, rate
limits, region, handler, journal) in the test's event loop. The client and the sandbox share a
FakeClock, as over HTTP (``tests/integration/test_sandbox_transport.py`` checks that both ways
give the same answers). What the transport adds for tests (requests held in the air, waiting on
the sandbox's state) is tested last.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import orjson
import pytest

from stream.clock import FakeClock
from stream.dotdigital import (
    AuthenticationError,
    DotDigitalClient,
    RetriesExhausted,
    ThrottledError,
)
from stream.dotdigital.transport import Request, TransportError
from stream.sandbox import Sandbox, SandboxSettings
from stream.sandbox.transport import SandboxTransport, in_process_sandbox, region_url
from stream.settings import Secret
from stream.testing import SandboxTransport as ExportedTransport
from tests.support.client_accounts import (
    BOOK_A,
    PASSWORD,
    TIGHT,
    TIGHT_BOOK,
    USER,
    accounts,
    connect,
)

BOOK = BOOK_A


class World:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.sandbox: Sandbox
        self.sandbox, self.transport = in_process_sandbox(
            SandboxSettings(accounts=accounts(), clock=self.clock)
        )

    async def connect(self, username: str = USER, password: str = PASSWORD) -> DotDigitalClient:
        return await connect(
            self.sandbox,
            self.clock,
            username,
            transport=self.transport,
            password=Secret(password),
        )

    def calls(self, method: str, path: str) -> list[int | None]:
        return [e.status for e in self.sandbox.journal if e.method == method and e.path == path]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    world = World()
    yield world
    await world.transport.close()


async def test_the_client_detects_its_region_and_imports(world: World) -> None:
    async with await world.connect() as client:
        assert client.endpoint == region_url("r2")
        outcome = await client.import_contacts(BOOK, ["a@example.com", "not-an-email"])
    assert set(outcome.imported) == {"a@example.com"}
    assert outcome.rejected["not-an-email"].failure_code == "invalidEmail"
    assert world.sandbox.members(USER, BOOK) == {"a@example.com"}
    assert world.calls("PUT", "/contacts/v3/import") == [202]
    assert {e.region for e in world.sandbox.journal} == {"r1", "r2"}  # detection on r1


async def test_the_client_removes(world: World) -> None:
    async with await world.connect() as client:
        await client.import_contacts(BOOK, ["a@example.com", "b@example.com"])
        outcome = await client.remove_contacts(BOOK, ["A@example.com"])
    assert outcome.removed == {"A@example.com"}
    assert world.sandbox.members(USER, BOOK) == {"b@example.com"}
    assert world.calls("POST", f"/v2/address-books/{BOOK}/contacts/delete") == [202]


async def test_a_429_of_the_rate_limits_is_waited_out_and_retried(world: World) -> None:
    async with await world.connect(TIGHT) as client:
        # All three are sent before any answer tells the client that the budget is 2.
        outcomes = await asyncio.gather(
            *(client.import_contacts(TIGHT_BOOK, [f"y{i}@example.com"]) for i in range(3))
        )
    assert all(len(o.imported) == 1 for o in outcomes)
    assert sorted(world.calls("PUT", "/contacts/v3/import"), key=str) == [202, 202, 202, 429]


async def test_a_429_until_the_deadline_is_throttling_exhausted(world: World) -> None:
    async with await world.connect(TIGHT) as client:
        await client.import_contacts(TIGHT_BOOK, ["z0@example.com"])
        await client.import_contacts(TIGHT_BOOK, ["z1@example.com"])
    async with await world.connect(TIGHT) as client:
        with pytest.raises(RetriesExhausted) as caught:
            await client.import_contacts(
                TIGHT_BOOK, ["z2@example.com"], deadline=world.clock.monotonic() + 1.0
            )
    assert isinstance(caught.value.last_error, ThrottledError)
    assert caught.value.last_error.status == 429


async def test_the_429_carries_the_rate_limit_headers(world: World) -> None:
    # Straight through the transport: the first two spend the minute's budget of two imports.
    answers = [
        await world.transport.send(
            Request(
                "PUT",
                region_url("r1") + "/contacts/v3/import",
                timeout=5.0,
                headers={"Authorization": _basic(TIGHT), "Content-Type": "application/json"},
                body=orjson.dumps(
                    {
                        "contacts": [
                            {"matchIdentifier": "email", "identifiers": {"email": "q@x.com"}}
                        ]
                    }
                ),
            )
        )
        for _ in range(3)
    ]
    assert [a.status for a in answers] == [202, 202, 429]
    assert answers[2].headers["X-RateLimit-Remaining"] == "0"
    assert int(answers[2].headers["X-RateLimit-Reset"]) > 0
    assert answers[2].headers["Content-Type"].startswith("application/json")


async def test_a_wrong_password_is_a_401(world: World) -> None:
    with pytest.raises(AuthenticationError) as caught:
        await world.connect(password="wrong-" + PASSWORD)
    assert caught.value.status == 401
    assert [e.status for e in world.sandbox.journal] == [401]


async def test_a_dropped_connection_and_an_unknown_host_are_transport_errors(
    world: World,
) -> None:
    world.sandbox.faults.update({"drop_next": 1})
    request = Request("GET", region_url("r1") + "/v2/account-info", timeout=5.0)
    with pytest.raises(TransportError) as dropped:
        await world.transport.send(request)
    assert dropped.value.kind == "dropped"
    assert [e.status for e in world.sandbox.journal] == [None]
    elsewhere = Request("GET", "http://127.0.0.1:9/v2/account-info", timeout=5.0)
    with pytest.raises(TransportError) as unreachable:
        await world.transport.send(elsewhere)
    assert unreachable.value.kind == "unreachable"


async def test_a_request_past_its_timeout_is_still_handled(world: World) -> None:
    world.sandbox.faults.update({"latency_seconds": 0.2})
    request = Request("GET", region_url("r1") + "/v2/account-info", timeout=0.05)
    with pytest.raises(TransportError) as caught:
        await world.transport.send(request)
    assert caught.value.kind == "timeout"
    await world.transport.close()  # as a server finishes a request whose client went away
    assert [e.status for e in world.sandbox.journal] == [401]


async def test_a_held_request_reaches_the_sandbox_when_released(world: World) -> None:
    world.transport.hold()
    request = Request("GET", region_url("r1") + "/v2/account-info", timeout=5.0)
    sending = asyncio.create_task(world.transport.send(request))
    await world.transport.until(lambda: world.transport.received, "the request sent")
    for _ in range(20):  # turns of the loop in which an unheld request would be answered
        await asyncio.sleep(0)
    assert not sending.done()
    assert list(world.sandbox.journal) == []
    world.transport.release()
    await world.transport.until(lambda: world.sandbox.journal, "the request answered")
    assert (await sending).status == 401
    assert world.transport.received == [request]


async def test_waiting_for_what_does_not_happen_fails_at_its_bound(world: World) -> None:
    with pytest.raises(AssertionError, match=r"nothing within 0\.01 s"):
        await world.transport.until(lambda: False, "nothing", seconds=0.01)


def test_the_transport_is_exported_for_users_tests() -> None:
    assert ExportedTransport is SandboxTransport


def _basic(username: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{PASSWORD}".encode()).decode()
