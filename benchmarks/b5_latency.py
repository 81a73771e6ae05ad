"""B5 latency: (a) from a batch's 1000th record produced to its import reaching the sandbox;
(b) from a window's end to its batches reaching the sandbox.

The sandbox (limits off) has no receive timestamp in its journal, and its journal is not served
over HTTP, so arrival is seen by polling ``GET /_sandbox/stats`` every ``POLL`` seconds over one
kept-alive connection: an import counts in ``calls[...]["add"]`` once the sandbox has read,
authenticated and charged it, before its handler runs. The figures are therefore late by up to
one poll interval plus one stats round trip (about 1 ms here).

(a) Windows never close. For each of R books: 999 adds are produced, the harness waits until
ddsync holds them (``ddsync_buffered_records``), then produces the 1000th (linger 0) and times
until the import arrives. (b) 2-second epoch-aligned windows: a quarter of a second into a
window, 10 adds for each of 5 books are produced; once ddsync holds them, the time from the
window's end until all 5 imports arrived (and the first) is taken.
"""

from __future__ import annotations

import math
import time
from typing import Any

from confluent_kafka import Producer

from benchmarks.common import (
    Context,
    Figure,
    Result,
    StatsPoller,
    add_record,
    create_topic,
    ddsync_config,
    free_port,
    log,
    median,
    metric,
    percentile,
    poll_until,
    sandbox_account,
    scrape,
    tier_counts,
    wait_ready,
)
from tests.support.processes import SandboxProcess

PARTITIONS = 6
POLL = 0.002
WINDOW = 2.0
BOOKS_PER_WINDOW = 5
CONTACTS_PER_BOOK = 10
FULL_BOOKS = range(1, 101)
WINDOW_BOOKS = range(1001, 1201)


def _adds(stats: StatsPoller, username: str) -> int:
    return tier_counts(stats.get(), "calls", username)["add"]


def _wait_buffered(port: int, predicate: Any, timeout: float = 60) -> bool:
    return poll_until(
        lambda: predicate(metric(scrape(port), "ddsync_buffered_records")), timeout, 0.02
    )


def _wait_adds(stats: StatsPoller, username: str, count: int, timeout: float) -> float | None:
    """The time.time() at which the sandbox's add calls reached ``count`` (None on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _adds(stats, username) >= count:
            return time.time()
        time.sleep(POLL)
    return None


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def run(ctx: Context) -> Result:
    result = Result()
    reps: int = ctx.option("b5_reps")
    windows: int = ctx.option("b5_windows")
    work = ctx.subdir("b5")
    books = [*FULL_BOOKS[:reps], *WINDOW_BOOKS[: windows * BOOKS_PER_WINDOW]]
    account = sandbox_account("b5@apiconnector.com", books)
    user = account.username
    sandbox = SandboxProcess(work, [account], "--no-rate-limits", "--import-delay", "0.05")
    stats = StatsPoller(sandbox)
    producer = Producer({"bootstrap.servers": ctx.bootstrap, "linger.ms": 0})
    processes = []
    try:
        # -- (a) the 1000th record ---------------------------------------------------------
        topic = create_topic(ctx.bootstrap, PARTITIONS, "b5a")
        port = free_port()
        config, _ = ddsync_config(
            ctx, work, topic=topic, account=account, sandbox=sandbox, metrics_port=port,
            window_seconds=1e9, requests_per_minute=1_000_000,
        )  # fmt: skip
        ddsync = ctx.start_ddsync(config, work / "ddsync-a.log", "main", account)
        processes.append(ddsync)
        wait_ready(ddsync, port)
        full: list[float] = []
        for book in FULL_BOOKS[:reps]:
            if not _wait_buffered(port, lambda n: n == 0):
                result.problem(f"(a) book {book}: the previous batch never became final")
                break
            records = [add_record(book, f"b5-{book}-{i}@example.com") for i in range(1000)]
            for record in records[:999]:
                producer.produce(topic, key=record.key, value=record.value)
            producer.flush(30)
            if not _wait_buffered(port, lambda n: n >= 999):
                result.problem(f"(a) book {book}: ddsync did not read the 999 records")
                break
            before = _adds(stats, user)
            sent = time.time()
            producer.produce(topic, key=records[999].key, value=records[999].value)
            producer.poll(0)
            arrived = _wait_adds(stats, user, before + 1, 30)
            producer.flush(30)
            if arrived is None:
                result.problem(f"(a) book {book}: the import never arrived")
                break
            full.append(arrived - sent)
        ddsync.stop(60)
        for book in FULL_BOOKS[: len(full)]:
            if len(sandbox.members(user, book)) != 1000:
                result.problem(f"(a) book {book} does not hold its 1000 contacts")
        result.raw["a_seconds"] = full

        # -- (b) a window's end --------------------------------------------------------------
        topic = create_topic(ctx.bootstrap, PARTITIONS, "b5b")
        port = free_port()
        config, _ = ddsync_config(
            ctx, work, topic=topic, account=account, sandbox=sandbox, metrics_port=port,
            window_seconds=WINDOW, requests_per_minute=1_000_000,
        )  # fmt: skip
        ddsync = ctx.start_ddsync(config, work / "ddsync-b.log", "main", account)
        processes.append(ddsync)
        wait_ready(ddsync, port)
        ends: list[dict[str, float]] = []
        expected: dict[int, set[str]] = {}
        window_books = iter(WINDOW_BOOKS)
        for _ in range(windows):
            if not _wait_buffered(port, lambda n: n == 0):
                result.problem("(b) a window's batches never became final")
                break
            start = math.floor(time.time() / WINDOW) * WINDOW + WINDOW
            time.sleep(max(0.0, start + 0.25 - time.time()))
            chosen = [next(window_books) for _ in range(BOOKS_PER_WINDOW)]
            for book in chosen:
                emails = {f"b5w-{book}-{i}@example.com" for i in range(CONTACTS_PER_BOOK)}
                expected[book] = emails
                for email in sorted(emails):
                    record = add_record(book, email)
                    producer.produce(topic, key=record.key, value=record.value)
            producer.flush(30)
            total = BOOKS_PER_WINDOW * CONTACTS_PER_BOOK
            before = _adds(stats, user)
            if not _wait_buffered(port, lambda n, total=total: n >= total, WINDOW):
                result.problem("(b) ddsync did not read a window's records within it")
                continue
            end = start + WINDOW
            if time.time() >= end:
                result.problem("(b) the records were read after their window closed")
                continue
            first = _wait_adds(stats, user, before + 1, 30)
            last = _wait_adds(stats, user, before + BOOKS_PER_WINDOW, 30)
            if first is None or last is None:
                result.problem("(b) a window's imports never arrived")
                break
            ends.append({"window_end": end, "first": first - end, "all": last - end})
        ddsync.stop(60)
        poll_until(lambda: all(sandbox.members(user, b) == e for b, e in expected.items()), 30, 0.5)
        for book, emails in expected.items():
            if sandbox.members(user, book) != emails:
                result.problem(f"(b) book {book} is wrong")
        result.raw["b_windows"] = ends
        result.raw["poll_seconds"] = POLL

        valid = result.valid
        a_median, a_p90 = median(full), percentile(full, 90)
        result.add(
            Figure(
                "b5_full_median", "B5a 1000th record to import, median",
                round(a_median * 1000, 1) if a_median is not None else None, "ms",
                target=50.0, goal="max", valid=valid and bool(full), note=f"{len(full)} batches",
            )
        )  # fmt: skip
        result.add(
            Figure(
                "b5_full_p90", "B5a 1000th record to import, p90",
                round(a_p90 * 1000, 1) if a_p90 is not None else None, "ms",
                valid=valid and bool(full),
            )
        )  # fmt: skip
        alls = [e["all"] for e in ends]
        b_median = median(alls)
        first_median = median(e["first"] for e in ends)
        result.add(
            Figure(
                "b5_window_median", "B5b window end to its batches sent, median",
                round(b_median, 3) if b_median is not None else None, "s",
                target=1.0, goal="max", valid=valid and bool(ends),
                note=f"{len(ends)} windows of {BOOKS_PER_WINDOW} batches; first batch "
                f"{first_median if first_median is None else round(first_median, 3)} s",
            )
        )  # fmt: skip
        log(
            f"B5: 1000th record to import {_ms(a_median)} median ({_ms(a_p90)} p90); "
            f"window end to batches {_ms(b_median)} median"
        )
        return result
    finally:
        for process in processes:
            if process.alive():
                process.kill()
        producer.flush(10)
        stats.close()
        sandbox.stop()
