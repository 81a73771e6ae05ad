"""B4 memory: ddsync's resident memory with N pending contacts over B books, up to its
backpressure cap and after it.

Windows never close (``window_seconds`` 1e9) and each book gets N/B contacts (fewer than
``max_contacts``), so nothing is sent until ``batching.max_buffered_records`` is passed; then
ddsync pauses its partitions and sends what it buffered, against the sandbox's default budgets
(75 imports a minute), so those records stay open (in flight) and the consumer stays paused.
ddsync starts on an empty topic; its RSS is sampled before any record, then every 0.25 s with
``ddsync_buffered_records`` and ``ddsync_consumer_paused`` while the records are produced, and
for a while after it paused.
"""

from __future__ import annotations

import threading
import time
from typing import Any

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
    rss_bytes,
    sandbox_account,
    scrape,
    tier_counts,
    wait_ready,
)
from tests.support.processes import SandboxProcess, produce

PARTITIONS = 6
MB = 1e6


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def run(ctx: Context) -> Result:
    result = Result()
    pending: int = ctx.option("b4_records")
    books: int = ctx.option("b4_books")
    cap: int = ctx.option("b4_cap")
    after: float = ctx.option("b4_after_seconds")
    per_book = pending // books
    work = ctx.subdir("b4")
    account = sandbox_account("b4@apiconnector.com", range(1, books + 1))
    sandbox = SandboxProcess(work, [account])
    stats = StatsPoller(sandbox)
    topic = create_topic(ctx.bootstrap, PARTITIONS, "b4")
    records = [
        add_record(b, f"b4-{b}-{i}@example.com")
        for i in range(per_book)
        for b in range(1, books + 1)
    ]
    port = free_port()
    config, _ = ddsync_config(
        ctx, work, topic=topic, account=account, sandbox=sandbox, metrics_port=port,
        window_seconds=1e9, max_buffered_records=cap,
    )  # fmt: skip
    ddsync = ctx.start_ddsync(config, work / "ddsync.log", "main", account)
    samples: list[dict[str, Any]] = []
    result.raw.update(pending=len(records), books=books, cap=cap, per_book=per_book)
    try:
        wait_ready(ddsync, port)
        idle = []
        for _ in range(8):
            idle.append(rss_bytes(ddsync.pid))
            time.sleep(0.25)
        before = median(idle) or 0
        adds_before = tier_counts(stats.get(), "calls", account.username)["add"]
        began = time.monotonic()
        # Produced from a thread, so that sampling goes on while ddsync reads what comes.
        producer = threading.Thread(target=produce, args=(ctx.bootstrap, topic, records))
        producer.start()
        paused_at: float | None = None
        deadline = time.monotonic() + ctx.option("b4_timeout")
        while time.monotonic() < deadline and ddsync.alive():
            metrics = scrape(port)
            now = time.monotonic() - began
            sample = {
                "t": round(now, 3),
                "rss": rss_bytes(ddsync.pid),
                "buffered": metric(metrics, "ddsync_buffered_records"),
                "paused": metric(metrics, "ddsync_consumer_paused"),
                "consumed": metric(metrics, "ddsync_records_consumed_total"),
                "imports": tier_counts(stats.get(), "calls", account.username)["add"],
            }
            samples.append(sample)
            if paused_at is None and sample["paused"] >= 1:
                paused_at = now
                log(f"B4: paused {now:.1f} s in at {sample['buffered']:.0f} buffered")
            if paused_at is not None and now >= paused_at + after:
                break
            time.sleep(0.25)
        producer.join()
        result.raw["samples"] = samples
        result.raw["rss_before_bytes"] = before
        if paused_at is None:
            result.problem("ddsync never paused at its cap")
            return result
        ramp = [s for s in samples if s["t"] < paused_at and s["buffered"] > 0]
        slope = _slope([s["buffered"] for s in ramp], [s["rss"] for s in ramp])
        at_cap = next(s for s in samples if s["t"] >= paused_at)
        tail = [s for s in samples if s["t"] >= paused_at]
        first_part = [s["rss"] for s in tail if s["t"] <= paused_at + 5]
        last_part = [s["rss"] for s in tail if s["t"] >= paused_at + after - 5]
        drift = ((median(last_part) or 0) - (median(first_part) or 0)) / MB
        peak = max(s["rss"] for s in samples)
        max_buffered = max(s["buffered"] for s in samples)
        still_paused = all(s["paused"] >= 1 for s in tail)
        early = [s for s in samples if s["t"] < paused_at and s["buffered"] <= cap]
        if any(s["imports"] > adds_before for s in early):
            result.problem("imports were sent below the cap: batches were not all pending")
        if max_buffered < cap:
            result.problem(f"buffered records peaked at {max_buffered:.0f}, below the cap")
        if not still_paused:
            result.problem("the consumer resumed during the observation after the cap")
        result.raw.update(
            paused_at=paused_at,
            buffered_at_pause=at_cap["buffered"],
            max_buffered=max_buffered,
            bytes_per_record=slope,
            drift_mb=drift,
        )
        valid = result.valid
        result.add(Figure("b4_rss_before", "B4 RSS before records", round(before / MB, 1), "MB"))
        result.add(
            Figure("b4_rss_cap", "B4 RSS at the cap", round(at_cap["rss"] / MB, 1), "MB",
                   valid=valid, note=f"{at_cap['buffered']:.0f} buffered")
        )  # fmt: skip
        result.add(
            Figure("b4_rss_peak", "B4 peak RSS", round(peak / MB, 1), "MB",
                   target=150.0, goal="max", valid=valid)
        )  # fmt: skip
        result.add(
            Figure(
                "b4_bytes_per_record", "B4 growth per pending record",
                round(slope) if slope is not None else None, "B/rec", valid=valid,
                note=f"least squares over {len(ramp)} samples before the cap",
            )
        )  # fmt: skip
        result.add(
            Figure(
                "b4_drift", f"B4 RSS drift over {after:.0f} s after the cap", round(drift, 2),
                "MB", target=5.0, goal="max", valid=valid,
                note="median of the last 5 s minus median of the first 5 s",
            )
        )  # fmt: skip
        log(
            f"B4: RSS {before / MB:.0f} MB idle, {at_cap['rss'] / MB:.0f} MB at the cap, peak "
            f"{peak / MB:.0f} MB, {slope or 0:.0f} B/record, drift {drift:+.1f} MB"
        )
        return result
    finally:
        if ddsync.alive():
            ddsync.kill()
        stats.close()
        sandbox.stop()
