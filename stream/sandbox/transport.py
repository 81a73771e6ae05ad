"""The sandbox in process: a DotDigital :class:`~stream.dotdigital.transport.Transport` that hands
each request to the sandbox's applications, with no socket and no server.

Contract:

* :func:`in_process_sandbox` builds a sandbox (the same :class:`~.server.Sandbox` as
  :func:`~.server.run_sandbox` yields: journal, faults, members) and a :class:`SandboxTransport`
  to reach it. Its regions have the URLs ``http://r1.sandbox.invalid`` (r2, r3 alike): a client
  given ``sandbox.discovery_url`` and this transport detects its region and talks to it as it
  would over HTTP. ``.invalid`` never resolves, so a request sent elsewhere by mistake fails.
* Each request runs through the region's whole application (middleware: faults, auth, rate
  limits, region; the handler; the journal) in a task of its own, as aiohttp's server runs it:
  the request-scoped context the middleware sets does not leak into the caller's. A request
  that reached the sandbox is handled to its end even if the caller is cancelled or times out,
  as a server handles a request whose client went away.
* Failures are the :class:`~stream.dotdigital.transport.TransportError` s an HTTP transport
  raises: ``unreachable`` for a URL of no region, ``timeout`` when no answer comes within the
  request's ``timeout`` (real time: the sandbox's latency fault sleeps in real time),
  ``dropped`` when the sandbox drops the connection (its ``drop`` fault).
* :meth:`SandboxTransport.close` waits for the requests still being handled.

For tests that drive a client turn by turn, it also keeps the requests it received
(:attr:`~SandboxTransport.received`), can hold requests in the air (:meth:`~SandboxTransport.hold`:
sent, not yet at the sandbox, until :meth:`~SandboxTransport.release`), and waits for a condition
on the sandbox's state by waking at each request received or answered rather than by polling
(:meth:`~SandboxTransport.until`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from yarl import URL

from stream.dotdigital.transport import Request, Response, TransportError
from stream.sandbox.accounts import REGIONS
from stream.sandbox.app import MAX_BODY_BYTES, build_app
from stream.sandbox.core import SandboxCore
from stream.sandbox.server import Sandbox
from stream.sandbox.settings import SandboxSettings

__all__ = ["SandboxTransport", "in_process_sandbox", "region_url"]


def region_url(region: str) -> str:
    """The base URL an in-process sandbox gives ``region``."""
    return f"http://{region}.sandbox.invalid"


def in_process_sandbox(
    settings: SandboxSettings | None = None,
) -> tuple[Sandbox, SandboxTransport]:
    """A sandbox and the transport that reaches it; nothing is bound (``host``/``port`` of
    ``settings`` are ignored)."""
    core = SandboxCore(settings or SandboxSettings())
    apps: dict[tuple[str, int], web.Application] = {}
    for region in REGIONS:
        core.urls[region] = region_url(region)
        url = URL(core.urls[region])
        app = build_app(core, region)
        # What a runner's setup does to an application before it serves: routes and
        # middleware fixed. The sandbox registers no startup hooks.
        app.freeze()
        apps[(url.host or "", url.port or 80)] = app
    return Sandbox(core), SandboxTransport(apps)


class SandboxTransport:
    """A :class:`~stream.dotdigital.transport.Transport` to in-process sandbox applications,
    keyed by the (host, port) they answer; see the module's contract."""

    def __init__(self, apps: dict[tuple[str, int], web.Application]) -> None:
        self._apps = dict(apps)
        # Strong references: a request the caller stopped waiting for is still being handled.
        self._handling: set[asyncio.Task[tuple[web.StreamResponse, _Connection]]] = set()
        self.received: list[Request] = []
        """Every request sent to a region, oldest first (held ones included)."""
        self._gate: asyncio.Event | None = None
        self._moved = asyncio.Event()

    def hold(self) -> None:
        """Requests sent from now on stay in the air (received, not yet at the sandbox) until
        :meth:`release`."""
        if self._gate is None:
            self._gate = asyncio.Event()

    def release(self) -> None:
        """Let the held requests reach the sandbox, and the next ones go straight through."""
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    async def until(self, check: Callable[[], object], what: str, seconds: float = 30) -> None:
        """Return once ``check()`` is truthy, checking it again each time a request is received
        or answered; ``AssertionError`` naming ``what`` if it is not within ``seconds`` (real
        time: a bound against a hang, not a wait)."""
        deadline = time.monotonic() + seconds
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{what} within {seconds:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), left)

    def _changed(self) -> None:
        # Wake every waiter of :meth:`until`; the next change sets a fresh event.
        self._moved.set()
        self._moved = asyncio.Event()

    async def send(self, request: Request) -> Response:
        url = URL(request.url, encoded=True)
        app = self._apps.get((url.host or "", url.port or 80))
        if app is None:
            raise TransportError("unreachable", f"no sandbox region at {url.host}:{url.port}")
        self.received.append(request)
        self._changed()
        handling = asyncio.create_task(self._handle(app, request, url, self._gate))
        self._handling.add(handling)
        handling.add_done_callback(self._answered)
        try:
            answer, connection = await asyncio.wait_for(asyncio.shield(handling), request.timeout)
        except TimeoutError:
            raise TransportError("timeout", f"no response within {request.timeout:g}s") from None
        if connection.closed:
            raise TransportError("dropped", "the server closed the connection without answering")
        return _response(answer)

    def _answered(self, handling: asyncio.Task[tuple[web.StreamResponse, _Connection]]) -> None:
        self._handling.discard(handling)
        self._changed()

    @staticmethod
    async def _handle(
        app: web.Application, request: Request, url: URL, gate: asyncio.Event | None
    ) -> tuple[web.StreamResponse, _Connection]:
        if gate is not None:
            await gate.wait()
        connection = _Connection()
        mocked = make_mocked_request(
            request.method,
            url.raw_path_qs,
            headers={**request.headers, "Host": url.raw_authority},
            app=app,
            transport=connection,
            payload=_payload(request.body),
            client_max_size=MAX_BODY_BYTES,
        )
        # ``_handle`` is what aiohttp's own server calls for each request of an application:
        # routing, then the middleware chain, then the handler. There is no public way in.
        return await app._handle(mocked), connection

    async def close(self) -> None:
        """Release held requests and wait for those still being handled. Idempotent."""
        self.release()
        while self._handling:
            await asyncio.gather(*self._handling, return_exceptions=True)


class _Connection(asyncio.Transport):
    """The request's side of a connection that is not there: the sandbox closes it to drop a
    request without an answer."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # ``request.remote`` asks for the peer: a loopback client, as over HTTP.
        return ("127.0.0.1", 0) if name == "peername" else default


def _payload(body: bytes | None) -> StreamReader:
    loop = asyncio.get_running_loop()
    stream = StreamReader(BaseProtocol(loop), limit=2**16, loop=loop)
    if body:
        stream.feed_data(body)
    stream.feed_eof()
    return stream


def _response(answer: web.StreamResponse) -> Response:
    if not isinstance(answer, web.Response):
        # Every sandbox answer is built whole; a streamed one would need a writer.
        raise TypeError(f"the sandbox answered with a streamed {type(answer).__name__}")
    body = answer.body
    if body is None:
        data = b""
    elif isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
    else:
        raise TypeError(f"the sandbox answered with a {type(body).__name__} body")
    return Response(answer.status, dict(answer.headers), data)
