"""``ddsync reconcile --config FILE``: each address book against what the outcomes topic says it
should hold; ``--repair`` makes it so. See :mod:`stream.reconcile` and docs/reconcile.md.

Exit status (:mod:`stream.exitcodes`): 0 every book in step (after the repair, with
``--repair``); 1 drift found and not repaired, or a repair failed; 2 a bad configuration or
argument; 3 Kafka or DotDigital unreachable. The report goes to stdout (with ``--json`` one JSON
object and nothing else), progress and logs to stderr. The text report names at most
:data:`SAMPLES` contacts per kind; ``--json`` lists them all (email addresses: treat the output
as the source topic is treated).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaException
from prometheus_client import write_to_textfile

from stream.cli.common import load_or_exit
from stream.cli.run import check_kafka_settings
from stream.clock import SystemClock
from stream.dotdigital import DotDigitalError
from stream.exitcodes import ExitCode
from stream.kafka.outcomes import OutcomesTopicError
from stream.observability.metrics import ReconcileMetrics
from stream.progress import ProgressReporter
from stream.reconcile.runner import BookReport, ReconcileOptions, ReconcileReport, reconcile

SAMPLES = 10


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "reconcile",
        help="compare address books with the outcomes topic; --repair fixes the drift",
        description="Read the outcomes topic to its end (what each address book should hold), "
        "page each book's members from DotDigital, and report per book the contacts missing "
        "(expected, not in the book), unexpected (in the book although ddsync's last outcome "
        "removed them) and unmanaged (in the book, never seen by ddsync). --repair imports "
        "the missing and removes the unexpected, recording what it did on the outcomes topic.",
    )
    parser.add_argument("--config", type=Path, required=True, help="the TOML configuration file")
    parser.add_argument("--connector", action="append", metavar="C", help="only this connector")
    parser.add_argument(
        "--address-book", action="append", type=int, metavar="N", help="only this address book id"
    )
    parser.add_argument(
        "--repair", action="store_true", help="import the missing, remove the unexpected"
    )
    parser.add_argument(
        "--include-unmanaged",
        action="store_true",
        help="with --repair, also remove the contacts ddsync never saw in the book",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as one JSON object on stdout"
    )
    parser.add_argument(
        "--metrics-file",
        type=Path,
        metavar="F",
        help="also write the drift as Prometheus text (a node-exporter textfile collector's "
        "directory, for the DdsyncAddressBookDrift alert)",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    problem = check_kafka_settings(settings)
    if problem is not None:
        print(f"ddsync: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    unknown = sorted(set(args.connector or ()) - set(settings.connectors))
    if unknown:
        print(f"ddsync: no connector {unknown[0]!r} in {args.config}", file=sys.stderr)
        return ExitCode.USAGE
    if args.include_unmanaged and not args.repair:
        print("ddsync: --include-unmanaged only means something with --repair", file=sys.stderr)
        return ExitCode.USAGE
    options = ReconcileOptions(
        connectors=frozenset(args.connector or ()),
        address_books=frozenset(args.address_book or ()),
        repair=args.repair,
        include_unmanaged=args.include_unmanaged,
    )
    progress = ProgressReporter(
        sys.stderr, SystemClock(), tty=sys.stderr.isatty(), label="reconcile"
    )
    try:
        report = asyncio.run(reconcile(settings, options, on_progress=progress.update))
    except OutcomesTopicError as exc:
        print(f"ddsync reconcile: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except KafkaException as exc:
        print(f"ddsync reconcile: Kafka: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    except DotDigitalError as exc:
        print(f"ddsync reconcile: DotDigital: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    finally:
        progress.finish()
    if args.json:
        sys.stdout.write(orjson.dumps(report_json(report)).decode() + "\n")
    else:
        for line in format_report(report):
            print(line)
    if args.metrics_file is not None:
        write_metrics(report, args.metrics_file)
    return ExitCode.OK if report.in_step else ExitCode.FAILED


def format_report(report: ReconcileReport) -> list[str]:
    lines = [f"outcomes read: {report.outcomes_read} ({report.malformed_outcomes} malformed)"]
    for book in report.books:
        drift = book.drift
        connector, book_id = drift.book
        state = "in step" if drift.in_step else "DRIFT"
        lines.append(
            f"{connector}/{book_id}: {state}{' (shadow connector)' if book.shadow else ''}: "
            f"{drift.members} members, {drift.expected} expected; missing "
            f"{len(drift.missing)}, unexpected {len(drift.unexpected)}, unmanaged "
            f"{len(drift.unmanaged)}, held in the dead-letter topic {len(drift.held)}; "
            f"{book.api_calls} API calls in {book.seconds:.1f} s"
        )
        for kind, emails in (
            ("missing", drift.missing),
            ("unexpected", drift.unexpected),
            ("unmanaged", drift.unmanaged),
        ):
            if emails:
                shown = sorted(emails)[:SAMPLES]
                more = f" and {len(emails) - len(shown)} more" if len(emails) > len(shown) else ""
                lines.append(f"  {kind}: {', '.join(shown)}{more}")
        if report.repaired and not book.shadow:
            lines.append(
                f"  repaired: +{book.repaired_added} -{book.repaired_removed}"
                + "".join(f"; {failure}" for failure in book.repair_failures)
            )
    lines.append("in step" if report.in_step else "drift found" + ("" if report.repaired else
                 "; run with --repair to fix it"))  # fmt: skip
    return lines


def report_json(report: ReconcileReport) -> dict[str, Any]:
    return {
        "in_step": report.in_step,
        "outcomes_read": report.outcomes_read,
        "malformed_outcomes": report.malformed_outcomes,
        "repaired": report.repaired,
        "books": [_book_json(book) for book in report.books],
    }


def _book_json(book: BookReport) -> dict[str, Any]:
    drift = book.drift
    return {
        "connector": drift.book[0],
        "address_book_id": drift.book[1],
        "shadow": book.shadow,
        "in_step": drift.in_step,
        "members": drift.members,
        "expected": drift.expected,
        "missing": sorted(drift.missing),
        "unexpected": sorted(drift.unexpected),
        "unmanaged": sorted(drift.unmanaged),
        "held": len(drift.held),
        "repaired_added": book.repaired_added,
        "repaired_removed": book.repaired_removed,
        "repair_failures": book.repair_failures,
        "api_calls": book.api_calls,
        "seconds": round(book.seconds, 3),
    }


def write_metrics(report: ReconcileReport, path: Path) -> None:
    metrics = ReconcileMetrics()
    for book in report.books:
        connector, book_id = book.drift.book
        repaired = report.repaired and book.in_step_now
        counts = {
            "missing": 0 if repaired else len(book.drift.missing),
            "unexpected": 0 if repaired else len(book.drift.unexpected),
            "unmanaged": len(book.drift.unmanaged),
        }
        for kind, count in counts.items():
            metrics.drift.labels(connector, str(book_id), kind).set(count)
    metrics.finished.set(time.time())
    write_to_textfile(str(path), metrics.registry)
