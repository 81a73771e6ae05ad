"""``ddsync sandbox``: serve a local DotDigital until SIGINT/SIGTERM.

Also runnable without the rest of ddsync: ``python -m stream.sandbox``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from stream.cli.main import add_logging_options, run_command
from stream.exitcodes import ExitCode
from stream.sandbox.accounts import (
    DEMO_PASSWORD,
    DEMO_R2_USERNAME,
    DEMO_USERNAME,
    AccountsError,
    SandboxAccount,
    default_accounts,
    load_accounts,
)
from stream.sandbox.server import Sandbox, run_sandbox
from stream.sandbox.settings import SandboxSettings

log = logging.getLogger(__name__)

DEFAULT_PORT = 8085

DESCRIPTION = f"""\
Serve a local DotDigital API: regions r1, r2 and r3 on PORT, PORT+1 and PORT+2, Basic auth,
address books, v3 contact imports, look-ups and listing (GET /contacts/v3), list removals,
rate-limit headers and 429s, and switchable faults. Point ddsync (or anything else) at the r1
URL as its discovery endpoint.

Without --accounts it serves two demo accounts, both with the password '{DEMO_PASSWORD}':
  {DEMO_USERNAME}     region r1, address books 1001, 1002, 1003
  {DEMO_R2_USERNAME}  region r2, address book 2001

--accounts FILE reads JSON: {{"accounts": [{{"username": ..., "password_env": "VAR" (or
"password": ...), "region": "r1", "address_books": [{{"id": 1, "name": "..."}}], ...}}]}};
see stream/sandbox/accounts.example.json for every field. Rate limits per minute:
add_per_minute (imports), remove_per_minute (list removals), other_per_minute (the rest), and
"tier_layout": "separate" (default; scopes mediumCallRate, lowCallRate, highCallRate; GET
/contacts/v3 counts as "other") or "shared" (imports, list removals and GET /contacts/v3 share
one lowCallRate budget of add_per_minute; the rest highCallRate, other_per_minute).

Control API (no auth): GET/POST /_sandbox/faults, GET /_sandbox/stats,
GET /_sandbox/accounts/USERNAME/address-books/ID/members, GET /_sandbox/health,
POST /_sandbox/accounts/USERNAME/contacts/EMAIL/recreate.
"""


def add_parser(subparsers: Any) -> None:
    """Add ``sandbox`` to ddsync's subcommands (see :mod:`stream.cli.main`)."""
    parser = subparsers.add_parser(
        "sandbox",
        help="serve a local DotDigital emulator",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(parser)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port of r1; r2 and r3 use the next two (0: free ports). Default {DEFAULT_PORT}",
    )
    parser.add_argument(
        "--advertise-host",
        default=None,
        help="host name put into URLs and ApiEndpoint (default: --host, or 127.0.0.1)",
    )
    parser.add_argument("--accounts", type=Path, help="JSON accounts file (see above)")
    parser.add_argument(
        "--ready-file",
        type=Path,
        help='write {"urls": {...}, "discovery_url": ...} here once serving',
    )
    parser.add_argument(
        "--import-delay",
        type=float,
        help="seconds an import stays NotFinished, for every account (default 0.2)",
    )
    parser.add_argument(
        "--no-rate-limits", action="store_true", help="lift every account's rate limits"
    )
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of 500/503 answers")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each call")
    parser.add_argument(
        "--drop-rate", type=float, default=0.0, help="share of calls whose connection is dropped"
    )
    parser.add_argument(
        "--throttle-rate",
        type=float,
        default=0.0,
        help="share of calls answered 429 (Remaining 0, reset in 2 s): a throttling storm",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of fault randomness")
    parser.add_argument(
        "--reset-header",
        choices=["seconds", "epoch"],
        default="seconds",
        help="X-RateLimit-Reset as seconds until the reset (default) or as Unix time",
    )
    parser.set_defaults(handler=handle)


def settings_from_args(args: argparse.Namespace) -> SandboxSettings:
    """Build settings from parsed arguments; ``AccountsError``/``ValueError`` on bad input."""
    accounts: Sequence[SandboxAccount] = (
        load_accounts(args.accounts) if args.accounts is not None else default_accounts()
    )
    overrides: dict[str, Any] = {}
    if args.import_delay is not None:
        overrides["import_delay_seconds"] = args.import_delay
    if args.no_rate_limits:
        overrides["rate_limits_enabled"] = False
    if overrides:
        accounts = [dataclasses.replace(account, **overrides) for account in accounts]
    return SandboxSettings(
        accounts=tuple(accounts),
        host=args.host,
        port=args.port,
        advertised_host=args.advertise_host,
        seed=args.seed,
        reset_header=args.reset_header,
        error_rate=args.error_rate,
        latency_seconds=args.latency,
        drop_rate=args.drop_rate,
        throttle_rate=args.throttle_rate,
        # A long-running sandbox has no reader of its journal beyond recent requests.
        journal_limit=1_000,
    )


def handle(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; ``OK`` on a clean stop, ``USAGE`` on bad input or a port it
    cannot listen on (like ``ddsync run`` on a metrics port it cannot open)."""
    try:
        settings = settings_from_args(args)
    except (AccountsError, ValueError) as exc:
        print(f"ddsync sandbox: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        asyncio.run(serve(settings, args.ready_file))
    except OSError as exc:
        print(f"ddsync sandbox: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.OK


async def serve(settings: SandboxSettings, ready_file: Path | None = None) -> None:
    """Serve ``settings`` until SIGINT or SIGTERM arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with run_sandbox(settings) as sandbox:
            print(banner(sandbox, settings), flush=True)
            if ready_file is not None:
                write_ready_file(ready_file, sandbox)
            try:
                await stop.wait()
            finally:
                if ready_file is not None:
                    _remove_quietly(ready_file)
        log.info("sandbox stopped")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def banner(sandbox: Sandbox, settings: SandboxSettings) -> str:
    """What the sandbox prints on start: URLs and usernames, never a password."""
    lines = ["DotDigital sandbox serving:"]
    lines += [f"  {region}  {url}" for region, url in sandbox.urls.items()]
    lines.append(f"Discovery endpoint (r1): {sandbox.discovery_url}")
    lines.append("Accounts:")
    for account in settings.accounts:
        limits = _limits(account)
        books = ", ".join(str(book.id) for book in account.address_books) or "none"
        lines.append(
            f"  {account.username}  region {account.region}; password: "
            f"{account.password_source}; address books: {books}; {limits}"
        )
    faults = sandbox.faults
    if faults.error_rate or faults.latency_seconds or faults.drop_rate:
        lines.append(
            f"Faults: error rate {faults.error_rate}, latency {faults.latency_seconds}s, "
            f"drop rate {faults.drop_rate}"
        )
    lines.append("Stop with Ctrl-C (SIGINT) or SIGTERM.")
    return "\n".join(lines)


def _limits(account: SandboxAccount) -> str:
    if not account.rate_limits_enabled:
        return "no rate limits"
    if account.rate_limit_scheme == "flat":
        return f"flat {account.flat_per_hour}/hour"
    if account.tier_layout == "shared":
        return f"imports+removals+listing {account.add_per_minute}/min (shared)"
    return f"add {account.add_per_minute}/min, remove {account.remove_per_minute}/min"


def write_ready_file(path: Path, sandbox: Sandbox) -> None:
    """Write the ready file atomically, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".sandbox-ready-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps(sandbox.ready_info()))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_quietly(path: Path) -> None:
    # A stale ready file would tell the next reader that a dead sandbox is serving.
    with contextlib.suppress(OSError):
        os.unlink(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stream.sandbox",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_logging_options(parser)
    configure_parser(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (same options as ``ddsync sandbox``)."""
    return run_command(build_parser(), argv)
