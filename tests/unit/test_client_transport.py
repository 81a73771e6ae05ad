"""The DotDigital client through a MockTransport on a FakeClock: retries, throttling, job polling
and fencing, and what never leaks; no socket, no real sleep."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stream.clock import FakeClock
from stream.dotdigital import (
    DotDigitalClient,
    PermanentError,
    PollSchedule,
    RetriesExhausted,
    RetryPolicy,
    ThrottledError,
    TransientError,
)
from stream.dotdigital.config import ClientConfig
from stream.dotdigital.transport import (
    MockTransport,
    Request,
    Response,
    TransportError,
    json_response,
)

PASSWORD = "s3cret-Pa/ss\u00e9"
USER = "apiuser@example.com"
ENDPOINT = "https://r1-api.example"
BOOK = 7
BOOK_BODY = {"id": BOOK, "name": "Book", "visibility": "Private", "contacts": 1}
BUDGET = 30.0

Handler = Callable[[Request], Response]


def config() -> ClientConfig:
    return ClientConfig(
        name="unit", username=USER, password=lambda: PASSWORD, api_endpoint=ENDPOINT
    )


def client(transport: MockTransport, clock: FakeClock, **overrides: Any) -> DotDigitalClient:
    policy = RetryPolicy(total_seconds=BUDGET, random=lambda: 0.5)
    return DotDigitalClient(config(), transport=transport, clock=clock, retry=policy, **overrides)


def path(request: Request) -> str:
    return request.url.removeprefix(ENDPOINT)


def sent(transport: MockTransport) -> list[str]:
    return [f"{request.method} {path(request)}" for request in transport.requests]


def script(*answers: Response | TransportError) -> MockTransport:
    """Answers the n-th request with the n-th answer (raising it when it is an error)."""
    remaining: Iterator[Response | TransportError] = iter(answers)

    def handler(request: Request) -> Response:
        answer = next(remaining)
        if isinstance(answer, TransportError):
            raise answer
        return answer

    return MockTransport(handler)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- retries ---------------------------------------------------------------------------------


async def test_a_5xx_and_a_dropped_connection_are_retried_after_a_backoff(
    clock: FakeClock,
) -> None:
    transport = script(
        json_response(503, {"message": "busy"}),
        TransportError("dropped", "the server closed the connection without answering"),
        json_response(200, BOOK_BODY),
    )
    started = clock.monotonic()
    async with client(transport, clock) as dd:
        assert (await dd.get_address_book(BOOK)).id == BOOK
    assert sent(transport) == [f"GET /v2/address-books/{BOOK}"] * 3
    # Full jitter at 0.5: half of base_delay * 2**attempt, for attempts 0 and 1.
    assert clock.monotonic() - started == pytest.approx(0.25 + 0.5)


async def test_a_failing_call_is_retried_for_its_whole_budget_then_given_up(
    clock: FakeClock,
) -> None:
    started = clock.monotonic()
    async with client(MockTransport(lambda request: json_response(500)), clock) as dd:
        with pytest.raises(RetriesExhausted) as caught:
            await dd.list_address_books()
    assert isinstance(caught.value.last_error, TransientError)
    assert caught.value.attempts > 5
    assert clock.monotonic() - started == pytest.approx(BUDGET)


async def test_a_permanent_error_is_not_retried(clock: FakeClock) -> None:
    transport = script(json_response(400, {"errorCode": "contacts:bad", "description": "no"}))
    async with client(transport, clock) as dd:
        with pytest.raises(PermanentError, match="contacts:bad"):
            await dd.get_address_book(BOOK)
    assert len(transport.requests) == 1


async def test_a_body_of_the_wrong_shape_is_retried_like_a_5xx(clock: FakeClock) -> None:
    transport = script(json_response(200, ["not", "a", "book"]), json_response(200, BOOK_BODY))
    async with client(transport, clock) as dd:
        assert (await dd.get_address_book(BOOK)).name == "Book"
    assert len(transport.requests) == 2


# -- throttling ------------------------------------------------------------------------------


async def test_a_429_waits_for_its_retry_after_then_succeeds(clock: FakeClock) -> None:
    transport = script(
        json_response(429, {"message": "slow down"}, {"retry-after": "20"}),
        json_response(200, BOOK_BODY),
    )
    started = clock.monotonic()
    async with client(transport, clock) as dd:
        await dd.get_address_book(BOOK)
    assert len(transport.requests) == 2
    # The announced reset (its header matched whatever its case), plus 10% jitter at 0.5.
    assert clock.monotonic() - started == pytest.approx(20 * 1.05)


async def test_a_429_past_the_deadline_fails_the_call_at_once(clock: FakeClock) -> None:
    throttled = json_response(429, {"message": "slow down"}, {"Retry-After": "600"})
    transport = MockTransport(lambda request: throttled)
    started = clock.monotonic()
    async with client(transport, clock) as dd:
        with pytest.raises(RetriesExhausted) as caught:
            await dd.get_address_book(BOOK)
        assert isinstance(caught.value.last_error, ThrottledError)
        # The limiter remembers the block: the next call is not even sent.
        with pytest.raises(RetriesExhausted):
            await dd.get_address_book(BOOK)
    assert clock.monotonic() == started  # never waited for: the server said no until then
    assert len(transport.requests) == 1


# -- job polling and fencing -----------------------------------------------------------------


def importing(status: Callable[[], str]) -> Handler:
    """Accepts an import of a@example.com, whose polls report ``status()``; a removal finds the
    contact a member under id 11 and completes at once."""

    def handler(request: Request) -> Response:
        if request.method == "PUT" and path(request) == "/contacts/v3/import":
            return json_response(202, {"importId": "imp-1", "status": "NotFinished"})
        if path(request) == "/contacts/v3/import/imp-1":
            now = status()
            created = [{"contactId": 11, "identifiers": {"email": "a@example.com"}}]
            body = {"importId": "imp-1", "status": now, "created": created}
            return json_response(200, body if now == "Finished" else {"status": now})
        if path(request).startswith("/contacts/v3/email/"):
            return json_response(200, {"contactId": 11, "lists": [{"id": BOOK}]})
        if path(request) == f"/v2/address-books/{BOOK}/contacts/delete":
            return json_response(200, {"id": "del-1", "status": "Completed"})
        raise AssertionError(f"unexpected {request.method} {path(request)}")

    return handler


async def test_an_import_is_polled_with_growing_waits_until_it_finishes(
    clock: FakeClock,
) -> None:
    statuses = iter(["NotFinished", "Started", "Finished"])
    transport = MockTransport(importing(lambda: next(statuses)))
    started = clock.monotonic()
    async with client(transport, clock, poll=PollSchedule(1.0, 2.0, 3.0)) as dd:
        outcome = await dd.import_contacts(BOOK, ["A@example.com"])
        assert dd.known_contact_id("a@example.com") == 11
    assert outcome.imported == {"A@example.com": 11}
    assert sent(transport) == ["PUT /contacts/v3/import"] + ["GET /contacts/v3/import/imp-1"] * 3
    assert transport.requests[0].json()["contacts"][0]["identifiers"] == {"email": "A@example.com"}
    assert clock.monotonic() - started == pytest.approx(1.0 + 2.0 + 3.0)


async def test_an_import_still_running_at_the_deadline_holds_the_books_next_removal(
    clock: FakeClock,
) -> None:
    status = "NotFinished"
    transport = MockTransport(importing(lambda: status))
    async with client(transport, clock) as dd:
        started = clock.monotonic()
        with pytest.raises(RetriesExhausted, match="still NotFinished at the deadline"):
            await dd.import_contacts(BOOK, ["a@example.com"])
        assert clock.monotonic() - started == pytest.approx(BUDGET)
        given_up = len(transport.requests)
        status = "Finished"
        removal = await dd.remove_contacts(BOOK, ["a@example.com"])
    # The removal first asks after the import it must not overtake (at once), then goes.
    assert sent(transport)[given_up:] == [
        "GET /contacts/v3/import/imp-1",
        "GET /contacts/v3/email/a@example.com",
        f"POST /v2/address-books/{BOOK}/contacts/delete",
    ]
    assert removal.removed == {"a@example.com"}
    assert removal.deletion_ids == ("del-1",)


@pytest.mark.parametrize(("failure", "held"), [("dropped", BUDGET), ("unreachable", 0.0)])
async def test_an_import_without_an_answer_holds_the_next_removal_unless_never_sent(
    clock: FakeClock, failure: Any, held: float
) -> None:
    # Sent, then the connection dropped: DotDigital may have accepted it, under an id we never
    # learnt, so it cannot be polled and the removal waits out a budget. Never connected: it
    # cannot have been accepted.
    finished = importing(lambda: "Finished")

    def handler(request: Request) -> Response:
        if request.method == "PUT":
            raise TransportError(failure, "no answer")
        return finished(request)

    async with client(MockTransport(handler), clock) as dd:
        with pytest.raises(RetriesExhausted):
            await dd.import_contacts(BOOK, ["a@example.com"])
        failed_at = clock.monotonic()
        await dd.remove_contacts(BOOK, ["a@example.com"])
    assert clock.monotonic() - failed_at == pytest.approx(held)


async def test_a_removal_resolves_each_email_to_a_member_an_absentee_or_a_rejection(
    clock: FakeClock,
) -> None:
    answers = {
        "member@example.com": json_response(200, {"contactId": 1, "lists": [{"id": BOOK}]}),
        "elsewhere@example.com": json_response(200, {"contactId": 2, "lists": [{"id": 99}]}),
        "unknown@example.com": json_response(404, {"errorCode": "contacts:contactNotFound"}),
        "refused@example.com": json_response(400, {"errorCode": "contacts:invalidEmail"}),
    }

    def handler(request: Request) -> Response:
        if path(request).startswith("/contacts/v3/email/"):
            return answers[path(request).removeprefix("/contacts/v3/email/").lower()]
        if path(request) == f"/v2/address-books/{BOOK}":
            # Too big to page for four emails: they are looked up one by one.
            return json_response(200, {**BOOK_BODY, "contacts": 1_000_000})
        assert path(request) == f"/v2/address-books/{BOOK}/contacts/delete"
        assert request.json() == [1]  # only the member is removed
        return json_response(200, {"id": "del-1", "status": "Completed"})

    transport = MockTransport(handler)
    async with client(transport, clock) as dd:
        outcome = await dd.remove_contacts(BOOK, ["Member@example.com", *list(answers)[1:]])
        assert dd.known_contact_id("elsewhere@example.com") == 2
    assert outcome.removed == {"Member@example.com", "elsewhere@example.com", "unknown@example.com"}
    assert outcome.not_found == {"elsewhere@example.com", "unknown@example.com"}
    assert outcome.rejected["refused@example.com"].failure_code == "contacts:invalidEmail"
    assert outcome.deletion_ids == ("del-1",)


# -- what never leaks ------------------------------------------------------------------------


async def test_the_credentials_go_in_the_header_and_nowhere_else(clock: FakeClock) -> None:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    malformed = TransportError("malformed", f"Invalid header value: Basic {token} {PASSWORD}")
    echoed = json_response(400, {"message": f"bad request from {PASSWORD} Basic {token}"})
    transport = script(malformed, echoed, *[malformed] * 100)
    async with client(transport, clock) as dd:
        with pytest.raises(PermanentError) as refused:
            await dd.get_address_book(BOOK)
        with pytest.raises(RetriesExhausted, match="malformed response") as exhausted:
            await dd.get_address_book(BOOK)
        shown = [repr(dd), repr(config()), repr(transport.requests[0])]
    assert transport.requests[0].headers["Authorization"] == f"Basic {token}"
    for error in (refused.value, exhausted.value):
        shown += [str(error), repr(error)]
    for text in shown:
        assert PASSWORD not in text
        assert token not in text
