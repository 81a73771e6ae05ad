"""ddsync as a real process against a real broker and the sandbox as a real process.

Each test checks the end state against what the input says it must be: every address book's
members equal the membership computed from the transitions in order, every bad record is on the
dead-letter topic with the right reason, and the committed offsets reached the end offsets.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaException
from prometheus_client.parser import text_string_to_metric_families

from stream.core.deadletter_format import H_REASON
from stream.core.reasons import Reason
from stream.demo.generator import DemoRecord, Target, generate, realistic, transition
from tests.support.kafka import KafkaCluster
from tests.support.processes import (
    Account,
    committed_and_end,
    expected_membership,
    free_port,
    password_env,
    read_topic,
    run_with_config,
)
from tests.support.scenario import PARTITIONS, Scenario
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.sandbox, pytest.mark.process]


@pytest.fixture
def scenarios() -> Iterator[list[Scenario]]:
    made: list[Scenario] = []
    yield made
    for scenario in made:
        scenario.close()


def test_twenty_thousand_transitions_over_two_hundred_books(
    kafka: KafkaCluster, tmp_path: Path, scenarios: list[Scenario]
) -> None:
    books = tuple(range(1, 201))
    account = Account("e2e@apiconnector.com", "r1", books)
    scenario = Scenario(
        kafka, tmp_path, {"main": account}, "--no-rate-limits", "--import-delay", "0.05",
        window_seconds=3.0, requests_per_minute=100_000,
    )  # fmt: skip
    scenarios.append(scenario)
    targets = [Target("main", b) for b in books]
    records = list(generate(targets, 20_000, profiles=3000, bad_share=0.005, seed=11))
    assert sum(1 for r in records if r.bad) > 50
    scenario.produce(records)

    started = time.monotonic()
    process = scenario.start_ddsync()
    scenario.wait_caught_up(timeout=300)
    elapsed = time.monotonic() - started
    assert process.terminate() == 0, process.output()[-3000:]
    print(
        f"\nend to end: {len(records)} records in {elapsed:.1f} s = {len(records) / elapsed:.0f}/s"
    )

    scenario.assert_membership(records)
    scenario.assert_dead_letters(records)


def scrape(port: int, by: tuple[str, str] | None = None) -> dict[str, float]:
    """Sum each sample name over its labels, from ddsync's /metrics; with ``by`` (a sample
    name and a label), that sample's values by that label instead."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if by is None:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
            elif sample.name == by[0]:
                totals[sample.labels[by[1]]] = sample.value
    return totals


def test_metrics_are_scraped_over_http(
    kafka: KafkaCluster, tmp_path: Path, scenarios: list[Scenario]
) -> None:
    books = tuple(range(1, 11))
    port = free_port()
    scenario = Scenario(
        kafka, tmp_path, {"main": Account("metrics@apiconnector.com", "r1", books)},
        "--import-delay", "0.05", window_seconds=1.0, metrics_port=port,
    )  # fmt: skip
    scenarios.append(scenario)
    records = list(generate([Target("main", b) for b in books], 500, bad_share=0.05, seed=3))
    scenario.produce(records)
    process = scenario.start_ddsync()
    scenario.wait_caught_up(timeout=120)
    metrics = scrape(port)
    budgets = scrape(port, by=("ddsync_rate_limit_budget_per_minute", "limiter"))
    assert process.terminate() == 0
    bad = sum(1 for r in records if r.bad)
    assert metrics["ddsync_records_consumed_total"] == len(records)
    assert metrics["ddsync_records_dead_lettered_total"] == bad
    assert metrics["ddsync_records_synced_total"] == len(records) - bad
    assert metrics["ddsync_buffered_records"] == 0
    assert metrics["ddsync_offset_commits_total"] >= 1
    assert metrics["ddsync_assigned_partitions"] == PARTITIONS
    assert metrics["ddsync_window_seconds"] == 1.0
    # The process's clients report their traffic: requests, import reports, budgets.
    assert metrics["ddsync_dotdigital_requests_total"] >= 1
    assert metrics["ddsync_import_contacts_total"] >= 1
    # One budget per tier the sandbox's headers named, as they state it; a configured budget
    # (75, 35, the default other 600) still paces the calls whose tier no response named yet.
    # Imports and polls happened, so their tiers were learnt.
    assert budgets["mediumCallRate"] == 75
    assert budgets["highCallRate"] == 3000
    assert "add" not in budgets
    stated = {"lowCallRate": 35, "remove": 35, "other": 600}
    assert {k: v for k, v in budgets.items() if k in stated} == {
        k: v for k, v in stated.items() if k in budgets
    }
    assert set(budgets) <= {"mediumCallRate", "highCallRate", *stated}


def test_a_crash_loses_nothing(
    kafka: KafkaCluster, tmp_path: Path, scenarios: list[Scenario]
) -> None:
    books = tuple(range(1, 51))
    scenario = Scenario(
        kafka, tmp_path, {"main": Account("crash@apiconnector.com", "r1", books)},
        "--no-rate-limits", "--import-delay", "0.3", "--latency", "0.02",
        window_seconds=1.0, requests_per_minute=100_000,
    )  # fmt: skip
    scenarios.append(scenario)
    targets = [Target("main", b) for b in books]
    records = list(generate(targets, 10_000, profiles=1500, bad_share=0.01, seed=5))
    # A steady stream (about 10 s of it), so that the crash lands in the middle of it.
    chunks = [records[i : i + 500] for i in range(0, len(records), 500)]

    def produce_steadily() -> None:
        for chunk in chunks:
            scenario.produce(chunk)
            time.sleep(0.5)

    producer = threading.Thread(target=produce_steadily)
    first = scenario.start_ddsync()
    # Produce only once it consumes: a slow start would otherwise meet a backlog it takes in
    # one window, and the crash would land after the stream instead of in it.
    wait_until(
        lambda: "assigned" in first.output(), 60, "no partitions assigned", process=first.process
    )
    producer.start()

    def committed_total() -> int:
        try:
            committed, _ = committed_and_end(
                kafka.bootstrap_servers, scenario.group, scenario.topic, PARTITIONS
            )
        except KafkaException:  # the group coordinator is still being elected
            return 0
        return sum(max(c, 0) for c in committed)

    wait_until(
        lambda: committed_total() >= 2000, 120, "no progress", process=first.process, interval=0.2
    )
    first.kill()  # SIGKILL: no flush, no commit, no goodbye
    done_before = committed_total()
    assert done_before < len(records) // 2, "the crash came too late to test anything"
    second = scenario.start_ddsync()
    producer.join()
    scenario.wait_caught_up(timeout=300)
    assert second.terminate() == 0, second.output()[-3000:]

    scenario.assert_membership(records)
    twice = scenario.assert_dead_letters(records, repeats=True)
    flushes = first.output().count("flushed main/")
    print(
        f"\ncrash: {done_before} records committed before SIGKILL ({flushes} flushes done by "
        f"then); dead letters written twice after the restart: {twice} of "
        f"{sum(1 for r in records if r.bad)}"
    )


def test_throttling_storms_and_server_faults(
    kafka: KafkaCluster, tmp_path: Path, scenarios: list[Scenario]
) -> None:
    books = tuple(range(1, 11))
    # ddsync is configured for far more calls than the account allows: it must learn the real
    # budget from the headers. On top, a third of all calls meet a throttling storm (429, as
    # when other API users spend the account's budget), a tenth fail with 500/503, and one in
    # twenty loses its connection.
    account = Account(
        "storm@apiconnector.com", "r1", books,
        extra={"add_per_minute": 20, "remove_per_minute": 20, "import_delay_seconds": 0.2},
    )  # fmt: skip
    scenario = Scenario(
        kafka, tmp_path, {"main": account},
        "--throttle-rate", "0.3", "--error-rate", "0.1", "--drop-rate", "0.05", "--seed", "1",
        window_seconds=2.0, requests_per_minute=10_000, retry_timeout_seconds=120,
    )  # fmt: skip
    scenarios.append(scenario)
    records = list(generate([Target("main", b) for b in books], 1500, bad_share=0.01, seed=9))
    scenario.produce(records)
    process = scenario.start_ddsync()
    scenario.wait_caught_up(timeout=300)
    assert process.terminate() == 0
    faults = scenario.sandbox.control("stats")["faults"]
    # Removals resolve in bulk: a few dozen calls for 1,500 records, so a few faults of each
    # kind (this seed served 19 429s, 3 errors and 9 drops).
    assert faults.get("429", 0) > 5, faults
    assert faults.get("500", 0) + faults.get("503", 0) > 0, faults
    assert faults.get("drop", 0) > 0, faults
    scenario.assert_membership(records)
    scenario.assert_dead_letters(records, repeats=True)
    print(f"\nstorm: faults served {faults}")


def test_a_wrong_password_dead_letters_one_connector_only(
    kafka: KafkaCluster, tmp_path: Path, scenarios: list[Scenario]
) -> None:
    good = Account("good@apiconnector.com", "r1", (1, 2, 3))
    broken = Account("broken@apiconnector.com", "r2", (7, 8))
    scenario = Scenario(
        kafka, tmp_path, {"good": good, "broken": broken}, "--import-delay", "0.05",
        window_seconds=1.0, retry_timeout_seconds=4,
    )  # fmt: skip
    scenarios.append(scenario)
    scenario.env[password_env("broken")] = "not-the-password"
    targets = [Target("good", b) for b in good.address_books]
    targets += [Target("broken", b) for b in broken.address_books]
    records = list(generate(targets, 1000, seed=13))
    scenario.produce(records)
    started = time.monotonic()
    process = scenario.start_ddsync()
    scenario.wait_caught_up(timeout=120)
    assert process.terminate() == 0
    assert time.monotonic() - started >= 4, "dead-lettered before the retry timeout"

    good_records = [r for r in records if b'"connector_id":"good"' in r.value]
    broken_records = [r for r in records if b'"connector_id":"broken"' in r.value]
    expected = expected_membership(good_records)
    for book in good.address_books:
        assert scenario.sandbox.members(good.username, book) == expected[("good", book)]
    for book in broken.address_books:
        assert scenario.sandbox.members(broken.username, book) == set()
    letters = read_topic(kafka.bootstrap_servers, scenario.dead_letter_topic, 1)
    assert letters, "nothing of the broken connector reached the dead-letter topic"
    reasons = Counter(letter.header(H_REASON) for letter in letters)
    # The first failures wait out the retry budget; what comes after the suspension is not sent.
    assert reasons[Reason.AUTH_FAILED.value] > 0
    assert set(reasons) <= {Reason.AUTH_FAILED.value, Reason.CONNECTOR_SUSPENDED.value}
    assert {letter.header("ddsync.connector_id") for letter in letters} == {"broken"}
    assert "connector broken suspended (auth_failed)" in process.output()
    # Coalescing is per window: a contact's latest transition of each window is dead-lettered
    # and covers the earlier ones. Epoch-aligned windows can cut the backlog anywhere, so a
    # contact and book may own one letter per window it appeared in, never a record twice.
    letter_ids = [letter.event()["event_id"] for letter in letters]
    assert len(letter_ids) == len(set(letter_ids)), "a record was dead-lettered twice"
    broken_by_id = {orjson.loads(r.value)["event_id"]: r for r in broken_records}
    assert set(letter_ids) <= set(broken_by_id)
    latest: dict[tuple[bytes, int], str] = {}
    for r in broken_records:
        event = orjson.loads(r.value)
        latest[(r.key, event["address_book_id"])] = event["event_id"]
    assert set(latest.values()) <= set(letter_ids), "a contact's latest transition is missing"
    assert len(letters) < len(broken_records), "nothing was coalesced"
    assert "not-the-password" not in process.output()


def test_a_broken_connector_carrying_most_traffic_does_not_stop_the_other(
    kafka: KafkaCluster, tmp_path: Path, scenarios: list[Scenario]
) -> None:
    # The failure: 90% of the deliveries failing (one account's revoked password) opened
    # the breaker and stopped both connectors. A small breaker window makes it show at once.
    good = Account("healthy@apiconnector.com", "r1", (1,))
    broken = Account("revoked@apiconnector.com", "r1", (5, 6, 7, 8, 9))
    breaker = "[dead_letter]\nbreaker_window = 100\nbreaker_ratio = 0.9\nbreaker_min_records = 50\n"
    port = free_port()
    scenario = Scenario(
        kafka, tmp_path, {"good": good, "broken": broken}, "--no-rate-limits",
        window_seconds=1.0, retry_timeout_seconds=3, requests_per_minute=100_000, extra=breaker,
        metrics_port=port,
    )  # fmt: skip
    scenarios.append(scenario)
    scenario.env[password_env("broken")] = "revoked-password"
    targets = [Target("good", 1)] + [Target("broken", b) for b in broken.address_books]
    records = list(generate(targets, 3000, profiles=600, seed=31))
    scenario.produce(records[:2000])
    process = scenario.start_ddsync()
    scenario.wait_caught_up(timeout=120)
    # Suspended by now: what comes next of the broken connector is not sent at all.
    scenario.produce(records[2000:])
    scenario.wait_caught_up(timeout=60)
    assert "circuit breaker OPEN" not in process.output()
    suspended = scrape(port, by=("ddsync_connector_suspended", "connector"))
    assert suspended == {"good": 0.0, "broken": 1.0}
    assert process.terminate() == 0
    good_records = [r for r in records if b'"connector_id":"good"' in r.value]
    assert (
        scenario.sandbox.members(good.username, 1) == expected_membership(good_records)[("good", 1)]
    )
    letters = read_topic(kafka.bootstrap_servers, scenario.dead_letter_topic, 1)
    reasons = Counter(letter.header(H_REASON) for letter in letters)
    assert set(reasons) == {Reason.AUTH_FAILED.value, Reason.CONNECTOR_SUSPENDED.value}, reasons
    assert {letter.header("ddsync.connector_id") for letter in letters} == {"broken"}
    second_wave = {orjson.loads(r.value)["event_id"] for r in records[2000:]}
    for letter in letters:
        if letter.event()["event_id"] in second_wave:
            assert letter.header(H_REASON) == Reason.CONNECTOR_SUSPENDED.value


def test_one_flapping_rejected_contact_weighs_once_in_the_breaker(
    kafka: KafkaCluster, tmp_path: Path, scenarios: list[Scenario]
) -> None:
    # 200 records of one contact in one window, coalesced to one import DotDigital rejects: one
    # failed contact, not 200 failures (which opened a breaker of 50 before).
    breaker = "[dead_letter]\nbreaker_window = 100\nbreaker_ratio = 0.9\nbreaker_min_records = 50\n"
    account = Account("flap@apiconnector.com", "r1", (1,))
    scenario = Scenario(
        kafka, tmp_path, {"main": account}, "--no-rate-limits",
        window_seconds=2.0, requests_per_minute=100_000, extra=breaker,
    )  # fmt: skip
    scenarios.append(scenario)
    target = Target("main", 1)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    flaps = [
        DemoRecord(
            b"flapper",
            orjson.dumps(
                transition(
                    event_id=f"flap-{n}", profile_id="flapper", email="flapper@example.",
                    target=target, action="add" if n % 2 else "remove", occurred_at=at,
                )
            ),
            "rejected" if n == 199 else None,
        )
        for n in range(200)
    ]  # fmt: skip
    assert orjson.loads(flaps[-1].value)["action"] == "add"
    scenario.produce(flaps)
    process = scenario.start_ddsync()

    def flushed() -> bool:
        committed, ends = committed_and_end(
            kafka.bootstrap_servers, scenario.group, scenario.topic, PARTITIONS
        )
        return sum(max(c, 0) for c in committed) == sum(ends) == 200  # one key: one partition

    wait_until(flushed, 60, "the flapping contact was not flushed", process=process.process)
    time.sleep(1)  # a tick: the pipeline notices an open breaker on its next one
    output = process.output()
    assert "circuit breaker OPEN" not in output, output[-3000:]
    assert process.terminate() == 0
    letters = read_topic(kafka.bootstrap_servers, scenario.dead_letter_topic, 1)
    assert [letter.header(H_REASON) for letter in letters] == [Reason.CONTACT_REJECTED.value]


def test_a_second_instance_joins_mid_run(
    kafka: KafkaCluster, tmp_path: Path, scenarios: list[Scenario]
) -> None:
    books = tuple(range(1, 31))
    # A small buffer cap: both instances pause and resume under backpressure while partitions
    # move between them, so a partition must not stay paused after changing hands.
    scenario = Scenario(
        kafka, tmp_path, {"main": Account("pair@apiconnector.com", "r1", books)},
        "--no-rate-limits", "--import-delay", "0.2", "--latency", "0.01",
        window_seconds=1.0, requests_per_minute=100_000, max_buffered_records=400,
    )  # fmt: skip
    scenarios.append(scenario)
    records = list(generate([Target("main", b) for b in books], 8000, bad_share=0.01, seed=21))
    third = len(records) // 3
    scenario.produce(records[:third])
    first = scenario.start_ddsync()
    time.sleep(3)
    second = scenario.start_ddsync()
    scenario.produce(records[third : 2 * third])
    time.sleep(3)
    scenario.produce(records[2 * third :])
    scenario.wait_caught_up(timeout=300)
    assert first.terminate() == 0
    assert second.terminate() == 0
    assert re.search(r"assigned .*\[\d+\]", second.output()), "the second got no partition"
    assert "pausing" in first.output() + second.output(), "backpressure never engaged"
    scenario.assert_membership(records)
    scenario.assert_dead_letters(records, repeats=True)


def test_the_circuit_breaker_stops_consuming(
    kafka: KafkaCluster, tmp_path: Path, scenarios: list[Scenario]
) -> None:
    breaker = "[dead_letter]\nbreaker_window = 100\nbreaker_ratio = 0.9\nbreaker_min_records = 50\n"
    scenario = Scenario(
        kafka, tmp_path, {"main": Account("breaker@apiconnector.com", "r1", (1,))},
        window_seconds=1.0, extra=breaker,
    )  # fmt: skip
    scenarios.append(scenario)
    junk = [DemoRecord(f"k{n}".encode(), b"not json", "not_json") for n in range(2000)]
    scenario.produce(junk)
    process = scenario.start_ddsync()
    wait_until(
        lambda: "circuit breaker OPEN" in process.output(), 60, "the breaker did not open",
        process=process.process,
    )  # fmt: skip
    time.sleep(3)
    assert process.alive(), "the process should stay up (metrics, an operator's look)"
    committed, _ = committed_and_end(
        kafka.bootstrap_servers, scenario.group, scenario.topic, PARTITIONS
    )
    # It stops within about a window of the breaker's (100 records), not a poll's (500).
    assert sum(max(c, 0) for c in committed) <= 200, "it kept consuming"
    letters = read_topic(kafka.bootstrap_servers, scenario.dead_letter_topic, 1, timeout=10)
    assert len(letters) <= 200
    assert process.terminate() == 0


def test_a_bad_configuration_fails_with_one_clear_line(tmp_path: Path) -> None:
    result = run_with_config(
        tmp_path,
        '[kafka]\nbootstrap_servers = "127.0.0.1:9"\n[batching]\nmax_contacts = "many"\n'
        '[connectors.main]\nusername = "u"\npassword_env = "X"\n',
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ddsync: batching.max_contacts must be an integer, got 'many'"
    ]


def test_a_bad_librdkafka_setting_fails_with_one_clear_line(tmp_path: Path) -> None:
    result = run_with_config(
        tmp_path,
        '[kafka]\nbootstrap_servers = "127.0.0.1:9"\n[kafka.consumer]\n"no.such.setting" = 1\n'
        '[connectors.main]\nusername = "u"\npassword_env = "PW"\n',
        {"PW": "x"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ddsync: kafka.consumer: ")
    assert "no.such.setting" in lines[0]


def test_a_realistic_backlog_with_the_default_breaker_syncs_exactly(
    kafka: KafkaCluster, tmp_path: Path, scenarios: list[Scenario]
) -> None:
    # 3% bad records spread through a backlog, 2% duplicates, addresses as people type them;
    # the breaker, the window (20 minutes) and the batch size at their defaults. The windows do
    # not close during the test: batches leave when full, and the rest on shutdown.
    books = tuple(range(1, 21))
    port = free_port()
    scenario = Scenario(
        kafka, tmp_path, {"main": Account("realistic@apiconnector.com", "r1", books)},
        "--no-rate-limits", "--import-delay", "0.05",
        window_seconds=1200.0, requests_per_minute=100_000, metrics_port=port,
    )  # fmt: skip
    scenarios.append(scenario)
    records = list(realistic([Target("main", b) for b in books], 20_000, seed=17))
    bad = [r for r in records if r.bad]
    scenario.produce(records)
    process = scenario.start_ddsync()

    def consumed() -> bool:
        try:
            metrics = scrape(port)
        except OSError:
            return False
        return metrics.get("ddsync_records_consumed_total") == len(records) and metrics.get(
            "ddsync_records_dead_lettered_total", 0
        ) >= sum(1 for r in bad if r.bad != "rejected")

    wait_until(consumed, 120, "the backlog was not read", process=process.process)
    assert "circuit breaker OPEN" not in process.output()
    assert scrape(port)["ddsync_dead_letter_circuit_open"] == 0
    assert process.terminate() == 0, process.output()[-3000:]  # flushes what the windows hold
    assert "circuit breaker OPEN" not in process.output()
    assert scenario.caught_up(), "the shutdown did not commit everything"
    scenario.assert_membership(records)
    scenario.assert_dead_letters(records)
    print(f"\nrealistic backlog: {len(records)} records, {len(bad)} bad; breaker stayed closed")


def test_a_wrong_password_for_the_only_connector_opens_the_default_breaker(
    kafka: KafkaCluster, tmp_path: Path, scenarios: list[Scenario]
) -> None:
    books = (1, 2, 3, 4, 5)
    scenario = Scenario(
        kafka, tmp_path, {"main": Account("only@apiconnector.com", "r1", books)},
        "--no-rate-limits", window_seconds=1.0, retry_timeout_seconds=3,
        requests_per_minute=100_000,
    )  # fmt: skip
    scenarios.append(scenario)
    scenario.env[password_env("main")] = "not-the-password"
    records = list(realistic([Target("main", b) for b in books], 5_000, seed=23))
    scenario.produce(records)
    process = scenario.start_ddsync()
    wait_until(
        lambda: "circuit breaker OPEN" in process.output(), 120, "the breaker did not open",
        process=process.process,
    )  # fmt: skip
    time.sleep(2)  # dead letters decided before it opened reach the topic
    assert process.alive(), "the process stays up for an operator to look"
    letters = read_topic(kafka.bootstrap_servers, scenario.dead_letter_topic, 1, timeout=10)
    reasons = Counter(letter.header(H_REASON) for letter in letters)
    failed = reasons.pop(Reason.AUTH_FAILED.value, 0)
    decoded_bad = sum(1 for r in records if r.bad and r.bad != "rejected")
    # The only connector suspended is every connector suspended: the breaker opens on the
    # first failure, before any of its records is dead-lettered; they stay uncommitted.
    assert failed == 0
    assert sum(reasons.values()) <= decoded_bad
    assert "every connector is suspended" in process.output()
    committed, ends = committed_and_end(
        kafka.bootstrap_servers, scenario.group, scenario.topic, PARTITIONS
    )
    assert sum(max(c, 0) for c in committed) < sum(ends), "it did not empty the topic"
    assert process.terminate() == 0
    print(
        f"\nwrong password, only connector: breaker opened with {failed} auth_failed letters "
        f"(and {sum(reasons.values())} invalid records at decode) of {len(records)} records"
    )
