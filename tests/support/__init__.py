"""Helpers shared by tests: a small HTTP caller for the sandbox, and journal validation.

``tests.support.openapi`` validates requests and responses against DotDigital's specs.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from tests.support.openapi import OpenAPIViolation, validate_exchange, validate_request

__all__ = ["Api", "Reply", "basic_auth", "validate_journal"]


def basic_auth(username: str, password: str) -> str:
    """An ``Authorization`` header value for HTTP Basic auth."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: Any
    text: str


class Api:
    """Calls one sandbox as one account; ``region`` picks the host (default: r1)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: dict[str, str],
        username: str,
        password: str,
    ) -> None:
        self.session = session
        self.urls = urls
        self.username = username
        self.auth = basic_auth(username, password)

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        region: str = "r1",
        data: bytes | None = None,
        auth: str | None = None,
    ) -> Reply:
        headers = {"Authorization": auth if auth is not None else self.auth}
        body = data
        if json is not None:
            body = orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        async with self.session.request(
            method, self.urls[region] + path, data=body, headers=headers
        ) as response:
            text = await response.text()
            parsed = None
            if response.content_type == "application/json" and text:
                parsed = orjson.loads(text)
            return Reply(response.status, dict(response.headers), parsed, text)


def validate_journal(entries: Any) -> int:
    """Validate every journal entry whose request is valid per the specs.

    Requests a test sent invalid on purpose (bad JSON, select=0, ...) or to paths no spec
    describes are skipped. Returns how many responses were checked against a body schema.
    """
    checked = 0
    for entry in entries:
        try:
            validate_request(entry.method, entry.path, entry.body, query=entry.query)
        except OpenAPIViolation:
            continue
        if entry.raw_body:
            continue  # the body was not JSON: a deliberate bad request
        if validate_exchange(entry):
            checked += 1
    return checked
