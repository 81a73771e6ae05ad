"""``ddsync replay --config FILE``: re-produce dead-letter records to their source topics.

Exit status (:mod:`stream.exitcodes`): 0 when the replay reached the end offsets or ``--limit``;
1 when it stopped on an error (printed as one line; what was acknowledged is committed, so a
rerun resumes); 2 for a bad configuration, setting or argument; 3 when Kafka could not be
reached; 128 + the signal number when SIGINT/SIGTERM interrupted it (after committing what was
acknowledged). The report goes to stdout (with ``--json`` one JSON object and nothing else),
progress and logs to stderr; none holds record values, error messages or secrets. See
``docs/replay.md``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import orjson
from confluent_kafka import KafkaError, KafkaException

from stream.cli.common import load_or_exit
from stream.cli.run import check_kafka_settings
from stream.clock import SystemClock
from stream.core.reasons import Reason
from stream.exitcodes import ExitCode, interrupted
from stream.progress import ProgressReporter
from stream.replay.decide import ReplayFilter
from stream.replay.report import (
    ReplaySummary,
    StopReason,
    format_summary,
    summary_json,
)
from stream.replay.runner import Replayer, ReplayError, ReplayOptions, replay_group, run_replay
from stream.settings import Settings


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="re-produce dead-letter records to their source topics",
        description="Re-produce chosen dead-letter records, key and value unchanged, to their "
        "source topics. Commits as it goes, so an interrupted replay resumes; stops at the end "
        "offsets it saw when it started; refuses records replayed dead_letter.max_replays times; "
        "skips records a newer transition of the same contact and address book follows in "
        "their source partition (superseded), or whose source partition cannot show it "
        "(unverifiable). "
        "Repeat a filter to accept several values; different filters must all match.",
    )
    parser.add_argument("--config", type=Path, required=True, help="the TOML configuration file")
    parser.add_argument(
        "--reason",
        action="append",
        choices=[r.value for r in Reason],
        metavar="REASON",
        help=f"only records dead-lettered for this reason ({', '.join(r.value for r in Reason)})",
    )
    parser.add_argument("--connector", action="append", metavar="C", help="only this connector")
    parser.add_argument(
        "--address-book", action="append", type=int, metavar="N", help="only this address book id"
    )
    parser.add_argument(
        "--source-topic", action="append", metavar="T", help="only records from this topic"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="report what would be replayed; produce nothing, commit nothing",
    )
    parser.add_argument(
        "--limit", type=_positive_int, metavar="N", help="stop after replaying N records"
    )
    parser.add_argument(
        "--replay-unverifiable",
        action="store_true",
        help="also replay records whose source partition cannot be read after them (records "
        "deleted or compacted, no such partition): a newer transition may be undone",
    )
    parser.add_argument(
        "--group",
        metavar="G",
        help="the replay's consumer group (default: <kafka.group_id>.replay)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on stdout"
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    if args.group is not None and not args.group.strip():
        print("ddsync: --group must not be empty", file=sys.stderr)
        return ExitCode.USAGE
    problem = check_kafka_settings(settings)
    if problem is not None:
        print(f"ddsync: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    return replay(settings, build_options(settings, args), as_json=args.json)


def build_options(settings: Settings, args: argparse.Namespace) -> ReplayOptions:
    """The replay the parsed arguments ask for; repeated filter flags accept several values."""
    return ReplayOptions(
        group=replay_group(settings, args.group),
        record_filter=ReplayFilter(
            reasons=frozenset(Reason(r) for r in args.reason or ()),
            connector_ids=frozenset(args.connector or ()),
            address_book_ids=frozenset(args.address_book or ()),
            source_topics=frozenset(args.source_topic or ()),
        ),
        dry_run=args.dry_run,
        limit=args.limit,
        replay_unverifiable=args.replay_unverifiable,
    )


def replay(
    settings: Settings,
    options: ReplayOptions,
    *,
    as_json: bool = False,
    progress_stream: TextIO | None = None,
) -> int:
    """Run the replay, show its progress on ``progress_stream`` (stderr) and print its report
    (text, or one JSON object with ``as_json``) on stdout; returns the exit status."""
    signalled: list[int] = []
    shown_on = progress_stream or sys.stderr
    progress = ProgressReporter(shown_on, SystemClock(), tty=shown_on.isatty())

    def install(replayer: Replayer) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            signalled.append(signum)
            replayer.stop()

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
        print(
            f"{'dry run of replay' if options.dry_run else 'replaying'} "
            f"{settings.kafka.dead_letter_topic} as group {options.group} "
            f"({options.record_filter.describe()}; max_replays "
            f"{settings.dead_letter.max_replays}): {replayer.backlog} record(s) to look at",
            # --json keeps stdout for the one object.
            file=shown_on if as_json else sys.stdout,
            flush=True,
        )

    try:
        summary = run_replay(settings, options, on_open=install, on_progress=progress.update)
    except ReplayError as exc:
        progress.finish()
        _report(exc.summary, as_json, str(exc))
        print(f"ddsync replay: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except KafkaException as exc:
        progress.finish()
        # What the cluster said when it could not be reached, or refused us (authorization).
        error = exc.args[0] if exc.args else None
        text = error.str() if isinstance(error, KafkaError) else str(exc)
        print(f"ddsync replay: Kafka: {text}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    except KeyboardInterrupt:
        # Ctrl-C while connecting, before the handler that stops cleanly was installed.
        print("ddsync replay: interrupted before it started; nothing replayed", file=sys.stderr)
        return interrupted(signal.SIGINT)
    finally:
        progress.finish()
    _report(summary, as_json)
    if summary.stopped is StopReason.INTERRUPTED:
        return interrupted(signalled[0] if signalled else signal.SIGINT)
    return ExitCode.OK


def _report(summary: ReplaySummary, as_json: bool, error: str | None = None) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(summary_json(summary, error)).decode() + "\n")
    else:
        for line in format_summary(summary):
            print(line)
    sys.stdout.flush()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
