"""``ddsync address-books list|create`` and ``ddsync check``: DotDigital from the command line.

Each takes ``--config FILE`` and ``--connector NAME`` (default: the only connector). Problems a
user can fix (configuration, credentials, an unreachable host, a duplicate name) end the
command with one line on stderr and a non-zero status (:func:`exit_code_for`: 2 for the
configuration, 3 for an unreachable DotDigital or rejected credentials, 1 for a refused
request); never a traceback, never the password.
Unlike the pipeline, these commands do not retry a 401: a wrong password should fail at once
(DotDigital locks an API user after five bad ones).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from stream.checks import CheckResult, exit_code, format_results, results_json
from stream.config import load_settings
from stream.dotdigital.client import DotDigitalClient
from stream.dotdigital.errors import (
    AuthenticationError,
    DotDigitalError,
    RetriesExhausted,
    ThrottledError,
    TransientError,
    WrongRegionError,
)
from stream.dotdigital.models import AddressBook
from stream.dotdigital.ratelimit import parse_reset
from stream.dotdigital.retry import RetryPolicy
from stream.exitcodes import ExitCode, interrupted
from stream.kafka.preflight import kafka_checks
from stream.pipeline.clients import client_config
from stream.settings import ConfigError, ConnectorSettings, Settings

__all__ = ["add_parser", "dotdigital_checks", "exit_code_for"]

log = logging.getLogger(__name__)

# Interactive commands give up on an unreachable or failing DotDigital after this long.
DEFAULT_RETRY_SECONDS = 20.0


def add_parser(subparsers: Any) -> None:
    """Add ``address-books`` and ``check`` to the ``ddsync`` command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, metavar="FILE", help="the TOML configuration")
    common.add_argument(
        "--connector",
        metavar="NAME",
        help="which [connectors.NAME] to use (default: the only one configured)",
    )
    common.add_argument(
        "--retry-seconds",
        type=float,
        default=DEFAULT_RETRY_SECONDS,
        metavar="SECONDS",
        help="give up on transient failures after this long (default: %(default)s)",
    )

    books = subparsers.add_parser(
        "address-books",
        help="list or create DotDigital address books",
        description="List or create the address books (lists) of a connector's account.",
    )
    actions = books.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="list address books")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=handle_list)
    create = actions.add_parser("create", parents=[common], help="create an address book")
    create.add_argument("name", metavar="NAME", help="the new address book's name (<= 128 chars)")
    create.add_argument("--visibility", choices=["Private", "Public"], default="Private")
    create.add_argument(
        "--exist-ok",
        action="store_true",
        help="succeed with the existing book when one of that name exists",
    )
    create.add_argument("--json", action="store_true", help="print JSON instead of text")
    create.set_defaults(handler=handle_create)

    check = subparsers.add_parser(
        "check",
        parents=[common],
        help="check Kafka and a connector's credentials, region and rate-limit budget",
        description="Check what ddsync run needs: the Kafka cluster with the configured "
        "security settings (brokers, each topic's partitions, the dead-letter topic, the "
        "group's lag), then log in to DotDigital with a connector's credentials and report the "
        "account's region (detected or configured) and rate-limit budget.",
    )
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.add_argument(
        "--skip-kafka", action="store_true", help="check DotDigital only, not the Kafka cluster"
    )
    check.set_defaults(handler=handle_check)


def handle_list(args: argparse.Namespace) -> int:
    async def run(client: DotDigitalClient) -> None:
        books = await client.list_address_books()
        if args.json:
            _write_json([_book_json(book) for book in books])
        else:
            sys.stdout.write(format_table(books))

    return _run(args, run)


def handle_create(args: argparse.Namespace) -> int:
    name = args.name.strip()
    if not name or len(name) > 128:
        return _fail("the address book name must be 1 to 128 characters long", code=ExitCode.USAGE)

    async def run(client: DotDigitalClient) -> None:
        book = await client.create_address_book(name, args.visibility, exist_ok=args.exist_ok)
        if args.json:
            _write_json(_book_json(book))
        else:
            sys.stdout.write(
                f"address book {book.id}: {book.name} ({book.visibility}, "
                f"{book.contacts} contacts)\n"
            )

    return _run(args, run)


def handle_check(args: argparse.Namespace) -> int:
    outcome: list[CheckResult] = []
    kafka_reachable = True
    if not args.skip_kafka:
        try:
            settings = load_settings(args.config)
        except ConfigError:
            pass  # _run below says what is wrong with it, once
        else:
            report = kafka_checks(settings.kafka)
            outcome.extend(report.results)
            kafka_reachable = report.reachable

    async def run(client: DotDigitalClient) -> None:
        outcome.extend(await dotdigital_checks(client))
        if args.json:
            _write_json(results_json(outcome))
        else:
            sys.stdout.write(format_results(outcome))

    def failed(line: str) -> None:
        if args.json:
            _write_json(results_json([*outcome, CheckResult("dotdigital", False, line)]))
        else:
            sys.stdout.write(format_results(outcome))

    status = _run(args, run, failed)
    if status != ExitCode.OK:
        return status
    return ExitCode.UNAVAILABLE if not kafka_reachable else exit_code(outcome)


async def dotdigital_checks(client: DotDigitalClient) -> list[CheckResult]:
    """What ``ddsync check`` reports about a connector: it logs in (raising the client's
    error when it cannot), then lists the account, its endpoint and the rate-limit budgets."""
    config = client.config
    info = await client.account_info()
    how = "configured" if config.api_endpoint else f"detected via {config.discovery_endpoint}"
    rows = [
        ("connector", config.name),
        ("api user", f"{config.username} (credentials accepted)"),
        ("account", f"{info.id} {info.properties.get('Name', '')}".rstrip()),
        ("endpoint", f"{client.endpoint} ({how})"),
    ]
    calls = info.properties.get("ApiCallsInLastHour")
    remaining = info.properties.get("ApiCallsRemaining")
    if calls is not None or remaining is not None:
        rows.append(("api calls", f"{calls or '?'} in the last hour, {remaining or '?'} remaining"))
    headers = info.rate_limit_headers
    if "x-ratelimit-limit" in headers:
        reset = parse_reset(headers.get("x-ratelimit-reset", ""), time.time())
        rows.append(
            (
                "server budget",
                f"{headers.get('x-ratelimit-remaining', '?')} of "
                f"{headers['x-ratelimit-limit']} calls left "
                f"({headers.get('x-ratelimit-scope', 'this tier')})"
                + (f", resets in {reset:.0f}s" if reset is not None else ""),
            )
        )
    for name, status in client.rate_limit_status().items():
        rows.append(
            (f"{name} budget", f"{status.limit} requests/minute, {status.available} available")
        )
    rows.append(("imports", f"at most {config.max_active_imports} at once"))
    return [CheckResult(label, True, value) for label, value in rows]


def format_table(books: Sequence[AddressBook]) -> str:
    """A plain-text table of address books, one per line, columns aligned."""
    rows = [("ID", "NAME", "VISIBILITY", "CONTACTS")]
    rows += [(str(b.id), b.name, b.visibility, str(b.contacts)) for b in books]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{row[0]:>{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]:>8}"
        for row in rows
    ]
    lines.append(f"{len(books)} address book{'s' if len(books) != 1 else ''}")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _book_json(book: AddressBook) -> dict[str, Any]:
    return {
        "id": book.id,
        "name": book.name,
        "visibility": book.visibility,
        "contacts": book.contacts,
    }


def _write_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def select_connector(settings: Settings, name: str | None) -> ConnectorSettings:
    """The connector called ``name``, or the only one; ``ConfigError`` otherwise."""
    if name is not None:
        try:
            return settings.connectors[name]
        except KeyError:
            known = ", ".join(sorted(settings.connectors))
            raise ConfigError(f"no connector named {name!r}; configured: {known}") from None
    if len(settings.connectors) == 1:
        return next(iter(settings.connectors.values()))
    known = ", ".join(sorted(settings.connectors))
    raise ConfigError(f"several connectors are configured ({known}); choose one with --connector")


def exit_code_for(exc: DotDigitalError) -> ExitCode:
    """The exit status of a command that DotDigital failed with ``exc``: ``UNAVAILABLE`` when it
    could not be reached or refused the credentials, ``USAGE`` for a wrongly configured region,
    ``FAILED`` when it refused the request itself."""
    if isinstance(exc, WrongRegionError):
        return ExitCode.USAGE
    if isinstance(exc, RetriesExhausted | AuthenticationError | TransientError | ThrottledError):
        return ExitCode.UNAVAILABLE
    return ExitCode.FAILED


def _run(
    args: argparse.Namespace,
    work: Callable[[DotDigitalClient], Awaitable[None]],
    failed: Callable[[str], None] | None = None,
) -> int:
    """Load the connector, connect, run ``work``; turn the expected failures into one line on
    stderr (also handed to ``failed``) and their exit status."""
    secret = ""
    try:
        connector = select_connector(load_settings(args.config), args.connector)
        secret = connector.password.reveal()
        policy = RetryPolicy(total_seconds=max(0.0, args.retry_seconds))

        async def main() -> None:
            async with await DotDigitalClient.connect(
                client_config(connector), retry=policy
            ) as client:
                await work(client)

        asyncio.run(main())
    except ConfigError as exc:
        return _fail(f"configuration: {exc}", secret, ExitCode.USAGE, failed)
    except WrongRegionError as exc:
        return _fail(
            f"{exc.message}. Remove api_endpoint from the connector to detect the region, "
            "or set the right one",
            secret,
            exit_code_for(exc),
            failed,
        )
    except RetriesExhausted as exc:
        return _fail(
            f"DotDigital is unavailable: {exc.message}", secret, exit_code_for(exc), failed
        )
    except DotDigitalError as exc:
        return _fail(exc.message, secret, exit_code_for(exc), failed)
    except KeyboardInterrupt:
        return interrupted(signal.SIGINT)
    except Exception as exc:  # a bug, or something unforeseen: still one line, details in DEBUG
        log.debug("unexpected failure", exc_info=True)
        return _fail(f"unexpected {type(exc).__name__}: {exc}", secret, ExitCode.FAILED, failed)
    return ExitCode.OK


def _fail(
    message: str,
    secret: str = "",
    code: ExitCode = ExitCode.FAILED,
    failed: Callable[[str], None] | None = None,
) -> int:
    line = " ".join(message.split())
    if secret:
        line = line.replace(secret, "***")
    sys.stderr.write(f"ddsync: error: {line}\n")
    if failed is not None:
        failed(line)
    return code
