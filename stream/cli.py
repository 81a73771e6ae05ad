"""The ``ddsync`` command line.

Each subcommand lives in its own module, which exposes ``add_parser(subparsers)``; the parser it
adds sets ``handler`` to a function ``(argparse.Namespace) -> int`` (the exit status). Errors a
user can fix are printed as one line on stderr, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Modules that add subcommands, in the order ``ddsync --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "stream.commands.run",
    "stream.commands.demo",
    "stream.commands.replay",
    "stream.dotdigital.commands",
    "stream.dotdigital.sandbox.command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddsync",
        description="Keeps DotDigital address books in step with audience and journey membership.",
    )
    add_log_level(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, log to stderr at ``--log-level``, and run the chosen command's handler
    (set by the subcommand's parser as ``handler``); returns its exit status."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    status: int = args.handler(args)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)
