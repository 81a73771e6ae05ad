"""``python -m stream.sandbox`` as a real subprocess: ready file, banner without
secrets, accounts file, fault flags, start time, and a clean exit on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.cli.sandbox import add_parser
from stream.sandbox import DEMO_PASSWORD, DEMO_USERNAME
from tests.support import basic_auth
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.sandbox, pytest.mark.process]

REPO = Path(__file__).resolve().parents[2]


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_sandbox_left_behind() -> Iterator[None]:
    """A failing assertion must not leave its sandbox process running."""
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "stream.sandbox", "--port", "0", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    _started.append(process)
    return process


def wait_ready(process: subprocess.Popen[str], ready: Path, timeout: float = 10) -> dict[str, Any]:
    try:
        wait_until(
            ready.exists, timeout, "the sandbox did not become ready", process=process,
            interval=0.01,
        )  # fmt: skip
    except AssertionError as error:
        process.kill()
        raise AssertionError(f"{error}: {process.communicate()}") from None
    info: dict[str, Any] = json.loads(ready.read_text())
    return info


def get(url: str, auth: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, _parsed(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _parsed(error.read())


def _parsed(raw: bytes) -> Any:
    # An injected 503 is an HTML page on purpose (clients must not assume JSON).
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def stop(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[int, str, str]:
    process.send_signal(signum)
    out, err = process.communicate(timeout=10)
    return process.returncode, out, err


def test_demo_sandbox_starts_fast_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    started = time.monotonic()
    process = start(tmp_path, "--ready-file", str(ready))
    info = wait_ready(process, ready)
    # A figure for the notes, not a pass mark: speed is measured in benchmarks.
    print(f"\nsandbox process ready in {time.monotonic() - started:.2f} s")
    assert set(info["urls"]) == {"r1", "r2", "r3"}
    assert info["discovery_url"] == info["urls"]["r1"]
    status, body = get(
        info["discovery_url"] + "/v2/account-info", basic_auth(DEMO_USERNAME, DEMO_PASSWORD)
    )
    assert status == 200
    endpoint = {p["name"]: p["value"] for p in body["properties"]}["ApiEndpoint"]
    assert endpoint == info["urls"]["r1"] + "/"
    status, body = get(
        info["urls"]["r1"] + "/v2/address-books", basic_auth(DEMO_USERNAME, DEMO_PASSWORD)
    )
    assert [book["id"] for book in body] == [1001, 1002, 1003]
    code, out, _ = stop(process)
    assert code == 0
    assert DEMO_USERNAME in out
    assert DEMO_PASSWORD not in out
    for url in info["urls"].values():
        assert url in out
    assert not ready.exists()


def test_accounts_file_flags_and_sigint(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.json"
    accounts.write_text(
        json.dumps(
            {
                "accounts": [
                    {
                        "username": "file@apiconnector.com",
                        "password_env": "SANDBOX_TEST_PASSWORD",
                        "region": "r3",
                        "address_books": [{"id": 42, "name": "Answer"}],
                    }
                ]
            }
        )
    )
    ready = tmp_path / "nested" / "ready.json"
    process = start(
        tmp_path,
        "--accounts",
        str(accounts),
        "--ready-file",
        str(ready),
        "--error-rate",
        "0.25",
        "--no-rate-limits",
        "--import-delay",
        "0",
        env={"SANDBOX_TEST_PASSWORD": "s3cr3t-value"},
    )
    info = wait_ready(process, ready)
    auth = basic_auth("file@apiconnector.com", "s3cr3t-value")
    status, faults = get(info["urls"]["r1"] + "/_sandbox/faults")
    assert status == 200
    assert faults["error_rate"] == 0.25
    # Region detection on r1 points at r3.
    for _ in range(20):
        status, body = get(info["urls"]["r1"] + "/v2/account-info", auth)
        if status == 200:
            break
    assert status == 200
    endpoint = {p["name"]: p["value"] for p in body["properties"]}["ApiEndpoint"]
    assert endpoint == info["urls"]["r3"] + "/"
    code, out, _ = stop(process, signal.SIGINT)
    assert code == 0
    assert "s3cr3t-value" not in out
    assert "SANDBOX_TEST_PASSWORD" in out  # where the password comes from


def run_to_exit(*args: str) -> subprocess.CompletedProcess[str]:
    """The standalone sandbox, for a start that must fail."""
    return subprocess.run(
        [sys.executable, "-m", "stream.sandbox", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"accounts": [{"username": "a", "password": "p", "region": "r9"}]}', "region"),
        ('{"accounts": [{"username": "a"}]}', "password"),
        ('{"accounts": [{"username": "a", "password": "p", "colour": 1}]}', "colour"),
        ('{"accounts": [{"username": "a", "password": "p", "tier_layout": "x"}]}', "tier_layout"),
    ],
)
def test_bad_accounts_file_is_a_one_line_error(tmp_path: Path, content: str, message: str) -> None:
    accounts = tmp_path / "accounts.json"
    accounts.write_text(content)
    result = run_to_exit("--accounts", str(accounts))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_exits_2(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    first = start(tmp_path, "--ready-file", str(ready))
    try:
        info = wait_ready(first, ready)
        port = info["urls"]["r1"].rsplit(":", 1)[1]
        result = run_to_exit("--port", port)
        assert result.returncode == 2
        assert "cannot listen" in result.stderr
    finally:
        stop(first)


def test_example_accounts_file_loads() -> None:
    from stream.sandbox import load_accounts

    example = REPO / "stream/sandbox/accounts.example.json"
    loaded = load_accounts(example, environ={"SANDBOX_EU_PASSWORD": "x"})
    assert [a.region for a in loaded] == ["r1", "r2"]
    assert loaded[1].rate_limit_scheme == "flat"
    assert [a.tier_layout for a in loaded] == ["separate", "separate"]


def test_subcommand_registers_with_the_ddsync_cli() -> None:
    parser = argparse.ArgumentParser(prog="ddsync")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["sandbox", "--port", "0", "--latency", "0.5", "--reset-header", "epoch"]
    )
    assert args.port == 0
    assert args.latency == 0.5
    assert args.reset_header == "epoch"
    assert callable(args.handler)
