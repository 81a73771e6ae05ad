"""B1 removals: how fast a fresh ddsync empties three address books, and what it costs.

One sandbox account with DotDigital's default budgets (add 75, remove 35, other 600 a minute),
ddsync with its default connector budgets, 2-second windows. Adds for 3 books x N contacts are
synced by one ddsync process, which is then stopped (SIGTERM); a new process (no remembered
contact ids) is started, and removals of every contact are produced. Measured from the first
removal produced to all offsets committed and all three books empty in the sandbox.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import (
    Context,
    Figure,
    OffsetWatcher,
    Result,
    StatsPoller,
    add_record,
    by_label,
    create_topic,
    ddsync_config,
    free_port,
    log,
    metric,
    poll_until,
    sandbox_account,
    scrape,
    tier_counts,
    tier_of_label,
    wait_ready,
)
from tests.support.processes import SandboxProcess, produce

BOOKS = (101, 102, 103)
PARTITIONS = 6


def run(ctx: Context) -> Result:
    result = Result()
    per_book: int = ctx.option("b1_contacts")
    timeout: float = ctx.option("b1_timeout")
    total = per_book * len(BOOKS)
    work = ctx.subdir("b1")
    account = sandbox_account(
        "b1@apiconnector.com",
        BOOKS,
        add_per_minute=75,
        remove_per_minute=35,
        other_per_minute=600,
        rate_limits_enabled=True,
    )
    sandbox = SandboxProcess(work, [account])
    stats = StatsPoller(sandbox)
    topic = create_topic(ctx.bootstrap, PARTITIONS, "b1")
    emails = {b: [f"b1-{b}-{i}@example.com" for i in range(per_book)] for b in BOOKS}
    # Interleaved across books, as a stream would be.
    adds = [add_record(b, emails[b][i]) for i in range(per_book) for b in BOOKS]
    removes = [add_record(b, emails[b][i], "remove") for i in range(per_book) for b in BOOKS]
    result.raw.update(
        contacts_per_book=per_book,
        books=list(BOOKS),
        sandbox_budgets={"add": 75, "remove": 35, "other": 600},
        window_seconds=2.0,
        timeout_seconds=timeout,
    )
    first_port, second_port = free_port(), free_port()
    config, group = ddsync_config(
        ctx, work, topic=topic, account=account, sandbox=sandbox,
        metrics_port=first_port, window_seconds=2.0,
    )  # fmt: skip
    watcher = OffsetWatcher(ctx.bootstrap, group, topic, PARTITIONS)
    first = second = None
    try:
        # -- phase 1: the adds, synced by a first process ------------------------------------
        first = ctx.start_ddsync(config, work / "ddsync-adds.log", "main", account)
        wait_ready(first, first_port)
        began = time.monotonic()
        produce(ctx.bootstrap, topic, adds)

        def synced() -> bool:
            sizes = [len(sandbox.members(account.username, b)) for b in BOOKS]
            return sizes == [per_book] * len(BOOKS) and watcher.caught_up()

        if not poll_until(synced, 600, 1.0):
            result.problem("the adds were not all synced and committed within 600 s")
            return result
        result.raw["adds_seconds"] = round(time.monotonic() - began, 2)
        log(f"B1: {total} adds synced in {result.raw['adds_seconds']} s; restarting ddsync")
        code = first.stop(60)
        if code != 0:
            result.problem(f"the first ddsync exited with {code} on SIGTERM")

        # -- phase 2: removals by a new process ---------------------------------------------
        config2, _ = ddsync_config(
            ctx, work, topic=topic, account=account, sandbox=sandbox,
            metrics_port=second_port, window_seconds=2.0, group=group,
        )  # fmt: skip
        second = ctx.start_ddsync(config2, work / "ddsync-removals.log", "main", account)
        wait_ready(second, second_port)
        before = stats.get()
        started = time.monotonic()
        produce(ctx.bootstrap, topic, removes)
        produced_in = time.monotonic() - started
        samples: list[dict[str, Any]] = []
        done = False
        remaining = total
        while True:
            now = time.monotonic() - started
            remaining = sum(len(sandbox.members(account.username, b)) for b in BOOKS)
            snapshot = stats.get()
            calls = tier_counts(snapshot, "calls", account.username)
            samples.append({"t": round(now, 2), "remaining": remaining, "calls": calls})
            if remaining == 0 and watcher.caught_up():
                done = True
                break
            if now > timeout or not second.alive():
                break
            time.sleep(1.0)
        elapsed = time.monotonic() - started
        after = stats.get()
        metrics = scrape(second_port)
        removed = total - remaining
        username = account.username
        calls = {
            t: tier_counts(after, "calls", username)[t] - tier_counts(before, "calls", username)[t]
            for t in ("add", "remove", "other")
        }
        refused = {
            t: tier_counts(after, "rate_limited", username)[t]
            - tier_counts(before, "rate_limited", username)[t]
            for t in ("add", "remove", "other")
        }
        requests = sum(calls.values()) + sum(refused.values())
        waits = by_label(metrics, "ddsync_rate_limiter_wait_seconds_total", "limiter")
        result.raw.update(
            completed=done,
            seconds=round(elapsed, 2),
            produce_seconds=round(produced_in, 2),
            removed=removed,
            remaining=remaining,
            calls_by_tier=calls,
            rate_limited_by_tier=refused,
            requests=requests,
            limiter_wait_seconds=waits,
            ddsync_requests={
                f"{labels.get('operation')}/{labels.get('status_class')}": value
                for name, labels, value in metrics
                if name == "ddsync_dotdigital_requests_total"
            },
            ddsync_throttled=metric(metrics, "ddsync_dotdigital_throttled_total"),
            samples=samples,
        )
        if not second.alive():
            result.problem(f"the removing ddsync exited early: {second.output()[-1500:]}")
        partial = "" if done else f"partial: timed out after {elapsed:.0f} s, {removed} removed"
        if not done:
            result.problem(f"timed out: {removed} of {total} removed in {elapsed:.0f} s")
        result.add(
            Figure(
                "b1_seconds", "B1 removal phase", round(elapsed, 1), "s",
                valid=done, note=partial or f"{total} removals",
            )
        )  # fmt: skip
        result.add(
            Figure(
                "b1_rate", "B1 removals per second", round(removed / elapsed, 1), "/s",
                valid=removed > 0, note="budget bound ~580/s (35 removals of 1000 a minute)",
            )
        )  # fmt: skip
        result.add(
            Figure(
                "b1_requests_per_contact",
                "B1 API requests per removed contact",
                round(requests / removed, 4) if removed else None,
                "req",
                target=0.02,
                goal="max",
                valid=removed > 0,
                note=f"{requests} requests ({calls}, 429s {sum(refused.values())})",
            )
        )
        total_wait = sum(waits.values())
        remove_wait = sum(w for label, w in waits.items() if tier_of_label(label) == "remove")
        share = remove_wait / total_wait if total_wait >= 1.0 else None
        waits_text = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(waits.items()))
        result.add(
            Figure(
                "b1_remove_wait_share",
                "B1 removal limiter's share of limiter waits",
                round(share, 3) if share is not None else None,
                "",
                target=0.5,
                goal="min",
                valid=removed > 0,
                note=f"waits: {waits_text or 'none'}"
                + ("" if share is not None else " (limiters waited < 1 s: nothing to share)"),
            )
        )
        if done:
            for b in BOOKS:
                if sandbox.members(account.username, b):
                    result.problem(f"book {b} is not empty")
        log(
            f"B1: {removed}/{total} removed in {elapsed:.1f} s ({removed / elapsed:.1f}/s), "
            f"{requests} requests, waits {waits_text or 'none'}"
        )
        return result
    finally:
        for process in (first, second):
            if process is not None and process.alive():
                process.kill()
        watcher.close()
        stats.close()
        sandbox.stop()
