"""``ddsync run --config FILE``: consume and sync until SIGTERM or SIGINT.

The first signal starts the shutdown and its bound (``batching.shutdown_timeout_seconds``,
:mod:`stream.pipeline.shutdown`):
exit 0 after the final commit, or ``ABANDONED`` (3) when the broker did
not take the final commit, the group leave, or the last dead letters and outcomes within the
bound, or when anything else still blocked the process at it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer

from stream.cli.common import load_or_exit
from stream.exitcodes import ExitCode
from stream.kafka.client_config import consumer_config, producer_config
from stream.kafka.topics import TopicError, ensure_topics
from stream.observability.health import Health
from stream.observability.http_server import HttpServer
from stream.pipeline.processor import Pipeline
from stream.pipeline.shutdown import ABANDONED, Watchdog
from stream.settings import Settings

log = logging.getLogger(__name__)

# The pipeline keeps every open record (up to max_buffered_records, about ten objects each)
# alive for up to a window. With CPython's default thresholds (a young collection every 700
# allocations, older generations every 10 of those) the collector kept traversing them and cost
# about a third of the per-record CPU. Reference counting frees what ddsync drops; the collector
# is only for cycles, which are rare here, so it may run far less often.
GC_THRESHOLDS = (50_000, 20, 100)


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="consume transitions and keep DotDigital address books in step",
        description="Consume transitions and keep DotDigital address books in step. "
        "SIGTERM or SIGINT flushes what is buffered, commits and exits 0, within "
        "batching.shutdown_timeout_seconds (else exits 3, committing only what is final).",
    )
    parser.add_argument("--config", type=Path, required=True, help="the TOML configuration file")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    return asyncio.run(run(settings))


def check_kafka_settings(settings: Settings) -> str | None:
    """librdkafka's verdict on the consumer and producer settings, before anything starts."""
    try:
        # Building a client validates its settings; it connects to nothing until used.
        Consumer(consumer_config(settings.kafka)).close()
    except KafkaException as exc:
        return f"kafka.consumer: {exc.args[0].str()}"
    try:
        Producer(producer_config(settings.kafka))
    except KafkaException as exc:
        return f"kafka.producer: {exc.args[0].str()}"
    return None


def exit_now(status: int) -> None:
    """End the process at once: a thread blocked on an unreachable broker would hold up the
    interpreter's own exit."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


async def run(settings: Settings, *, hard_exit: Callable[[int], object] = exit_now) -> int:
    problem = check_kafka_settings(settings)
    if problem is not None:
        print(f"ddsync: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        for topic in await asyncio.to_thread(ensure_topics, settings.kafka):
            if topic.created:
                log.info(
                    "created %s topic %s (%d partitions)",
                    "dead-letter" if topic.name == settings.kafka.dead_letter_topic else "outcomes",
                    topic.name,
                    topic.partitions,
                )
    except TopicError as exc:
        print(f"ddsync: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE if exc.unreachable else ExitCode.USAGE
    # What start-up built (modules, settings) lives as long as the process: out of every
    # collection from now on.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    pipeline = Pipeline(settings)
    server: HttpServer | None = None
    if settings.metrics.enabled:
        metrics = settings.metrics
        health = Health.of(pipeline, metrics.liveness_timeout_seconds)
        server = HttpServer(pipeline.metrics.registry, health)
        try:
            server.start(metrics.host, metrics.port)
        except OSError as exc:
            print(
                f"ddsync: metrics.port {metrics.port} cannot be opened: {exc.strerror}",
                file=sys.stderr,
            )
            return ExitCode.USAGE
        log.info(
            "metrics on http://%s:%d/metrics, health on /healthz and /ready",
            metrics.host,
            metrics.port,
        )
    watchdog = Watchdog(settings.batching.shutdown_timeout_seconds, hard_exit)

    def shut_down() -> None:
        watchdog.arm()
        pipeline.stop()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, shut_down)
    try:
        await pipeline.run()
    finally:
        if server is not None:
            server.stop()
    if pipeline.abandoned or pipeline.unacknowledged:
        # The broker did not take everything: a dependency out of reach (exit 3).
        hard_exit(ABANDONED)
        return ABANDONED
    return ExitCode.OK
