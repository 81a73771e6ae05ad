"""An end-to-end scenario: ddsync as real processes against the real broker and the sandbox as
a real process, and the checks of its end state against what the input says it must be.

:class:`Scenario` makes a topic of :data:`PARTITIONS` partitions, names a dead-letter topic
(ddsync creates it at start) and a group, starts the sandbox with the given accounts and writes
the configuration; :meth:`Scenario.start_ddsync` starts a ddsync process on it. Call
:meth:`Scenario.close` when done (a fixture's teardown, an ``ExitStack``).
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Unpack

from stream.core.deadletter_format import H_REASON
from stream.core.reasons import Reason
from stream.demo.generator import DemoRecord
from tests.support.kafka import KafkaCluster
from tests.support.processes import (
    Account,
    ConfigOptions,
    DdsyncProcess,
    SandboxProcess,
    caught_up,
    expected_membership,
    password_env,
    produce,
    read_topic,
    write_config,
)
from tests.support.waiting import wait_until

PARTITIONS = 6
EXPECTED_REASON = {
    "not_json": Reason.INVALID_EVENT,
    "wrong_shape": Reason.INVALID_EVENT,
    "missing_identifier": Reason.MISSING_IDENTIFIER,
    "malformed_email": Reason.MISSING_IDENTIFIER,
    "unknown_connector": Reason.UNKNOWN_CONNECTOR,
    "rejected": Reason.CONTACT_REJECTED,
}


def expected_reason(record: DemoRecord) -> Reason:
    """The dead-letter reason of a bad record (``record.bad`` names its kind)."""
    assert record.bad is not None, "a good record has no dead-letter reason"
    return EXPECTED_REASON[record.bad]


class Scenario:
    """A topic, a dead-letter topic, a group, a sandbox and a config file for one test."""

    def __init__(
        self,
        kafka: KafkaCluster,
        workdir: Path,
        accounts: dict[str, Account],
        *sandbox_args: str,
        **config: Unpack[ConfigOptions],
    ) -> None:
        self.kafka = kafka
        self.workdir = workdir
        self.accounts = accounts
        self.topic = kafka.create_topic(partitions=PARTITIONS)
        # Not created here: ddsync creates its dead-letter topic at start, as in production.
        self.dead_letter_topic = kafka.unique_topic("dlq")
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
            **config,
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
        return caught_up(self.kafka.bootstrap_servers, self.group, self.topic, PARTITIONS)

    def wait_caught_up(self, timeout: float) -> None:
        try:
            wait_until(
                self.caught_up, timeout, "committed offsets did not reach the end", interval=1
            )
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

    def assert_dead_letters(self, records: list[DemoRecord], *, repeats: bool = False) -> int:
        """Every bad record is on the dead-letter topic with its reason, and nothing else is;
        with ``repeats`` (after a crash or a rebalance) some may be there twice. Returns how
        many were written more than once."""
        bad = [r for r in records if r.bad]
        letters = read_topic(self.kafka.bootstrap_servers, self.dead_letter_topic, len(bad))
        got = Counter((letter.key, letter.value, letter.header(H_REASON)) for letter in letters)
        want = Counter((r.key, r.value, expected_reason(r).value) for r in bad)
        if repeats:
            assert set(got) == set(want)
        else:
            assert got == want
        return sum(got.values()) - len(got)

    def close(self) -> None:
        for process in self.processes:
            if process.alive():
                process.kill()
        self.sandbox.stop()
