"""ddsync's own HTTP server: ``/metrics``, ``/healthz`` (liveness) and ``/ready`` (readiness).

Contract:

* It runs in a thread of its own with its own event loop, so it answers (and reports the
  stall) while the pipeline's loop is blocked.
* ``GET /metrics``: the registry, in the exposition format the ``Accept`` header asks for.
* ``GET /healthz``, ``GET /ready``: ``{"status": "ok"|"failing", "checks": {...}}`` (see
  :class:`stream.observability.health.Report`), 200 when ok, else 503.
* ``HEAD`` answers as ``GET`` without a body; any other path is 404.
* :meth:`HttpServer.start` returns once the port is bound, or raises ``OSError`` when it cannot
  be, so the caller can say so before anything else starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from stream.observability.health import Health, Report

PATHS = ("/metrics", "/healthz", "/ready")
_JSON = "application/json"


def build_app(registry: CollectorRegistry, health: Health) -> web.Application:
    """The routes of :data:`PATHS` (aiohttp answers 404 for the rest)."""

    async def metrics(request: web.Request) -> web.Response:
        # The format Prometheus asks for (OpenMetrics or text), as prometheus-client's own
        # server chooses it; text 0.0.4 without an Accept header.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(registry), headers={"Content-Type": content_type})

    async def healthz(_request: web.Request) -> web.Response:
        return _report(health.liveness())

    async def ready(_request: web.Request) -> web.Response:
        return _report(health.readiness())

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ready", ready)
    return app


def _report(report: Report) -> web.Response:
    return web.Response(
        body=orjson.dumps(report.to_json()),
        status=200 if report.ok else 503,
        content_type=_JSON,
        headers={"Cache-Control": "no-store"},
    )


class HttpServer:
    """Serves :func:`build_app` on ``host:port`` from a daemon thread until :meth:`stop`."""

    def __init__(self, registry: CollectorRegistry, health: Health) -> None:
        self._app = build_app(registry, health)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="http-server", daemon=True)
        self._bound: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def start(self, host: str, port: int) -> None:
        """Bind and serve; ``port`` 0 picks a free one (then read :attr:`port`)."""
        self._host, self._requested = host, port
        self._thread.start()
        self.port = self._bound.result()

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _serve(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            port = loop.run_until_complete(self._setup())
        except BaseException as exc:  # the starting thread raises it
            self._bound.set_exception(exc)
            loop.close()
            return
        self._bound.set_result(port)
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _setup(self) -> int:
        # No access log: probes and scrapes every few seconds would drown the useful lines.
        runner = web.AppRunner(
            self._app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._requested).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port: int = runner.addresses[0][1]
        return port
