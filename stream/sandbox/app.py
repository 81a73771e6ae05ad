"""The aiohttp application of one region, and the core that all regions share.

Every API request goes through :func:`_api_middleware`, in this order (each step can answer):

1. faults (latency, dropped connection, 500/503, a proxy's HTML 404) — they model the network,
   so they come first and cost no rate budget;
2. Basic auth -> 401;
3. due jobs of the account are settled (so the handler sees completed imports/removals);
4. rate limit of the call's budget (which one: :func:`tier_of` in the account's
   ``tier_layout``) -> 429 (tiered) or 400 ``ERROR_APIUSAGE_EXCEEDED`` (flat);
5. region: an account is served only on its own region's host -> 403, except
   ``GET /v2/account-info`` on r1 (DotDigital's documented region detection);
6. the handler.

Rate-limit headers go on every response to an authenticated call (steps 3-6). Requests and
answers are written to the journal. ``/_sandbox/...`` control paths skip all of this.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from stream.sandbox import bodies
from stream.sandbox.accounts import TierLayout
from stream.sandbox.core import (
    CORE,
    CURRENT_ACCOUNT,
    CURRENT_BODY,
    INVALID_JSON,
    REGION,
    SandboxCore,
)
from stream.sandbox.journal import JournalEntry
from stream.sandbox.ratelimits import LAYOUTS, CallKind, LimitTier
from stream.sandbox.routes import add_routes
from stream.sandbox.state import AccountState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONTROL_PREFIX = "/_sandbox/"
# The largest request body an application accepts (the biggest import DotDigital takes, and
# more).
MAX_BODY_BYTES = 64 * 1024 * 1024
_REMOVE_PATH = re.compile(r"^/v2/address-books/[^/]+/contacts/(delete|[^/]+)$")


def kind_of(method: str, path: str) -> CallKind:
    """What a call is, as far as rate limits care (see :mod:`.ratelimits`)."""
    if method == "PUT" and path == "/contacts/v3/import":
        return "import"
    if (method == "POST" and path.endswith("/contacts/delete")) or (
        method == "DELETE" and _REMOVE_PATH.match(path)
    ):
        return "removal"
    if method == "GET" and path == "/contacts/v3":
        return "listing"
    return "other"


def tier_of(method: str, path: str, layout: TierLayout = "separate") -> LimitTier:
    """Which budget a call counts against in ``layout`` (see :mod:`.ratelimits`)."""
    return LAYOUTS[layout][kind_of(method, path)]


@web.middleware
async def _api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(CONTROL_PREFIX):
        return await handler(request)
    core = request.app[CORE]
    region = request.app[REGION]
    raw = await request.read()
    body: Any = None
    if raw:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = INVALID_JSON
    CURRENT_BODY.set(body)
    username: str | None = None
    response: web.StreamResponse | None
    if core.faults.latency_seconds > 0:
        await asyncio.sleep(core.faults.latency_seconds)
    fault = core.faults.decide(core.rng)
    if fault is not None:
        core.stats.faults[fault] += 1
    if fault == "drop":
        response = None
        if request.transport is not None:
            request.transport.close()
    elif fault == "429":
        response = bodies.rate_limited(request.path)
        reset = max(1, math.ceil(core.faults.throttle_reset_seconds))
        response.headers["X-RateLimit-Remaining"] = "0"
        response.headers["X-RateLimit-Reset"] = str(reset)
    elif fault == "404":
        response = bodies.proxy_not_found()
    elif fault is not None:
        response = bodies.server_error(int(fault))
    else:
        account = core.authenticate(request.headers.get("Authorization"))
        if account is None:
            core.stats.unauthorized += 1
            response = bodies.v2_error(401, bodies.AUTH_DENIED)
        else:
            username = account.account.username
            CURRENT_ACCOUNT.set(account)
            response = await _serve_account(request, handler, core, account, region)
    core.journal.record(
        JournalEntry(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            body=None if body is INVALID_JSON else body,
            account=username,
            region=region,
            status=None if response is None else response.status,
            response=bodies.payload_of(response),
            raw_body=raw if body is INVALID_JSON else b"",
        )
    )
    # A dropped connection still needs a return value; nobody will receive it.
    return response if response is not None else web.Response(status=500)


async def _serve_account(
    request: web.Request,
    handler: Handler,
    core: SandboxCore,
    account: AccountState,
    region: str,
) -> web.StreamResponse:
    account.settle()
    tier = tier_of(request.method, request.path, account.account.tier_layout)
    charge = core.limiter.charge(account.account, tier)
    if not charge.allowed:
        core.stats.rate_limited[(account.account.username, tier)] += 1
        if charge.scheme == "flat":
            response: web.StreamResponse = bodies.v2_error(400, bodies.APIUSAGE_EXCEEDED)
        else:
            response = bodies.rate_limited(request.path)
    else:
        core.stats.calls[(account.account.username, tier)] += 1
        detection = request.method == "GET" and request.path == "/v2/account-info"
        if region != account.account.region and not (detection and region == "r1"):
            core.stats.wrong_region += 1
            response = bodies.v2_error(403, bodies.FORBIDDEN_REGION)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = _http_exception(exc)
    response.headers.update(charge.headers)
    return response


def _http_exception(exc: web.HTTPException) -> web.StreamResponse:
    # Unknown paths and methods answer the way ASP.NET Web API does, in JSON.
    if exc.status == 404:
        return bodies.v2_error(404, "No HTTP resource was found that matches the request URI.")
    if exc.status == 405:
        return bodies.v2_error(405, "The requested resource does not support this HTTP method.")
    return bodies.v2_error(exc.status, exc.reason)


def build_app(core: SandboxCore, region: str) -> web.Application:
    """The application serving one region's host."""
    app = web.Application(middlewares=[_api_middleware], client_max_size=MAX_BODY_BYTES)
    app[CORE] = core
    app[REGION] = region
    add_routes(app)
    return app
