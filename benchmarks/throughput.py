"""End-to-end throughput and memory of ddsync, as a real process, over a backlog.

A figure for notes and the README, not a test: nothing here passes or fails. It produces N
transitions over B address books on 6 partitions, starts the sandbox (rate limits off) and
ddsync, and measures the time until the committed offsets reach the end offsets, plus ddsync's
peak resident memory (sampled from /proc). Then it checks the result is exact, so a fast wrong
answer cannot pass for a figure.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m benchmarks.throughput --records 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from stream.demo import Target, realistic
from tests.support.processes import (
    Account,
    DdsyncProcess,
    SandboxProcess,
    committed_and_end,
    expected_membership,
    password_env,
    produce,
    write_config,
)

PARTITIONS = 6


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--books", type=int, default=200)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--max-buffered", type=int, default=50_000)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("set KAFKA_BOOTSTRAP_SERVERS (make kafka-up prints one)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ddsync-bench-"))
    books = tuple(range(1, args.books + 1))
    account = Account("bench@apiconnector.com", "r1", books)
    topic, dlq = f"bench-{uuid.uuid4().hex[:8]}", f"bench-dlq-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # The dead-letter topic is ddsync's to create, as in production.
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(60)
    targets = [Target("main", b) for b in books]
    records = list(realistic(targets, args.records, profiles=20_000))
    began = time.monotonic()
    produce(bootstrap, topic, records)
    print(f"produced {len(records)} records in {time.monotonic() - began:.1f} s")

    sandbox = SandboxProcess(work, [account], "--no-rate-limits", "--import-delay", "0.05")
    group = f"bench-{uuid.uuid4().hex[:8]}"
    config = write_config(
        work / "ddsync.toml",
        bootstrap=bootstrap,
        topics=[topic],
        dead_letter_topic=dlq,
        group=group,
        connectors={"main": (account.username, sandbox.discovery_url)},
        window_seconds=args.window,
        requests_per_minute=1_000_000,
        max_buffered_records=args.max_buffered,
    )
    started = time.monotonic()
    ddsync = DdsyncProcess(config, work / "ddsync.log", {password_env("main"): account.password})
    peak = 0.0
    try:
        while True:
            peak = max(peak, rss_mib(ddsync.process.pid))
            committed, ends = committed_and_end(bootstrap, group, topic, PARTITIONS)
            if committed == ends:
                break
            if not ddsync.alive():
                print(ddsync.output()[-3000:], file=sys.stderr)
                return 1
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        assert ddsync.terminate() == 0
        expected = expected_membership(records)
        wrong = [b for b in books if sandbox.members(account.username, b) != expected[("main", b)]]
        print(
            f"{len(records)} records, {args.books} address books, {PARTITIONS} partitions, "
            f"window {args.window:g} s: {elapsed:.1f} s from start to all committed = "
            f"{len(records) / elapsed:,.0f} records/s; peak RSS {peak:.0f} MiB; "
            f"address books wrong: {len(wrong)}"
        )
        return 0 if not wrong else 1
    finally:
        if ddsync.alive():
            ddsync.kill()
        sandbox.stop()


if __name__ == "__main__":
    raise SystemExit(main())
