"""B6 reconcile: what ``ddsync reconcile`` costs on a large book, in API calls and seconds.

One sandbox account with DotDigital's default budgets (add 75, remove 35, other 600 a minute,
rate limits on), one address book of N members (50,000 by default) put there through the API,
and an outcomes topic saying those N are members, as a ddsync run would have left it. Then the
book is edited by hand: ``--b6-drift`` members removed, as many strangers added. Measured, as a
process (``python -m stream reconcile --json``): the comparison (report only), the repair, and
a second comparison that must find the book in step. API calls are the sandbox's count of
requests of that account during each run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Producer

from benchmarks.common import (
    Context,
    Figure,
    Result,
    StatsPoller,
    create_topic,
    ddsync_config,
    free_port,
    log,
    sandbox_account,
)
from stream.core.outcome_format import Outcome, Reported, State
from stream.dotdigital import DotDigitalClient
from stream.dotdigital.config import ClientConfig
from tests.support.processes import SandboxProcess, password_env

BOOK = 201
IMPORT_CHUNK = 1000


def run(ctx: Context) -> Result:
    result = Result()
    members: int = ctx.option("b6_members")
    drift: int = ctx.option("b6_drift")
    work = ctx.subdir("b6")
    account = sandbox_account(
        "b6@apiconnector.com",
        (BOOK,),
        add_per_minute=75,
        remove_per_minute=35,
        other_per_minute=600,
        rate_limits_enabled=True,
        import_delay_seconds=0.05,
    )
    sandbox = SandboxProcess(work, [account])
    stats = StatsPoller(sandbox)
    emails = [f"b6-{i}@example.com" for i in range(members)]
    strangers = [f"b6-stranger-{i}@example.com" for i in range(drift)]
    try:
        began = time.monotonic()
        asyncio.run(_seed(account.username, account.password, sandbox.discovery_url, emails))
        log(f"B6: {members} members in book {BOOK} in {time.monotonic() - began:.0f} s")
        outcomes = create_topic(ctx.bootstrap, 6, "b6-outcomes")
        _write_outcomes(ctx.bootstrap, outcomes, emails)
        asyncio.run(
            _edit(account.username, account.password, sandbox.discovery_url, emails, strangers)
        )
        topic = create_topic(ctx.bootstrap, 1, "b6")
        config, _ = ddsync_config(
            ctx, work, topic=topic, account=account, sandbox=sandbox,
            metrics_port=free_port(), window_seconds=2.0,
        )  # fmt: skip
        config.write_text(
            config.read_text().replace("[kafka]\n", f'[kafka]\noutcomes_topic = "{outcomes}"\n', 1)
        )
        env = {**os.environ, **ctx.ddsync_env(), password_env("main"): account.password}
        runs: dict[str, dict[str, Any]] = {}
        for name, args in (("compare", ()), ("repair", ("--repair",)), ("again", ())):
            before = _calls(stats, account.username)
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "stream", "reconcile", "--config", str(config), "--json",
                 *args],
                capture_output=True, text=True, env=env, cwd=ctx.ddsync_src, timeout=3600,
            )  # fmt: skip
            seconds = time.monotonic() - started
            if done.returncode not in (0, 1):
                result.problem(f"reconcile {name} exited {done.returncode}: {done.stderr[-500:]}")
                return result
            report = orjson.loads(done.stdout)
            (book,) = report["books"]
            runs[name] = {
                "exit": done.returncode,
                "seconds": round(seconds, 2),
                "api_calls": _calls(stats, account.username) - before,
                "missing": len(book["missing"]),
                "unexpected": len(book["unexpected"]),
                "unmanaged": len(book["unmanaged"]),
                "members": book["members"],
            }
            log(f"B6: {name}: {runs[name]}")
        result.raw.update(members=members, drift=drift, runs=runs)
        compare, repair, again = runs["compare"], runs["repair"], runs["again"]
        if (compare["exit"], compare["missing"], compare["unmanaged"]) != (1, drift, drift):
            result.problem(f"the comparison did not see the drift: {compare}")
        if repair["exit"] != 0 or again["exit"] != 0 or again["missing"] != 0:
            result.problem(f"the repair did not bring the book in step: {repair}, {again}")
        result.add(Figure("b6_compare_seconds", f"reconcile of a {members}-member book",
                          compare["seconds"], "s"))  # fmt: skip
        result.add(Figure("b6_compare_calls", "its API calls", compare["api_calls"], "calls"))
        result.add(Figure("b6_repair_seconds", f"reconcile --repair of {drift} + {drift}",
                          repair["seconds"], "s"))  # fmt: skip
        result.add(Figure("b6_repair_calls", "its API calls", repair["api_calls"], "calls"))
        return result
    finally:
        stats.close()
        sandbox.stop()


def _calls(stats: StatsPoller, username: str) -> int:
    totals = stats.get().get("totals", {}).get(username, {})
    return int(totals.get("requests", 0))


def _config(username: str, password: str, discovery: str) -> ClientConfig:
    return ClientConfig(
        name="b6", username=username, password=lambda: password, discovery_endpoint=discovery
    )


async def _seed(username: str, password: str, discovery: str, emails: list[str]) -> None:
    async with await DotDigitalClient.connect(_config(username, password, discovery)) as client:
        chunks = [emails[i : i + IMPORT_CHUNK] for i in range(0, len(emails), IMPORT_CHUNK)]
        await asyncio.gather(*(client.import_contacts(BOOK, chunk) for chunk in chunks))


async def _edit(
    username: str, password: str, discovery: str, emails: list[str], strangers: list[str]
) -> None:
    async with await DotDigitalClient.connect(_config(username, password, discovery)) as client:
        await client.remove_contacts(BOOK, emails[: len(strangers)])
        await client.import_contacts(BOOK, strangers)


def _write_outcomes(bootstrap: str, topic: str, emails: list[str]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    now = datetime.now(UTC)
    for email in emails:
        outcome = Outcome(
            connector="main", address_book_id=BOOK, email=email, action="add",
            state=State.MEMBER, reported=Reported.CREATED, decided_at=now,
        )  # fmt: skip
        while True:
            try:
                producer.produce(topic, key=outcome.key, value=outcome.encode())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0, "the outcomes were not all written"
