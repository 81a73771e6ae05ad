"""End to end: a DotDigital client error logged as JSON carries no password and no email.

A real HTTP server (aiohttp, in this test's loop) answers every request with a 400 whose body
echoes the password, the Authorization header, the request path and body (which hold the
contact's email); the errors the client raises are logged through ddsync's JSON formatter.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from aiohttp import web

from stream.dotdigital import DotDigitalClient, DotDigitalError, RetryPolicy
from stream.logs import configure_logging
from stream.pipeline.clients import client_config
from stream.settings import ConnectorSettings, Secret

# A real HTTP server in this process: no broker, no sandbox, no subprocess.
pytestmark = pytest.mark.integration

PASSWORD = "pa55-word-that-must-never-show"
# A JSON body escapes "ö" as \u00f6: the client scrubs that spelling of the password too
# (stream/dotdigital/http.py).
NON_ASCII_PASSWORD = "pa55-Wörd-that-must-never-show"
PASSWORD_KEY = web.AppKey("password", str)
USER = "apiuser-logs@apiconnector.com"
EMAIL = "jane.doe@example.com"


async def echo(request: web.Request) -> web.Response:
    password = request.app[PASSWORD_KEY]
    body = {
        "message": f"rejected {request.headers.get('Authorization')} password={password} "
        f"path={request.path} body={(await request.text())[:300]} ERROR_BAD_REQUEST"
    }
    return web.json_response(body, status=400)


@pytest.fixture(
    params=[
        PASSWORD,
        NON_ASCII_PASSWORD,
    ]
)
def password(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
async def echo_url(password: str) -> AsyncIterator[str]:
    app = web.Application()
    app[PASSWORD_KEY] = password
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    configure_logging("DEBUG", "json", out)
    yield out
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_a_client_error_logged_as_json_holds_no_secret_and_no_email(
    echo_url: str, password: str, json_log: io.StringIO
) -> None:
    settings = ConnectorSettings(
        name="logs", username=USER, password=Secret(password), api_endpoint=echo_url
    )
    log = logging.getLogger("stream.test")
    failures = 0
    async with DotDigitalClient(
        client_config(settings), endpoint=echo_url, retry=RetryPolicy(total_seconds=0)
    ) as client:
        for call in (client.account_info(), client.import_contacts(7, [EMAIL])):
            try:
                await call
            except DotDigitalError as exc:
                failures += 1
                log.warning("call failed: %s", exc)
                log.error("call failed", exc_info=exc)
    assert failures == 2
    text = json_log.getvalue()
    lines = [orjson.loads(line) for line in text.splitlines()]
    warnings = [line for line in lines if line["logger"] == "stream.test"]
    assert len(warnings) == 4
    assert all("HTTP 400" in str(line["message"]) + str(line.get("exception")) for line in warnings)
    token = base64.b64encode(f"{USER}:{password}".encode()).decode()
    for secret in (password, token, EMAIL):
        assert secret not in text
    assert "***" in text  # the client's scrub, not an empty message
    assert "{email}" in text  # the formatter's redaction of the echoed import body
