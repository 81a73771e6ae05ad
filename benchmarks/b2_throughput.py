"""B2 throughput: ddsync against a plain consumer over the same topic, records/s and CPU/record.

N realistic transitions (3% bad records, 2% duplicates;
:func:`stream.demo.generator.realistic`) over B address books on 6 partitions are produced once.
The baseline (``benchmarks.baseline``, its own process and group) reads the whole topic
decoding each value with orjson; then ddsync (its own group) syncs it against the sandbox with
its limits off. Both are timed from their first record to the end (baseline: last record read;
ddsync: every offset committed), and their CPU (user + system of that process) over the same
span. ddsync's address books are then checked exact.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import orjson

from benchmarks.common import (
    Context,
    Figure,
    OffsetWatcher,
    Result,
    cpu_seconds,
    create_topic,
    ddsync_config,
    free_port,
    log,
    metric,
    rss_bytes,
    sandbox_account,
    scrape,
    unique,
)
from stream.demo.generator import Target, realistic
from tests.support.processes import SandboxProcess, expected_membership, produce

PARTITIONS = 6
WINDOW_SECONDS = 5.0


def prepare(ctx: Context) -> dict[str, Any]:
    """The topic, produced once for every run of B2 in this invocation."""
    records: int = ctx.option("records")
    books: int = ctx.option("b2_books")
    key = f"b2-{records}-{books}"
    if key in ctx.cache:
        prepared: dict[str, Any] = ctx.cache[key]
        return prepared
    topic = create_topic(ctx.bootstrap, PARTITIONS, "b2")
    targets = [Target("main", b) for b in range(1, books + 1)]
    began = time.monotonic()
    stream = list(realistic(targets, records, profiles=20_000))
    generated = time.monotonic() - began
    began = time.monotonic()
    produce(ctx.bootstrap, topic, stream)
    produced = time.monotonic() - began
    expected = expected_membership(stream)
    log(f"B2: {len(stream)} records generated in {generated:.1f} s, produced in {produced:.1f} s")
    prepared = {
        "topic": topic,
        "records": len(stream),
        "books": books,
        "expected": expected,
        "generate_seconds": round(generated, 2),
        "produce_seconds": round(produced, 2),
    }
    ctx.cache[key] = prepared
    return prepared


def run_baseline(ctx: Context, topic: str, records: int) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "benchmarks.baseline", "--bootstrap", ctx.bootstrap,
        "--topic", topic, "--group", unique("baseline"), "--expected", str(records),
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"baseline consumer failed ({out.returncode}): {out.stderr[-2000:]}")
    answer: dict[str, Any] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return answer


def run(ctx: Context) -> Result:
    result = Result()
    prepared = prepare(ctx)
    topic, records, books = prepared["topic"], prepared["records"], prepared["books"]
    result.raw.update({k: v for k, v in prepared.items() if k != "expected"})
    result.raw["window_seconds"] = WINDOW_SECONDS

    # -- the baseline ----------------------------------------------------------------------
    base = run_baseline(ctx, topic, records)
    base_seconds = base["last_at"] - base["first_at"]
    base_rate = records / base_seconds
    base_us = (base["cpu_at_last"] - base["cpu_at_first"]) / records * 1e6
    result.raw["baseline"] = {**base, "seconds": base_seconds}
    log(f"B2 baseline: {records} in {base_seconds:.2f} s = {base_rate:,.0f}/s, {base_us:.2f} µs")

    # -- ddsync ----------------------------------------------------------------------------
    work = ctx.subdir("b2")
    account = sandbox_account("b2@apiconnector.com", range(1, books + 1))
    sandbox = SandboxProcess(work, [account], "--no-rate-limits", "--import-delay", "0.05")
    port = free_port()
    config, group = ddsync_config(
        ctx, work, topic=topic, account=account, sandbox=sandbox, metrics_port=port,
        window_seconds=WINDOW_SECONDS, requests_per_minute=1_000_000,
    )  # fmt: skip
    watcher = OffsetWatcher(ctx.bootstrap, group, topic, PARTITIONS)
    spawned = time.time()
    ddsync = ctx.start_ddsync(config, work / "ddsync.log", "main", account)
    samples: list[dict[str, Any]] = []
    first_at = first_cpu = None
    done_at = done_cpu = None
    peak = 0
    try:
        deadline = time.monotonic() + ctx.option("b2_timeout")
        while time.monotonic() < deadline and ddsync.alive():
            now = time.time()
            cpu = cpu_seconds(ddsync.pid)
            rss = rss_bytes(ddsync.pid)
            peak = max(peak, rss)
            if first_at is None:
                consumed = metric(scrape(port), "ddsync_records_consumed_total")
                if consumed > 0:
                    first_at, first_cpu = now, cpu
                else:
                    time.sleep(0.1)
                    continue
            caught_up = watcher.caught_up()
            samples.append({"t": round(now - spawned, 2), "cpu": cpu, "rss": rss})
            if caught_up:
                done_at, done_cpu = time.time(), cpu_seconds(ddsync.pid)
                break
            time.sleep(1.0)
        metrics = scrape(port)
        if done_at is None or first_at is None or first_cpu is None or done_cpu is None:
            result.problem(f"ddsync did not commit everything: {ddsync.output()[-1500:]}")
            return result
        seconds = done_at - first_at
        rate = records / seconds
        us = (done_cpu - first_cpu) / records * 1e6
        code = ddsync.stop(60)
        expected = prepared["expected"]
        wrong = [
            b
            for b in range(1, books + 1)
            if sandbox.members(account.username, b) != expected.get(("main", b), set())
        ]
        if wrong:
            result.problem(f"{len(wrong)} address books wrong, e.g. {wrong[:5]}")
        if code != 0:
            result.problem(f"ddsync exited with {code} on SIGTERM")
        result.raw["ddsync"] = {
            "spawned_at": spawned,
            "first_at": first_at,
            "done_at": done_at,
            "cpu_at_first": first_cpu,
            "cpu_at_done": done_cpu,
            "seconds": seconds,
            "seconds_from_spawn": done_at - spawned,
            "peak_rss_bytes": peak,
            "records_consumed": metric(metrics, "ddsync_records_consumed_total"),
            "records_dead_lettered": metric(metrics, "ddsync_records_dead_lettered_total"),
            "books_wrong": len(wrong),
            "samples": samples,
        }
        log(
            f"B2 ddsync: {records} in {seconds:.1f} s = {rate:,.0f}/s, {us:.1f} µs/record, "
            f"peak RSS {peak / 2**20:.0f} MiB, books wrong: {len(wrong)}"
        )
        valid = not wrong
        result.add(Figure("b2_baseline_rate", "B2 baseline consumer", round(base_rate), "rec/s"))
        result.add(Figure("b2_baseline_cpu", "B2 baseline CPU", round(base_us, 2), "µs/rec"))
        result.add(Figure("b2_rate", "B2 ddsync", round(rate), "rec/s", valid=valid))
        result.add(
            Figure(
                "b2_rate_ratio", "B2 ddsync / baseline rate", round(rate / base_rate, 3), "",
                target=0.5, goal="min", valid=valid, note="stretch 0.8",
            )
        )  # fmt: skip
        result.add(
            Figure(
                "b2_cpu", "B2 ddsync CPU", round(us, 2), "µs/rec",
                target=20.0, goal="max", valid=valid,
                note=f"{us / base_us:.1f}x the baseline's",
            )
        )  # fmt: skip
        result.add(
            Figure("b2_peak_rss", "B2 ddsync peak RSS", round(peak / 1e6, 1), "MB", valid=valid)
        )
        return result
    finally:
        if ddsync.alive():
            ddsync.kill()
        watcher.close()
        sandbox.stop()
