"""The DotDigital client against hostile answers, over real HTTP.

What the sandbox cannot say (malformed HTTP, absurd rate-limit headers, bodies of the wrong
shape) comes from a raw TCP server scripted per test: it answers each request with whatever
bytes the test returns, well-formed or not. What the sandbox can say (dropped connections,
partial import failures) comes from the sandbox. Client, sandbox and backoff share one
FakeClock, so budgets of minutes pass in milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from stream.clock import FakeClock
from stream.dotdigital import (
    AddressBookNotFoundError,
    DotDigitalClient,
    RetriesExhausted,
    RetryPolicy,
    ThrottledError,
)
from stream.dotdigital.ratelimit import MAX_RETRY_AFTER_SECONDS
from stream.pipeline.clients import client_config
from stream.sandbox import (
    Sandbox,
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    run_sandbox,
)
from stream.settings import ConnectorSettings, Secret

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

PASSWORD = "correct-Horse-battery-staple-42"
USER = "apiuser-hostile@apiconnector.com"
BOOK = 801
BUDGET = 30.0
CREDENTIALS = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def policy(**overrides: Any) -> RetryPolicy:
    return RetryPolicy(**{"total_seconds": BUDGET, "random": lambda: 0.5, **overrides})


# -- a raw, scriptable HTTP server ---------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    body: Any


Answer = Callable[[Request, int], bytes]


def http(status: int, body: Any = None, headers: dict[str, str] | None = None) -> bytes:
    """A well-formed response (``body`` as JSON unless bytes)."""
    payload = body if isinstance(body, bytes) else (b"" if body is None else orjson.dumps(body))
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


@dataclass
class Raw:
    """Answers request number n (0-based, per method and path prefix) with ``answer``."""

    answer: Answer
    seen: list[Request] = field(default_factory=list)
    url: str = ""

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for r in self.seen if r.method == method and r.path.startswith(prefix))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            raw = await reader.readexactly(length) if length else b""
            request = Request(method, path, orjson.loads(raw) if raw else None)
            self.seen.append(request)
            number = self.count(method, path.split("?")[0]) - 1
            reply = self.answer(request, number)
            if reply:
                writer.write(reply)
                await writer.drain()
            else:
                await reader.read()  # no answer at all, until the client gives up
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[Raw]:
    raw = Raw(answer)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield raw
    finally:
        server.close()


def settings(url: str, **overrides: Any) -> ConnectorSettings:
    fields: dict[str, Any] = {
        "name": "hostile",
        "username": USER,
        "password": Secret(PASSWORD),
        "api_endpoint": url,
        "request_timeout_seconds": 10.0,
    }
    fields.update(overrides)
    return ConnectorSettings(**fields)


ACCEPTED = http(202, {"importId": "imp-1", "status": "NotFinished"})
BOOK_BODY = http(200, {"id": BOOK, "name": "Hostile", "visibility": "Private", "contacts": 1})


def finished(created: list[Any], failures: list[Any] | None = None) -> bytes:
    return http(
        200,
        {
            "importId": "imp-1",
            "status": "Finished",
            "created": created,
            "updated": [],
            "failures": failures or [],
        },
    )


def made(email_address: str, contact_id: int) -> dict[str, Any]:
    return {"contactId": contact_id, "identifiers": {"email": email_address}}


def importing(put: Callable[[int], bytes], result: bytes | None = None) -> Answer:
    """Answers an import's PUT with ``put(n)``, its polls with ``result`` (a, b imported)."""

    def answer(request: Request, number: int) -> bytes:
        if request.method == "PUT":
            return put(number)
        if request.path.startswith("/contacts/v3/import/"):
            return result or finished([made("a@example.com", 1), made("b@example.com", 2)])
        if request.path.startswith("/v2/address-books/"):
            return BOOK_BODY
        return http(404, {"errorCode": "x:unexpected", "description": request.path})

    return answer


# -- 1. a contact both imported and failed: its list membership failed -----------------------


async def test_a_contact_imported_and_failed_is_rejected_not_synced() -> None:
    failure = {
        "matchIdentifier": "email",
        "identifiers": {"email": "a@example.com"},
        "failures": [{"failureCode": "InvalidAddressBookIds", "description": "list 801"}],
    }
    result = finished([made("a@example.com", 1), made("b@example.com", 2)], [failure])
    async with serving(importing(lambda n: ACCEPTED, result)) as raw:
        clock = FakeClock()
        client = DotDigitalClient(client_config(settings(raw.url)), clock=clock, retry=policy())
        async with client:
            outcome = await client.import_contacts(BOOK, ["a@example.com", "b@example.com"])
    assert outcome.imported == {"b@example.com": 2}
    rejection = outcome.rejected["a@example.com"]
    assert rejection.failure_code == "InvalidAddressBookIds"
    assert rejection.description == "list 801"
    # The book exists (asked once): the failure stands as this contact's rejection.
    assert raw.count("GET", "/v2/address-books/") == 1


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[Sandbox, FakeClock]]:
    clock = FakeClock()
    account = SandboxAccount(
        USER,
        PASSWORD,
        region="r1",
        import_delay_seconds=0.4,
        deletion_delay_seconds=0.3,
        list_failures_keep_contact=True,
        address_books=(SandboxAddressBook(BOOK, "Hostile"),),
    )
    async with run_sandbox(SandboxSettings(accounts=[account], clock=clock)) as sb:
        yield sb, clock


def sandbox_settings(sb: Sandbox) -> ConnectorSettings:
    return ConnectorSettings(
        name="hostile",
        username=USER,
        password=Secret(PASSWORD),
        discovery_endpoint=sb.discovery_url,
        request_timeout_seconds=10.0,
    )


async def test_an_import_whose_list_failed_for_a_missing_book_is_not_synced(
    sandbox: tuple[Sandbox, FakeClock],
) -> None:
    sb, clock = sandbox
    async with await DotDigitalClient.connect(
        client_config(sandbox_settings(sb)), clock=clock, retry=policy()
    ) as client:
        with pytest.raises(AddressBookNotFoundError):
            await client.import_contacts(999999, ["a@example.com"])
    # The sandbox imported the contact and failed its list: both sections name it.
    poll = [e for e in sb.journal if e.path.startswith("/contacts/v3/import/")][-1]
    assert [c["identifiers"]["email"] for c in poll.response["created"]] == ["a@example.com"]
    assert poll.response["failures"][0]["failures"][0]["failureCode"] == "invalidAddressBookIds"


# -- 3. Retry-After: bounded, and failing in time ----------------------------------------------


FAR = [
    "inf",
    "1e300",
    str(1_700_000_000 + 10 * 365 * 86400),  # an epoch ten years on
    "Fri, 31 Dec 9999 23:59:59 GMT",
]


@pytest.mark.parametrize("retry_after", FAR)
async def test_a_huge_retry_after_fails_the_call_in_time_and_blocks_for_at_most_the_cap(
    retry_after: str,
) -> None:
    throttled = http(
        429,
        {"errorCode": "contacts:rateLimited", "description": "slow down"},
        {"Retry-After": retry_after},
    )
    async with serving(importing(lambda n: throttled)) as raw:
        clock = FakeClock()
        started = clock.monotonic()
        client = DotDigitalClient(client_config(settings(raw.url)), clock=clock, retry=policy())
        async with client:
            with pytest.raises(RetriesExhausted) as first:
                await client.import_contacts(BOOK, ["a@example.com"])
            assert isinstance(first.value.last_error, ThrottledError)
            blocked = client.rate_limit_status()["add"].blocked_for
            assert 0 < blocked <= MAX_RETRY_AFTER_SECONDS
            # A later call on the blocked budget gives up at once rather than queue for it.
            with pytest.raises(RetriesExhausted) as second:
                await client.import_contacts(BOOK, ["b@example.com"])
            assert "past this call's deadline" in second.value.message
    assert clock.monotonic() - started < BUDGET
    assert raw.count("PUT", "/contacts/v3/import") == 1


async def test_an_http_date_retry_after_is_waited_for_relative_to_the_clock() -> None:
    clock = FakeClock()
    when = email.utils.formatdate(clock.time() + 12, usegmt=True)
    throttled = http(429, {"errorCode": "contacts:rateLimited"}, {"Retry-After": when})
    async with serving(importing(lambda n: throttled if n == 0 else ACCEPTED)) as raw:
        started = clock.monotonic()
        async with DotDigitalClient(
            client_config(settings(raw.url)), clock=clock, retry=policy()
        ) as client:
            outcome = await client.import_contacts(BOOK, ["a@example.com"])
    assert set(outcome.imported) == {"a@example.com"}
    assert 12 <= clock.monotonic() - started < BUDGET


# -- 4. malformed answers: retried, never escaping --------------------------------------------


MALFORMED = {
    "bad header": b"HTTP/1.1 202 Accepted\r\nBad Header\r\nContent-Length: 2\r\n\r\n{}",
    "bad length": b"HTTP/1.1 202 Accepted\r\nContent-Length: abc\r\n\r\n{}",
    "bad status line": b"garbage\r\n\r\n",
    "not json": http(202, b"<html>accepted</html>"),
    "no import id": http(202, {"status": "NotFinished"}),
    "a list": http(202, [1, 2]),
    "inf limit": http(
        202,
        {"importId": "imp-1"},
        {"X-RateLimit-Limit": "inf", "X-RateLimit-Remaining": "1e400", "X-RateLimit-Reset": "inf"},
    ),
}


@pytest.mark.parametrize("reply", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_answer_to_an_import_is_retried(reply: bytes) -> None:
    async with serving(importing(lambda n: reply if n == 0 else ACCEPTED)) as raw:
        clock = FakeClock()
        async with DotDigitalClient(
            client_config(settings(raw.url)), clock=clock, retry=policy()
        ) as client:
            outcome = await client.import_contacts(BOOK, ["a@example.com", "b@example.com"])
    assert outcome.imported == {"a@example.com": 1, "b@example.com": 2}
    assert raw.count("PUT", "/contacts/v3/import") <= 2


# -- 4. a job perhaps accepted without an answer fences the book -----------------------------


def removable(request: Request, number: int) -> bytes:
    """A book with a@example.com (contact 1) in it, for a removal."""
    if request.path.startswith("/contacts/v3/email/"):
        return http(200, {"contactId": 1, "lists": [{"id": BOOK}]})
    if request.method == "POST" and request.path.endswith("/contacts/delete"):
        return http(202, {"id": "del-1", "status": "Started"})
    if request.path.startswith("/v2/contacts/deletion/"):
        return http(200, {"id": "del-1", "status": "Completed"})
    if request.path.startswith("/v2/address-books/"):
        return BOOK_BODY
    if request.path.startswith("/contacts/v3?"):
        return http(200, {"_items": [{"contactId": 1, "identifiers": {"email": "a@example.com"}}]})
    return http(404, {"errorCode": "x:unexpected", "description": request.path})


async def test_an_import_timed_out_on_its_last_attempt_holds_the_books_next_removal() -> None:
    def answer(request: Request, number: int) -> bytes:
        if request.method == "PUT":
            return b""  # DotDigital may have taken it on; no answer comes back
        return removable(request, number)

    async with serving(answer) as raw:
        clock = FakeClock()
        client = DotDigitalClient(
            client_config(settings(raw.url, request_timeout_seconds=0.2)),
            clock=clock,
            retry=policy(),
        )
        async with client:
            with pytest.raises(RetriesExhausted) as caught:
                await client.import_contacts(BOOK, ["a@example.com"])
            assert "no response within" in caught.value.message
            given_up = clock.monotonic()
            removal = await client.remove_contacts(BOOK, ["a@example.com"])
            # Not before the import it may overtake had a whole budget to end.
            assert clock.monotonic() - given_up >= BUDGET - 1
            assert removal.removed == {"a@example.com"}
            # The fence lapsed: the next removal goes at once.
            again = clock.monotonic()
            await client.remove_contacts(BOOK, ["a@example.com"])
            assert clock.monotonic() - again < 5


async def test_a_dropped_import_holds_a_removal_but_not_another_import(
    sandbox: tuple[Sandbox, FakeClock],
) -> None:
    sb, clock = sandbox
    async with await DotDigitalClient.connect(
        client_config(sandbox_settings(sb)), clock=clock, retry=policy()
    ) as client:
        await client.import_contacts(BOOK, ["a@example.com"])
        sb.faults.update({"drop_rate": 1.0})
        with pytest.raises(RetriesExhausted):
            await client.import_contacts(BOOK, ["b@example.com"])
        sb.faults.update({"drop_rate": 0.0})
        given_up = clock.monotonic()
        # Adds commute: another import need not wait.
        await client.import_contacts(BOOK, ["c@example.com"])
        assert clock.monotonic() - given_up < 5
        await client.remove_contacts(BOOK, ["a@example.com", "b@example.com"])
        assert clock.monotonic() - given_up >= BUDGET - 1
    assert sb.members(USER, BOOK) == {"c@example.com"}


async def test_a_removal_answered_malformed_on_every_attempt_holds_the_next_import() -> None:
    def answer(request: Request, number: int) -> bytes:
        if request.method == "POST":
            # A broken proxy echoing the credentials in a header line aiohttp cannot parse.
            return f"HTTP/1.1 202 Accepted\r\nBasic {CREDENTIALS} x\r\n\r\n".encode()
        if request.method == "PUT":
            return ACCEPTED
        if request.path.startswith("/contacts/v3/import/"):
            return finished([made("a@example.com", 1)])
        return removable(request, number)

    async with serving(answer) as raw:
        clock = FakeClock()
        async with DotDigitalClient(
            client_config(settings(raw.url)), clock=clock, retry=policy()
        ) as client:
            with pytest.raises(RetriesExhausted) as caught:
                await client.remove_contacts(BOOK, ["a@example.com"])
            assert "malformed response" in caught.value.message
            assert CREDENTIALS not in repr(caught.value)
            assert PASSWORD not in repr(caught.value)
            given_up = clock.monotonic()
            await client.import_contacts(BOOK, ["a@example.com"])
            assert clock.monotonic() - given_up >= BUDGET - 1


# -- 9. bodies of the wrong shape are retried like any transient failure ---------------------


@pytest.mark.parametrize(
    "wrong",
    [
        "/contacts/v3/email/",  # a look-up without a contactId
        "/v2/address-books/801/contacts/delete",  # a removal accepted without an id
        "/v2/contacts/deletion/",  # a poll answered with a list
    ],
)
async def test_a_removal_retries_a_body_of_the_wrong_shape(wrong: str) -> None:
    def answer(request: Request, number: int) -> bytes:
        if request.path.startswith(wrong) and number == 0:
            return http(200, [] if "deletion/" in wrong else {"status": "odd"})
        return removable(request, number)

    async with serving(answer) as raw:
        clock = FakeClock()
        async with DotDigitalClient(
            client_config(settings(raw.url)), clock=clock, retry=policy()
        ) as client:
            removal = await client.remove_contacts(BOOK, ["a@example.com"])
    assert removal.removed == {"a@example.com"}
    assert sum(1 for r in raw.seen if r.path.startswith(wrong)) == 2


@pytest.mark.parametrize("size", ['"many"', "[1]", '{"n": 1}'])
async def test_an_address_book_read_that_does_not_parse_is_retried(size: str) -> None:
    odd = f'{{"id": {BOOK}, "name": "Hostile", "contacts": {size}}}'.encode()

    def answer(request: Request, number: int) -> bytes:
        return http(200, odd) if number == 0 else BOOK_BODY

    async with serving(answer) as raw:
        clock = FakeClock()
        async with DotDigitalClient(
            client_config(settings(raw.url)), clock=clock, retry=policy()
        ) as client:
            book = await client.get_address_book(BOOK)
    assert book.contacts == 1
    assert len(raw.seen) == 2


async def test_an_import_cancelled_in_the_air_holds_the_books_next_removal() -> None:
    arrived = asyncio.Event()

    def answer(request: Request, number: int) -> bytes:
        if request.method == "PUT":
            arrived.set()
            return b""  # DotDigital has it; the caller will not wait for the answer
        return removable(request, number)

    async with serving(answer) as raw:
        clock = FakeClock()
        async with DotDigitalClient(
            client_config(settings(raw.url)), clock=clock, retry=policy()
        ) as client:
            task = asyncio.create_task(client.import_contacts(BOOK, ["a@example.com"]))
            await arrived.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            given_up = clock.monotonic()
            await client.remove_contacts(BOOK, ["a@example.com"])
            assert clock.monotonic() - given_up >= BUDGET - 1
