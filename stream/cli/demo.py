"""``ddsync demo --config FILE``: a realistic stream to watch ddsync work (used by ``make run``).

It creates the configured topics (if missing) and a few address books per connector, produces
a stream of transitions across them (entries, exits, some contacts entering and leaving within
one window, a few bad records), then every few seconds prints each address book's size in
DotDigital and what reached the dead-letter topic, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from stream.cli.address_books import exit_code_for
from stream.cli.common import load_or_exit
from stream.core.deadletter_format import H_REASON
from stream.demo.generator import Target, generate
from stream.dotdigital import DotDigitalClient, DotDigitalError
from stream.exitcodes import ExitCode
from stream.kafka.client_config import admin_config, consumer_config, producer_config
from stream.pipeline.clients import client_config
from stream.settings import Settings


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "demo", help="produce a demo stream and watch address books fill (for make run)"
    )
    parser.add_argument("--config", type=Path, required=True, help="the TOML configuration file")
    parser.add_argument("--address-books", type=int, default=4, help="per connector")
    parser.add_argument("--count", type=int, default=5000, help="records to produce")
    parser.add_argument("--rate", type=float, default=250.0, help="records a second")
    parser.add_argument("--bad-share", type=float, default=0.03, help="share of bad records")
    parser.add_argument(
        "--duplicate-share", type=float, default=0.02, help="share of records sent twice"
    )
    parser.add_argument("--partitions", type=int, default=6, help="of topics it creates")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between reports")
    parser.add_argument("--watch-seconds", type=float, default=0.0, help="0: until Ctrl-C")
    parser.add_argument(
        "--setup-only", action="store_true", help="create topics and address books, then exit"
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    try:
        create_topics(settings, args.partitions)
        targets = asyncio.run(create_address_books(settings, args.address_books))
    except DotDigitalError as exc:
        print(f"ddsync demo: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KafkaException as exc:
        print(f"ddsync demo: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    if args.setup_only:
        return ExitCode.OK
    with contextlib.suppress(KeyboardInterrupt):
        produce(settings, targets, args.count, args.rate, args.bad_share, args.duplicate_share)
        watch(settings, targets, args.every, args.watch_seconds)
    return ExitCode.OK


def create_topics(settings: Settings, partitions: int) -> None:
    kafka = settings.kafka
    admin = AdminClient(admin_config(kafka))
    existing = set(admin.list_topics(timeout=30).topics)
    # The source topics only: ddsync creates its dead-letter topic itself.
    new = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in kafka.topics]
    missing = [t for t in new if t.topic not in existing]
    for topic, future in admin.create_topics(missing).items() if missing else ():
        future.result(timeout=60)
        print(f"created topic {topic} ({partitions} partitions)")


async def create_address_books(settings: Settings, per_connector: int) -> list[Target]:
    targets = []
    for name, connector in settings.connectors.items():
        async with await DotDigitalClient.connect(client_config(connector)) as client:
            print(f"connector {name}: {connector.username} at {client.endpoint}")
            for n in range(1, per_connector + 1):
                book = await client.create_address_book(f"ddsync demo {n}", exist_ok=True)
                targets.append(Target(name, book.id))
    return targets


def produce(
    settings: Settings,
    targets: list[Target],
    count: int,
    rate: float,
    bad_share: float,
    duplicate_share: float,
) -> None:
    producer = Producer(producer_config(settings.kafka))
    topics = settings.kafka.topics
    started = time.monotonic()
    bad: Counter[str] = Counter()
    for n, record in enumerate(
        generate(targets, count, bad_share=bad_share, duplicate_share=duplicate_share)
    ):
        # One profile's records stay in one topic (and partition), so they stay in order.
        topic = topics[zlib.crc32(record.key) % len(topics)]
        producer.produce(topic, key=record.key, value=record.value)
        if record.bad:
            bad[record.bad] += 1
        if n % 100 == 0:
            producer.poll(0)
            # Pace the stream, so windows and counts have something to show.
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush(30)
    print(
        f"produced {count} transitions to {', '.join(topics)} in "
        f"{time.monotonic() - started:.1f} s; bad on purpose: {dict(bad) or 'none'}"
    )


def watch(settings: Settings, targets: list[Target], every: float, seconds: float) -> None:
    kafka = settings.kafka
    consumer = Consumer(consumer_config(kafka, group_id=f"ddsync-demo-watch-{time.time_ns()}"))
    consumer.subscribe([kafka.dead_letter_topic])
    reasons: Counter[str] = Counter()
    until = time.monotonic() + seconds if seconds else float("inf")
    try:
        while time.monotonic() < until:
            report_at = time.monotonic() + every
            while time.monotonic() < report_at:
                message = consumer.poll(0.5)
                if message is None or message.error() is not None:
                    continue
                headers = dict(message.headers() or [])
                reason = headers.get(H_REASON) or b"?"
                reasons[reason.decode() if isinstance(reason, bytes) else reason] += 1
            sizes = asyncio.run(address_book_sizes(settings, targets))
            books = "  ".join(f"{t.connector_id}/{t.address_book_id}={n}" for t, n in sizes.items())
            print(f"[demo] address books: {books}")
            print(f"[demo] dead-letter topic: {dict(reasons) or 'empty'}")
    finally:
        consumer.close()


async def address_book_sizes(settings: Settings, targets: list[Target]) -> dict[Target, int]:
    sizes: dict[Target, int] = {}
    for name, connector in settings.connectors.items():
        async with await DotDigitalClient.connect(client_config(connector)) as client:
            books = {b.id: b.contacts for b in await client.list_address_books()}
        for target in targets:
            if target.connector_id == name:
                sizes[target] = books.get(target.address_book_id, 0)
    return sizes
