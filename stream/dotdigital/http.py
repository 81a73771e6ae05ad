"""One HTTP step of the DotDigital client: a request paced, sent, classified and retried.

Contract:

* Every step runs under a :class:`~stream.dotdigital.retry.RetryPolicy`. A call's steps share
  an optional ``deadline`` (a ``clock.monotonic()`` value), after which
  :class:`~stream.dotdigital.errors.RetriesExhausted` is raised. Without one, each step retries
  for up to the policy's ``total_seconds`` from its own first attempt.
* Waiting for the rate limiter is not failing: time a request spends queued for it moves its
  step's deadline out by as much, unless a 429 blocks the limiter past that deadline: then the
  step gives up at once.
* A successful answer whose body is not what the step needs (no job id, no contact id, not
  JSON), a malformed HTTP answer, a timeout or a dropped connection is transient: retried like a
  5xx. Rate-limit headers only tune pacing; no value of theirs makes a call fail.
* A step that starts work in DotDigital (any method but GET) counts, in its :class:`Tally`, the
  attempts DotDigital may have acted on without our knowing its answer, so that the caller can
  fence the job it may have started (see :mod:`~stream.dotdigital.jobs`).
* The credentials go in the Authorization header and nowhere else: every text quoted from the
  server (an error body, a malformed answer) is scrubbed of them before it reaches a message,
  and no message carries a query or an email address.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from stream.clock import Clock
from stream.dotdigital.budgets import Budgets
from stream.dotdigital.config import ClientConfig
from stream.dotdigital.errors import (
    APIUSAGE_EXCEEDED,
    ThrottledError,
    TransientError,
    error_from_response,
)
from stream.dotdigital.guard import current_guard
from stream.dotdigital.observe import ClientObserver, operation_of, status_class
from stream.dotdigital.ratelimit import parse_reset, parse_retry_after
from stream.dotdigital.retry import RetryPolicy
from stream.dotdigital.transport import Request, Transport, TransportError

__all__ = [
    "EMAIL_LOOKUP_PREFIX",
    "BookCall",
    "Http",
    "Reply",
    "Tally",
    "is_id",
    "is_mapping",
    "path_for_messages",
]

log = logging.getLogger(__name__)

# A 429 for the concurrent-job caps says nothing about when a slot frees; poll-like wait.
CONCURRENCY_RETRY_SECONDS = 2.0
EMAIL_LOOKUP_PREFIX = "/contacts/v3/email/"


@dataclass(frozen=True)
class Reply:
    """A successful answer: its decoded JSON body (None when empty) and its headers."""

    data: Any
    headers: Mapping[str, str]


@dataclass(frozen=True)
class BookCall:
    """What every step of one call on one address book shares: the book, the retry policy
    and the call's deadline (None: each step has a budget of its own)."""

    book_id: int
    policy: RetryPolicy
    deadline: float | None


class Tally:
    """One call's attempts, the seconds they spent waiting for their rate limiter, and the
    attempts DotDigital may have acted on without our knowing its answer (``unanswered``: a
    request that was sent and timed out, lost its connection, or got a malformed answer)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.queued_seconds = 0.0
        self.unanswered = 0

    def queued(self) -> float:
        return self.queued_seconds


class Http:
    """Sends the client's requests through ``transport`` to ``endpoint`` (set once known),
    paced by ``budgets``, told to ``observer``, retried under ``retry`` unless a step names
    another policy."""

    def __init__(
        self,
        transport: Transport,
        config: ClientConfig,
        *,
        endpoint: str | None,
        budgets: Budgets,
        clock: Clock,
        retry: RetryPolicy,
        observer: ClientObserver,
    ) -> None:
        self.endpoint = endpoint
        self.retry = retry
        self._transport = transport
        self._budgets = budgets
        self._clock = clock
        self._observer = observer
        self._timeout = config.request_timeout_seconds
        # The Authorization value is built once and lives only here: never logged nor shown.
        password = config.password()
        token = f"{config.username}:{password}".encode()
        self._authorization = "Basic " + base64.b64encode(token).decode("ascii")
        self._secrets = _spellings(password, self._authorization[6:])

    def __repr__(self) -> str:
        return f"Http(endpoint={self.endpoint!r})"

    async def call(
        self,
        method: str,
        path: str,
        *,
        base: str | None = None,
        body: Any = None,
        policy: RetryPolicy | None = None,
        deadline: float | None = None,
        tally: Tally | None = None,
        expect: Callable[[Any], bool] | None = None,
    ) -> Reply:
        """One HTTP step under the retry policy (its ``.data`` is the decoded JSON body).
        ``base`` overrides the endpoint. Time queued for the rate limiter is waiting, not
        failing: it does not use the budget, unless a 429 blocks the limiter past the step's
        deadline (then the step gives up at once: see :meth:`_send`). ``expect`` checks a
        successful answer's body: one it refuses is a :class:`TransientError` retried like any
        other. ``tally`` lets the caller see how many attempts were made."""
        tally = tally if tally is not None else Tally()
        policy = policy or self.retry
        ends = deadline if deadline is not None else policy.deadline(self._clock)

        async def attempt() -> Reply:
            reply = await self._send(method, path, base=base, body=body, tally=tally, ends=ends)
            if expect is not None and not expect(reply.data):
                if method != "GET":
                    tally.unanswered += 1  # a 2xx: DotDigital took it on, we cannot tell what
                raise TransientError(
                    f"{method} {path_for_messages(path)} answered with an unexpected body"
                )
            return reply

        return await policy.run(attempt, self._clock, deadline=deadline, not_counted=tally.queued)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        base: str | None = None,
        body: Any = None,
        tally: Tally,
        ends: float | None = None,
    ) -> Reply:
        """One HTTP request: pace it, send it, feed the limiter, return the JSON or raise a
        classified :class:`DotDigitalError`. ``path`` is already URL-encoded; the attempt and
        its wait for the limiter are added to ``tally``. When a 429 blocks the limiter past
        ``ends`` (the step's deadline, moved out by its queued time), nothing is sent: a
        :class:`ThrottledError` for the block says so, and the retry policy gives up on it."""
        what = f"{method} {path_for_messages(path)}"
        url = f"{base or self._endpoint()}{path}"
        operation = operation_of(method, path)
        pacer = self._budgets.for_operation(operation)
        headers = {"Accept": "application/json", "Authorization": self._authorization}
        data: bytes | None = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        queued_at = self._clock.monotonic()
        blocked = pacer.blocked_for()
        if ends is not None and blocked > 0 and queued_at + blocked > ends + tally.queued_seconds:
            # Waiting for the limiter is not failing, but waiting past the deadline would hang
            # the step silently: fail it in time instead.
            raise ThrottledError(
                f"{what}: not sent; a 429 blocks the {self._budgets.name_of(operation)} budget "
                f"for {blocked:.0f}s more, past this call's deadline",
                status=429,
                retry_after=blocked,
            )
        sent_at = await pacer.acquire()
        guard = current_guard()
        if guard is not None:
            guard.sending()  # raises Abandoned: nothing new for an operation given up
        tally.attempts += 1
        tally.queued_seconds += sent_at - queued_at
        self._observer.queued(self._budgets.name_of(operation), sent_at - queued_at)
        if tally.attempts > 1:
            self._observer.retried(operation)
        request = Request(method, url, self._timeout, headers, data)
        try:
            response = await self._transport.send(request)
        except TransportError as exc:
            # A timeout, a malformed answer, a dropped connection or a truncated body: worth
            # trying again. Only a connection that was never made surely left DotDigital
            # untouched.
            self._observer.request(operation, "network")
            if exc.reached:
                tally.unanswered += method != "GET"
            raise TransientError(f"{what}: {self._describe(exc)}") from None
        except asyncio.CancelledError:
            tally.unanswered += method != "GET"  # cancelled in the air: it may have arrived
            raise
        finally:
            if guard is not None:
                guard.answered()
        status, response_headers, payload = response.status, response.headers, response.body
        self._observer.request(operation, status_class(status))
        log.debug("%s -> %d", what, status)
        try:
            pacer = self._budgets.learn(operation, response_headers)
            pacer.observe(response_headers, sent_at=sent_at)
        except (ValueError, ArithmeticError) as exc:
            # The headers only tune pacing: a value nobody foresaw must not fail the request.
            log.warning("%s: rate-limit headers ignored (%s)", what, type(exc).__name__)
        if 200 <= status < 300:
            if not payload.strip():
                return Reply(None, response_headers)
            try:
                return Reply(orjson.loads(payload), response_headers)
            except orjson.JSONDecodeError:
                tally.unanswered += method != "GET"
                raise TransientError(
                    f"{what}: HTTP {status} with a body that is not JSON"
                ) from None
        error = error_from_response(
            status,
            self._scrub(payload),
            what=what,
            retry_after=_retry_after(response_headers, self._clock.time()),
        )
        if isinstance(error, ThrottledError):
            if error.concurrency_cap:
                self._observer.throttled("concurrency_cap")
                # The rate-limit headers on this 429 describe the call budget, not when an
                # import slot frees up.
                error.retry_after = CONCURRENCY_RETRY_SECONDS
            else:
                apiusage = error.code == APIUSAGE_EXCEEDED
                self._observer.throttled("apiusage_exceeded" if apiusage else "http_429")
                error.retry_after = pacer.throttled(error.retry_after)
        raise error

    def _endpoint(self) -> str:
        if self.endpoint is None:
            raise RuntimeError("the client is not connected: use DotDigitalClient.connect()")
        return self.endpoint

    def _describe(self, exc: TransportError) -> str:
        # The detail may quote the server's bytes: scrubbed like a body (a malformed answer's
        # also trimmed, since it can be a whole response).
        text = self._scrub(exc.detail.encode(errors="replace")).decode(errors="replace")
        if exc.kind == "malformed":
            return f"malformed response: {' '.join(text.split())[:200]}"
        return text

    def _scrub(self, payload: bytes) -> bytes:
        # A server echoing credentials back must not put them into our messages and logs.
        for secret in self._secrets:
            if secret in payload:
                payload = payload.replace(secret, b"***")
        return payload


def path_for_messages(path: str) -> str:
    """A request's path as error messages and logs show it: no query, and no email address
    (personal data has no place in logs, metrics or dead-letter headers)."""
    path = path.split("?", 1)[0]
    if path.startswith(EMAIL_LOOKUP_PREFIX):
        return EMAIL_LOOKUP_PREFIX + "{email}"
    return path


def is_mapping(data: object) -> bool:
    return isinstance(data, Mapping)


def is_id(value: object) -> TypeGuard[int]:
    """Whether ``value`` is a contact id (an int; JSON's true and false are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _spellings(*secrets: str) -> tuple[bytes, ...]:
    """Each secret as a response body may carry it: as UTF-8, and as a JSON string escapes it
    (non-ASCII as \\uXXXX, "/" as "\\/", quotes and backslashes), longest first so that a
    spelling that contains another is scrubbed whole."""
    found: set[bytes] = set()
    for secret in filter(None, secrets):
        escaped = json.dumps(secret)[1:-1]
        for spelling in (
            secret,
            escaped,
            escaped.replace("/", "\\/"),
            json.dumps(secret, ensure_ascii=False)[1:-1],
        ):
            found.add(spelling.encode())
    return tuple(sorted(found, key=len, reverse=True))


def _retry_after(headers: Mapping[str, str], now_epoch: float) -> float | None:
    value = headers.get("Retry-After")
    if value is not None:
        seconds = parse_retry_after(value, now_epoch)
        if seconds is not None:
            return seconds
    reset = headers.get("X-RateLimit-Reset")
    return parse_reset(reset, now_epoch) if reset is not None else None
