"""B3 budget use: how much of each per-minute budget ddsync spends while work is queued, and
how soon it spends it fully again after a storm of 429s.

The sandbox enforces small budgets (add 60, remove 30, other 600 a minute by default); ddsync
runs with its default connector budgets (75/35/600), so it must learn the account's from the
``X-RateLimit-*`` headers in its first minute. The backlog: R "removal" books get K adds each
and A - R books 2 adds each, all produced before ddsync starts (the removal books first); once
ddsync has read them and their window closed, the K contacts of every removal book are removed
(each removal book: one import, then one removal batch). Sized so that imports and removals are
queued for the whole observation.

Every second (just before it) ``/_sandbox/stats`` and ddsync's ``/metrics`` are sampled.
Reported: requests per budget in each full calendar minute starting at least 60 s after ddsync
started, divided by the budget; budget 429s (``rate_limited``) in all and after the first
minute. Then a storm: every API call answered 429 (``throttle_rate`` 1) for 10 s from the start
of a minute. Recovery: the time from the storm's end until the calls of a calendar minute reach
95% of its budget again (first within the storm's own minute, else the next ones).
"""

from __future__ import annotations

import math
import time
from typing import Any

from benchmarks.common import (
    TIERS,
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
    sandbox_account,
    scrape,
    tier_counts,
    tier_of_label,
)
from tests.support.processes import SandboxProcess, produce

PARTITIONS = 6
STORM_SECONDS = 10.0
FULL = 0.95
MINUTE = 60.0


def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        time.sleep(delay)


def run(ctx: Context) -> Result:
    result = Result()
    minutes: int = ctx.option("b3_minutes")
    per_removal: int = ctx.option("b3_remove_contacts")
    budgets = {
        "add": ctx.option("b3_add"),
        "remove": ctx.option("b3_remove"),
        "other": ctx.option("b3_other"),
    }
    work = ctx.subdir("b3")

    # -- the plan: when each phase happens, hence how much backlog ------------------------
    start_plan = time.time() + 10  # the sandbox, the topic and the backlog come first
    measured_start = math.ceil((start_plan + MINUTE) / MINUTE) * MINUTE
    measured_end = measured_start + minutes * MINUTE
    storm_start, storm_end = measured_end, measured_end + STORM_SECONDS
    # Work for the whole observation: up to three minutes from the storm's start.
    demand_seconds = (measured_end + 3 * MINUTE - start_plan) * 1.1
    add_batches = math.ceil(budgets["add"] * demand_seconds / MINUTE)
    removal_batches = math.ceil(budgets["remove"] * demand_seconds / MINUTE)
    removal_books = list(range(1, removal_batches + 1))
    add_books = list(range(removal_batches + 1, max(add_batches, removal_batches) + 1))
    books = removal_books + add_books
    emails = {b: [f"b3-{b}-{i}@example.com" for i in range(per_removal)] for b in removal_books}
    emails.update({b: [f"b3-{b}-{i}@example.com" for i in range(2)] for b in add_books})
    wave1 = [add_record(b, e) for b in removal_books for e in emails[b]]
    wave1 += [add_record(b, e) for b in add_books for e in emails[b]]
    wave2 = [add_record(b, e, "remove") for b in removal_books for e in emails[b]]
    result.raw.update(
        budgets=budgets,
        removal_books=len(removal_books),
        add_only_books=len(add_books),
        contacts_per_removal_book=per_removal,
        measured_minutes=[measured_start + i * MINUTE for i in range(minutes)],
        storm={"start": storm_start, "end": storm_end, "throttle_rate": 1.0},
    )

    account = sandbox_account(
        "b3@apiconnector.com",
        books,
        add_per_minute=budgets["add"],
        remove_per_minute=budgets["remove"],
        other_per_minute=budgets["other"],
        rate_limits_enabled=True,
    )
    sandbox = SandboxProcess(work, [account])
    stats = StatsPoller(sandbox)
    topic = create_topic(ctx.bootstrap, PARTITIONS, "b3")
    produce(ctx.bootstrap, topic, wave1)
    port = free_port()
    config, group = ddsync_config(
        ctx, work, topic=topic, account=account, sandbox=sandbox, metrics_port=port,
        window_seconds=2.0,
    )  # fmt: skip
    watcher = OffsetWatcher(ctx.bootstrap, group, topic, PARTITIONS)
    started = time.time()
    ddsync = ctx.start_ddsync(config, work / "ddsync.log", "main", account)
    result.raw["ddsync_started"] = started
    if started > measured_start - MINUTE:
        result.problem("set-up took longer than planned: the first minute is measured too")
    samples: list[dict[str, Any]] = []
    wave2_at: float | None = None
    storm = "before"
    recovered: dict[str, float] = {}
    try:
        next_sample = math.floor(time.time()) + 1 - 0.02
        while True:
            _sleep_until(next_sample)
            now = time.time()
            snapshot = stats.get()
            metrics = scrape(port)
            sample: dict[str, Any] = {
                "t": now,
                "calls": tier_counts(snapshot, "calls", account.username),
                "rate_limited": tier_counts(snapshot, "rate_limited", account.username),
                "storm_429": int(snapshot.get("faults", {}).get("429", 0)),
                "limiter_wait": by_label(
                    metrics, "ddsync_rate_limiter_wait_seconds_total", "limiter"
                ),
                "buffered": metric(metrics, "ddsync_buffered_records"),
                "consumed": metric(metrics, "ddsync_records_consumed_total"),
            }
            samples.append(sample)
            next_sample += 1.0
            if not ddsync.alive():
                result.problem(f"ddsync exited: {ddsync.output()[-1500:]}")
                break
            if wave2_at is None and sample["consumed"] >= len(wave1):
                # Past the window the adds were read in: the removals make batches of their own.
                _sleep_until(math.floor(time.time() / 2.0) * 2.0 + 2.1)
                produce(ctx.bootstrap, topic, wave2)
                wave2_at = time.time()
                log(f"B3: {len(wave2)} removals produced {wave2_at - started:.0f} s in")
                next_sample = math.floor(time.time()) + 1 - 0.02
            if storm == "before" and now >= storm_start - 0.5:
                _sleep_until(storm_start)
                sandbox.set_faults(throttle_rate=1.0)
                storm = "on"
                log("B3: 429 storm on")
                next_sample = math.floor(time.time()) + 1 - 0.02
            elif storm == "on" and now >= storm_end - 0.5:
                _sleep_until(storm_end)
                sandbox.set_faults(throttle_rate=0.0)
                storm = "after"
                log("B3: 429 storm off")
                next_sample = math.floor(time.time()) + 1 - 0.02
            elif storm == "after":
                for tier in ("add", "remove"):
                    if tier not in recovered and _minute_calls(samples, now, tier) >= (
                        FULL * budgets[tier]
                    ):
                        recovered[tier] = now - storm_end
                if len(recovered) == 2 or now > storm_start + 3 * MINUTE:
                    break
        result.raw["wave2_at"] = wave2_at
        result.raw["samples"] = samples

        # -- completion and correctness ----------------------------------------------------
        deadline = time.monotonic() + ctx.option("b3_completion_timeout")
        complete = False
        while time.monotonic() < deadline and ddsync.alive():
            if watcher.caught_up():
                complete = True
                break
            time.sleep(2.0)
        result.raw["completed_at"] = time.time() if complete else None
        if not complete:
            result.problem("the backlog was not all committed within the completion timeout")
        else:
            wrong = [
                b
                for b in books
                if sandbox.members(account.username, b)
                != (set() if b in removal_books else set(emails[b]))
            ]
            if wrong:
                result.problem(f"{len(wrong)} address books wrong, e.g. {wrong[:5]}")
        _figures(result, samples, budgets, started, measured_start, minutes, storm_end, recovered)
        return result
    finally:
        if ddsync.alive():
            ddsync.kill()
        watcher.close()
        stats.close()
        sandbox.stop()


def _at(samples: list[dict[str, Any]], wall: float) -> dict[str, Any] | None:
    """The last sample taken at or before ``wall``."""
    found = None
    for sample in samples:
        if sample["t"] <= wall:
            found = sample
        else:
            break
    return found


def _minute_calls(samples: list[dict[str, Any]], now: float, tier: str) -> int:
    """Calls of ``tier`` in the calendar minute of ``now``, up to the latest sample."""
    start = _at(samples, math.floor(now / MINUTE) * MINUTE)
    if start is None:
        return 0
    calls: int = samples[-1]["calls"][tier] - start["calls"][tier]
    return calls


def _figures(
    result: Result,
    samples: list[dict[str, Any]],
    budgets: dict[str, int],
    started: float,
    measured_start: float,
    minutes: int,
    storm_end: float,
    recovered: dict[str, float],
) -> None:
    valid = result.valid
    per_minute: list[dict[str, Any]] = []
    for i in range(minutes):
        begin, end = measured_start + i * MINUTE, measured_start + (i + 1) * MINUTE
        a, b = _at(samples, begin), _at(samples, end)
        if a is None or b is None or b["t"] < end - 1.5:
            result.problem(f"no samples around the minute starting {begin:.0f}")
            continue
        row: dict[str, Any] = {"start": begin}
        for tier in TIERS:
            waited = sum(
                b["limiter_wait"].get(label, 0.0) - a["limiter_wait"].get(label, 0.0)
                for label in b["limiter_wait"]
                if tier_of_label(label) == tier
            )
            row[tier] = {
                "calls": b["calls"][tier] - a["calls"][tier],
                "use": (b["calls"][tier] - a["calls"][tier]) / budgets[tier],
                "limiter_waited_seconds": round(waited, 2),
                "rate_limited": b["rate_limited"][tier] - a["rate_limited"][tier],
            }
        per_minute.append(row)
    result.raw["per_minute"] = per_minute
    last = samples[-1] if samples else None
    after_first = _at(samples, started + MINUTE)
    storm_429 = last["storm_429"] if last else 0
    total_429 = sum(last["rate_limited"].values()) if last else 0
    late_429 = total_429 - (sum(after_first["rate_limited"].values()) if after_first else 0)
    result.raw.update(rate_limited_total=total_429, rate_limited_after_first_minute=late_429)
    result.raw["storm_429_served"] = storm_429
    result.raw["recovery_seconds"] = recovered
    for tier in TIERS:
        uses = [row[tier]["use"] for row in per_minute]
        use = sum(uses) / len(uses) if uses else None
        queued = all(row[tier]["limiter_waited_seconds"] > 0 for row in per_minute)
        saturating = tier in ("add", "remove")
        result.add(
            Figure(
                f"b3_{tier}_use",
                f"B3 {tier} budget use",
                round(use, 3) if use is not None else None,
                f"x{budgets[tier]}/min",
                target=FULL if saturating else None,
                goal="min" if saturating else None,
                valid=valid,
                note=", ".join(f"{u:.2f}" for u in uses)
                + ("; ddsync's limiter queued work every minute" if queued else "")
                + ("" if saturating else "; not saturated by design (info)"),
            )
        )
    result.add(
        Figure("b3_429_total", "B3 budget 429s, whole run", total_429, "", valid=valid,
               note=f"plus {storm_429} served by the storm")
    )  # fmt: skip
    result.add(
        Figure("b3_429_late", "B3 budget 429s after the first minute", late_429, "",
               target=0, goal="max", valid=valid)
    )  # fmt: skip
    worst = max(recovered.values()) if len(recovered) == 2 else None
    result.add(
        Figure(
            "b3_recovery",
            "B3 back to full budget after a 10 s 429 storm",
            round(worst, 1) if worst is not None else None,
            "s",
            target=60.0,
            goal="max",
            valid=valid and worst is not None,
            note=", ".join(f"{k} {v:.0f} s" for k, v in sorted(recovered.items()))
            or "not within the observation",
        )
    )
    summary = ", ".join(f"{f.key}={f.value}" for f in result.figures)
    log(f"B3: {summary}")
