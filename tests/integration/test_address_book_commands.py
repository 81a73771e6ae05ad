"""``ddsync address-books`` and ``ddsync check`` as real subprocesses against the sandbox.

The sandbox runs in this test's event loop; the command runs as a child process (so it has its
own event loop, as from a shell) and is awaited with asyncio so the sandbox keeps serving.

Two ways to start the command:

* ``RUNNER``: a minimal ``ddsync`` holding only this module's subcommands, which works
  whatever state the rest of the command line is in;
* ``python -m stream``: the real entry point, which imports every command module; that test
  is skipped while one of them cannot be imported yet.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from stream.cli.address_books import format_table
from stream.dotdigital.models import AddressBook
from stream.sandbox import (
    Sandbox,
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    run_sandbox,
)

pytestmark = [pytest.mark.integration, pytest.mark.sandbox, pytest.mark.process]

PASSWORD = "Tr0ub4dor&3-very-secret"
USER = "apiuser-cli@apiconnector.com"
PASSWORD_ENV = "DDSYNC_TEST_CLI_PASSWORD"
ROOT = Path(__file__).resolve().parents[2]

RUNNER = """
import argparse, sys
from stream.cli.address_books import add_parser
parser = argparse.ArgumentParser(prog="ddsync")
add_parser(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.handler(args))
"""


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    account = SandboxAccount(
        USER,
        PASSWORD,
        region="r2",
        account_id=7,
        address_books=(SandboxAddressBook(3001, "Existing book"),),
    )
    async with run_sandbox(SandboxSettings(accounts=[account])) as sb:
        yield sb


def write_config(tmp_path: Path, sb: Sandbox, *, extra_connector: bool = False) -> Path:
    text = f"""
[kafka]
bootstrap_servers = "127.0.0.1:9092"

[connectors.main]
username = "{USER}"
password_env = "{PASSWORD_ENV}"
discovery_endpoint = "{sb.discovery_url}"
request_timeout_seconds = 10
"""
    if extra_connector:
        text += f"""
[connectors.other]
username = "{USER}"
password_env = "{PASSWORD_ENV}"
api_endpoint = "{sb.urls["r2"]}"
"""
    path = tmp_path / "ddsync.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def ddsync(*args: str, password: str = PASSWORD, real_cli: bool = False) -> Result:
    env = {**os.environ, PASSWORD_ENV: password}
    prefix = ["-m", "stream"] if real_cli else ["-c", RUNNER]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *prefix,
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.status != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ddsync: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert PASSWORD not in result.stdout + result.stderr


async def test_create_then_list(sandbox: Sandbox, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, sandbox))
    created = await ddsync(
        "address-books", "create", "Summer audience", "--visibility", "Public", "--config", config
    )
    assert created.status == 0, created.stderr
    assert "Summer audience (Public, 0 contacts)" in created.stdout
    listed = await ddsync("address-books", "list", "--config", config)
    assert listed.status == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "VISIBILITY", "CONTACTS"]
    assert any(line.split()[:3] == ["3001", "Existing", "book"] for line in lines)
    assert any("Summer audience" in line and "Public" in line for line in lines)
    assert lines[-1] == "2 address books"
    as_json = await ddsync("address-books", "list", "--json", "--config", config)
    books = orjson.loads(as_json.stdout)
    assert {b["name"] for b in books} == {"Existing book", "Summer audience"}
    assert set(sandbox.address_books(USER).values()) == {"Existing book", "Summer audience"}


async def test_create_duplicate_fails_unless_exist_ok(sandbox: Sandbox, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, sandbox))
    duplicate = await ddsync("address-books", "create", "Existing book", "--config", config)
    assert_one_line_error(duplicate, "'Existing book' already exists")
    again = await ddsync(
        "address-books", "create", "Existing book", "--exist-ok", "--json", "--config", config
    )
    assert again.status == 0, again.stderr
    assert orjson.loads(again.stdout)["id"] == 3001


async def test_check_reports_credentials_region_and_budget(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    result = await ddsync("check", "--skip-kafka", "--config", str(write_config(tmp_path, sandbox)))
    assert result.status == 0, result.stderr
    assert "credentials accepted" in result.stdout
    fields = {
        name.strip(): value.strip()
        for name, value in (line.split(":", 1) for line in result.stdout.splitlines())
    }
    assert fields["endpoint"] == f"{sandbox.urls['r2']} (detected via {sandbox.discovery_url})"
    assert fields["add budget"] == "75 requests/minute, 75 available"
    assert fields["remove budget"] == "35 requests/minute, 35 available"
    assert "calls left (highCallRate), resets in" in fields["server budget"]
    assert PASSWORD not in result.stdout + result.stderr


async def test_wrong_password_is_one_line_and_tried_once(sandbox: Sandbox, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, sandbox))
    for command in (["address-books", "list"], ["check", "--skip-kafka"]):
        result = await ddsync(*command, "--config", config, password="wrong-" + PASSWORD)
        assert_one_line_error(result, "rejected the API user's credentials (HTTP 401)")
        assert "wrong-" not in result.stderr
    # DotDigital locks an API user after 5 bad passwords: one attempt per command.
    assert [e.status for e in sandbox.journal] == [401, 401]


async def test_unreachable_host_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "ddsync.toml"
    config.write_text(
        f"""
[kafka]
bootstrap_servers = "127.0.0.1:9092"
[connectors.main]
username = "{USER}"
password_env = "{PASSWORD_ENV}"
discovery_endpoint = "http://127.0.0.1:9"
""",
        encoding="utf-8",
    )
    result = await ddsync("check", "--skip-kafka", "--config", str(config), "--retry-seconds", "0")
    assert_one_line_error(result, "DotDigital is unavailable", "cannot connect to 127.0.0.1:9")


async def test_bad_configuration_is_one_line(sandbox: Sandbox, tmp_path: Path) -> None:
    missing = await ddsync("address-books", "list", "--config", str(tmp_path / "nope.toml"))
    assert_one_line_error(missing, "configuration:", "does not exist")
    config = str(write_config(tmp_path, sandbox, extra_connector=True))
    ambiguous = await ddsync("check", "--skip-kafka", "--config", config)
    assert_one_line_error(ambiguous, "choose one with --connector")
    unknown = await ddsync("check", "--skip-kafka", "--config", config, "--connector", "nope")
    assert_one_line_error(unknown, "no connector named 'nope'")
    chosen = await ddsync("check", "--skip-kafka", "--config", config, "--connector", "other")
    assert chosen.status == 0, chosen.stderr
    assert "(configured)" in chosen.stdout
    no_secret = await ddsync(
        "check", "--skip-kafka", "--config", config, "--connector", "other", password=""
    )
    assert_one_line_error(no_secret, f"environment variable {PASSWORD_ENV} is not set")


async def test_through_the_real_entry_point(sandbox: Sandbox, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, sandbox))
    created = await ddsync(
        "address-books", "create", "Via ddsync", "--config", config, real_cli=True
    )
    assert created.status == 0, created.stderr
    listed = await ddsync("address-books", "list", "--config", config, real_cli=True)
    assert "Via ddsync" in listed.stdout
    denied = await ddsync(
        "check", "--skip-kafka", "--config", config, password="nope", real_cli=True
    )
    assert_one_line_error(denied, "HTTP 401")


def test_format_table_aligns_columns() -> None:
    table = format_table(
        [AddressBook(1, "A", "Private", 5), AddressBook(12345, "Longer name", "Public", 1200)]
    )
    assert table.splitlines() == [
        "   ID  NAME         VISIBILITY  CONTACTS",
        "    1  A            Private            5",
        "12345  Longer name  Public          1200",
        "2 address books",
    ]


async def test_check_json_lists_each_result(sandbox: Sandbox, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, sandbox))
    text = await ddsync("check", "--skip-kafka", "--config", config)
    result = await ddsync("check", "--skip-kafka", "--json", "--config", config)
    assert result.status == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert all(c["ok"] is True for c in checks.values())
    assert checks["endpoint"]["detail"] == (
        f"{sandbox.urls['r2']} (detected via {sandbox.discovery_url})"
    )
    assert checks["add budget"]["detail"] == "75 requests/minute, 75 available"
    # The same results as the text report, line for line.
    assert [c["name"] for c in report["checks"]] == [
        line.split(":", 1)[0] for line in text.stdout.splitlines()
    ]
    denied = await ddsync(
        "check", "--skip-kafka", "--json", "--config", config, password="wrong-" + PASSWORD
    )
    assert denied.status == 3
    failed = orjson.loads(denied.stdout)
    assert failed["ok"] is False
    assert [(c["name"], c["ok"]) for c in failed["checks"]] == [("dotdigital", False)]
    assert "HTTP 401" in failed["checks"][0]["detail"]
    assert "wrong-" not in denied.stdout + denied.stderr
