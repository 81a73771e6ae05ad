"""ddsync's ``/healthz`` and ``/ready`` over HTTP: one answer, or polling until one comes."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from typing import Any

import orjson

from tests.support.waiting import wait_until


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of ``GET path``; 4xx/5xx are answers, not errors."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def report(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a health answer (``/healthz``, ``/ready``), checked for shape."""
    status, headers, body = get(port, path)
    assert headers["Content-Type"].startswith("application/json"), headers
    answer: dict[str, Any] = orjson.loads(body)
    assert answer["status"] == ("ok" if status == 200 else "failing"), (status, answer)
    return status, answer


def wait_for_report(
    port: int,
    path: str,
    want: int,
    seconds: float,
    process: subprocess.Popen[Any] | None = None,
) -> dict[str, Any]:
    """Poll ``path`` until it answers ``want``; the last answer goes into the failure."""
    last: list[Any] = []

    def answered() -> bool:
        try:
            status, answer = report(port, path)
        except OSError as exc:  # not listening yet
            last[:] = [exc]
            return False
        last[:] = [status, answer]
        return status == want

    try:
        wait_until(
            answered, seconds, f"{path} did not answer {want}", process=process, interval=0.1
        )
    except AssertionError as error:
        raise AssertionError(f"{error}; last answer: {last}") from None
    answer: dict[str, Any] = last[1]
    return answer
