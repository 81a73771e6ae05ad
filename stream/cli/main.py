"""The ``ddsync`` command line.

Each subcommand lives in its own module, which exposes ``add_parser(subparsers)``; the parser it
adds sets ``handler`` to a function ``(argparse.Namespace) -> int`` (the exit status, see
:mod:`stream.exitcodes`). Errors a user can fix are printed as one line on stderr, never as a
traceback.

``--log-level`` and ``--log-format`` are accepted before and after any subcommand name (the
last one given wins), else taken from ``DDSYNC_LOG_LEVEL`` / ``DDSYNC_LOG_FORMAT``, else INFO
and text.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence

from stream import __version__
from stream.exitcodes import ExitCode
from stream.logs import LOG_FORMATS, LOG_LEVELS, LogFormat, configure_logging

# Modules that add subcommands, in the order ``ddsync --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "stream.cli.run",
    "stream.cli.demo",
    "stream.cli.replay",
    "stream.cli.reconcile",
    "stream.cli.address_books",
    "stream.cli.sandbox",
)

LOG_LEVEL_ENV = "DDSYNC_LOG_LEVEL"
LOG_FORMAT_ENV = "DDSYNC_LOG_FORMAT"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddsync",
        description="Keeps DotDigital address books in step with audience and journey membership.",
    )
    parser.add_argument("--version", action="version", version=f"ddsync {__version__}")
    add_logging_options(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    for subcommand in _subcommands(parser):
        add_logging_options(subcommand)
    return parser


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-level`` and ``--log-format`` to ``parser``. Their default is *absent*
    (``argparse.SUPPRESS``), so a subcommand's parser does not override a value given before
    the subcommand's name; :func:`logging_choice` fills in the environment and the defaults."""
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help=f"least severe level logged (default: ${LOG_LEVEL_ENV}, else INFO)",
    )
    parser.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        default=argparse.SUPPRESS,
        help=f"log lines as text or one JSON object each (default: ${LOG_FORMAT_ENV}, else text)",
    )


def logging_choice(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, LogFormat]:
    """The log level and format: the flag, else the environment variable, else INFO and text.
    ``ValueError`` (naming the variable) when the environment holds neither choice."""
    level = getattr(args, "log_level", None)
    if level is None:
        level = environ.get(LOG_LEVEL_ENV, "").strip().upper() or "INFO"
        if level not in LOG_LEVELS:
            raise ValueError(f"{LOG_LEVEL_ENV} must be one of {', '.join(LOG_LEVELS)}")
    log_format = getattr(args, "log_format", None)
    if log_format is None:
        log_format = environ.get(LOG_FORMAT_ENV, "").strip().lower() or "text"
        if log_format not in LOG_FORMATS:
            raise ValueError(f"{LOG_FORMAT_ENV} must be one of {', '.join(LOG_FORMATS)}")
    chosen: LogFormat = "json" if log_format == "json" else "text"
    return level, chosen


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, log to stderr as :func:`logging_choice` says, and run the chosen
    command's handler (set by the subcommand's parser as ``handler``); returns its exit status.
    A bad logging variable in the environment is a usage error, like a bad flag."""
    args = parser.parse_args(argv)
    try:
        level, log_format = logging_choice(args, os.environ)
    except ValueError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    configure_logging(level, log_format, sys.stderr)
    status: int = args.handler(args)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every subcommand's parser under ``parser``, nested ones (``address-books list``) too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for subcommand in action.choices.values():
                if id(subcommand) not in seen:
                    seen.add(id(subcommand))
                    yield subcommand
                    yield from _subcommands(subcommand)
