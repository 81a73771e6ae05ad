"""ddsync as a real process against a real broker and the sandbox as a real process.

Each test checks the end state against what the input says it must be: every address book's
members equal the membership computed from the transitions in order, every bad record is on the
dead-letter topic with the right reason, and the committed offsets reached the end offsets.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from stream.deadletter_headers import H_REASON, Reason
from stream.demo import DemoRecord, Target, generate
from tests.conftest import KafkaCluster
from tests.support.processes import (
    Account,
    DdsyncProcess,
    SandboxProcess,
    committed_and_end,
    expected_membership,
    password_env,
    produce,
    read_topic,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration

PARTITIONS = 6
EXPECTED_REASON = {
    "not_json": Reason.INVALID_EVENT,
    "wrong_shape": Reason.INVALID_EVENT,
    "missing_identifier": Reason.MISSING_IDENTIFIER,
    "unknown_connector": Reason.UNKNOWN_CONNECTOR,
    "rejected": Reason.CONTACT_REJECTED,
}


class Scenario:
    """A topic, a dead-letter topic, a group, a sandbox and a config file for one test."""

    def __init__(
        self,
        kafka: KafkaCluster,
        workdir: Path,
        accounts: dict[str, Account],
        *sandbox_args: str,
        **config: object,
    ) -> None:
        self.kafka = kafka
        self.workdir = workdir
        self.accounts = accounts
        self.topic = kafka.create_topic(partitions=PARTITIONS)
        self.dead_letter_topic = kafka.create_topic(partitions=1)
        self.group = f"ddsync-{uuid.uuid4().hex[:8]}"
        self.sandbox = SandboxProcess(workdir, accounts.values(), *sandbox_args)
        self.config = write_config(
            workdir / "ddsync.toml",
            bootstrap=kafka.bootstrap_servers,
            topics=[self.topic],
            dead_letter_topic=self.dead_letter_topic,
            group=self.group,
            connectors={
                name: (account.username, self.sandbox.discovery_url)
                for name, account in accounts.items()
            },
            **config,  # type: ignore[arg-type]
        )
        self.env = {password_env(name): a.password for name, a in accounts.items()}
        self.processes: list[DdsyncProcess] = []

    def start_ddsync(self) -> DdsyncProcess:
        log = self.workdir / f"ddsync-{len(self.processes)}.log"
        process = DdsyncProcess(self.config, log, self.env)
        self.processes.append(process)
        return process

    def produce(self, records: list[DemoRecord]) -> None:
        produce(self.kafka.bootstrap_servers, self.topic, records)

    def caught_up(self) -> bool:
        try:
            committed, ends = committed_and_end(
                self.kafka.bootstrap_servers, self.group, self.topic, PARTITIONS
            )
        except KafkaException:  # e.g. the group coordinator is still being elected
            return False
        return committed == ends

    def wait_caught_up(self, timeout: float) -> None:
        try:
            wait_until(self.caught_up, timeout, "committed offsets did not reach the end", None, 1)
        except AssertionError:
            for process in self.processes:
                print(process.output()[-5000:])
            raise

    def assert_membership(self, records: list[DemoRecord]) -> None:
        expected = expected_membership(records)
        for name, account in self.accounts.items():
            for book in account.address_books:
                members = self.sandbox.members(account.username, book)
                assert members == expected.get((name, book), set()), f"{name}/{book} differs"

    def assert_dead_letters(self, records: list[DemoRecord]) -> None:
        bad = [r for r in records if r.bad]
        letters = read_topic(self.kafka.bootstrap_servers, self.dead_letter_topic, len(bad))
        got = Counter((letter.key, letter.value, letter.header(H_REASON)) for letter in letters)
        want = Counter((r.key, r.value, EXPECTED_REASON[r.bad].value) for r in bad)
        assert got == want

    def close(self) -> None:
        for process in self.processes:
            if process.alive():
                process.kill()
        self.sandbox.stop()


@pytest.fixture
def scenarios() -> list[Scenario]:
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
