"""How the DotDigital client puts a request on the wire: the seam between the client and HTTP.

Contract of a :class:`Transport`:

* ``send`` makes one attempt (retrying, pacing and classifying answers are the client's) and
  returns a :class:`Response` for every HTTP answer, whatever its status.
* It raises :class:`TransportError` when there is no usable answer: no connection could be made,
  no complete answer came within the request's ``timeout`` (seconds for the whole exchange), the
  connection was lost, or the answer is not valid HTTP. The error says which, and so whether
  the server may have seen the request. Cancellation and any other exception (a bug) propagate.
* It logs nothing. A :class:`TransportError`'s ``detail`` may quote the server's bytes: the
  client scrubs it before it reaches a message.

:class:`AiohttpTransport` is the one the client uses unless given another; :class:`MockTransport`
answers from a function, for tests (as ``httpx.MockTransport`` does). Neither :class:`Request`
nor :class:`Response` shows headers or body in its ``repr`` (the Authorization header is there).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = [
    "AiohttpTransport",
    "MockTransport",
    "Request",
    "Response",
    "Transport",
    "TransportError",
    "TransportFailure",
    "json_response",
]

# unreachable: no connection was made, so the server surely never saw the request. timeout: no
# complete answer in time. dropped: the connection was lost before a complete answer.
# malformed: the answer is not valid HTTP (``detail`` quotes it).
TransportFailure = Literal["unreachable", "timeout", "dropped", "malformed"]


@dataclass(frozen=True)
class Request:
    """One HTTP request: ``url`` is absolute and already percent-encoded; ``timeout`` bounds
    the whole exchange, in seconds; ``body`` is JSON."""

    method: str
    url: str
    timeout: float
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes | None = field(default=None, repr=False)

    def json(self) -> Any:
        """The decoded body (None when there is none)."""
        return None if self.body is None else orjson.loads(self.body)


@dataclass(frozen=True)
class Response:
    """One HTTP answer. ``headers`` are matched case-insensitively, however they were given."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.headers, CIMultiDictProxy | CIMultiDict):
            object.__setattr__(self, "headers", CIMultiDictProxy(CIMultiDict(self.headers)))


def json_response(
    status: int, data: Any = None, headers: Mapping[str, str] | None = None
) -> Response:
    """A response whose body is ``data`` as JSON (empty when None)."""
    body = b"" if data is None else orjson.dumps(data)
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, body)


class TransportError(Exception):
    """A request got no usable answer; ``kind`` says how (see :data:`TransportFailure`)."""

    def __init__(self, kind: TransportFailure, detail: str) -> None:
        super().__init__(detail)
        self.kind: TransportFailure = kind
        self.detail = detail

    @property
    def reached(self) -> bool:
        """Whether the server may have seen the request (it may have acted on it)."""
        return self.kind != "unreachable"


class Transport(Protocol):
    """Sends one HTTP request; see the module's contract."""

    async def send(self, request: Request) -> Response: ...


class AiohttpTransport:
    """A :class:`Transport` over one aiohttp session: its own unless one is given (then the
    caller closes that one; :meth:`close` closes only a session this transport created)."""

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._own_session = session is None
        self._session = session if session is not None else _new_session()

    async def send(self, request: Request) -> Response:
        try:
            async with self._session.request(
                request.method,
                URL(request.url, encoded=True),
                data=request.body,
                headers=dict(request.headers),
                timeout=aiohttp.ClientTimeout(total=request.timeout),
            ) as response:
                return Response(response.status, response.headers, await response.read())
        except TimeoutError:
            raise TransportError("timeout", f"no response within {request.timeout:g}s") from None
        except aiohttp.ClientResponseError as exc:
            # A bad status line, bad headers or a bad length: aiohttp quotes the offending bytes.
            raise TransportError("malformed", str(exc.message)) from None
        except aiohttp.ClientConnectorError as exc:
            raise TransportError("unreachable", _describe(exc)) from None
        except aiohttp.ClientError as exc:
            # A dropped connection or a truncated body.
            raise TransportError("dropped", _describe(exc)) from None

    async def close(self) -> None:
        """Close the session if this transport created it. Idempotent."""
        if self._own_session and not self._session.closed:
            await self._session.close()


class MockTransport:
    """A :class:`Transport` that answers each request with ``handler(request)`` (a response, or
    an awaitable of one; raise :class:`TransportError` to fail it), recording every request
    in :attr:`requests`."""

    def __init__(self, handler: Callable[[Request], Response | Awaitable[Response]]) -> None:
        self.handler = handler
        self.requests: list[Request] = []

    async def send(self, request: Request) -> Response:
        self.requests.append(request)
        answer = self.handler(request)
        return answer if isinstance(answer, Response) else await answer


def _new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        headers={"User-Agent": "ddsync"},
        # Look-ups run concurrently; keep connections reused rather than opened per call.
        connector=aiohttp.TCPConnector(limit=64),
    )


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc})"
    text = str(exc) or type(exc).__name__
    return f"connection failed: {text}"
