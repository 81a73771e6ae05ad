"""SIGTERM ends ddsync within ``batching.shutdown_timeout_seconds`` in its worst states.

ddsync runs as a process with the production defaults for every bound (revokes wait up to
10 + 120 + 5 s, the shutdown flush 30 s, retries 600 s, the bound 50 s), against the sandbox as
a process and a real broker, and is sent SIGTERM while it is inside a revoke that waits for a
DotDigital that never finishes its imports, while every flush is held by the rate limiter,
while DotDigital does not answer (the sandbox frozen with SIGSTOP), and while its broker does
not answer (a broker of the test's own, frozen with SIGSTOP: commits and close hang). Each test
asserts the exit within the bound, and that no committed offset passes a record that was not
final: every record is an add of its own contact, so a good record is final only when its
contact is in its address book, a bad one once it is on the dead-letter topic.

The seconds from SIGTERM to exit are printed (the figures the README quotes).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import localkafka
import orjson
import pytest
from confluent_kafka import Producer

from stream.demo.generator import Target, transition
from stream.exitcodes import ExitCode
from stream.settings import BatchingSettings, DispatchSettings
from tests.support.kafka import KafkaCluster
from tests.support.processes import (
    Account,
    DdsyncProcess,
    SandboxProcess,
    committed_and_end,
    password_env,
    read_topic,
    write_config,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.sandbox, pytest.mark.process]

BOUND = BatchingSettings.shutdown_timeout_seconds
PARTITIONS = 4
BAD_PER_PARTITION = 2
GOOD_PER_PARTITION = 5
USER = "shutdown@apiconnector.com"
BOOKS = tuple(range(1, PARTITIONS + 1))


class Input:
    """Per partition: a few bad records (dead-lettered: final once acknowledged), then adds of
    contacts of their own, one address book per partition."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.records: dict[int, list[tuple[int, str | None]]] = {}  # partition -> (book, email)
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        for partition in range(PARTITIONS):
            book = BOOKS[partition]
            rows: list[tuple[int, str | None]] = []
            for n in range(BAD_PER_PARTITION):
                producer.produce(
                    topic, key=f"bad{n}".encode(), value=b"not json", partition=partition
                )
                rows.append((book, None))
            for n in range(GOOD_PER_PARTITION):
                email = f"p{partition}-{n}-{uuid.uuid4().hex[:6]}@example.com"
                value = transition(
                    event_id=uuid.uuid4().hex,
                    profile_id=email.split("@")[0],
                    email=email,
                    target=Target("main", book),
                    action="add",
                    occurred_at=datetime.now(UTC),
                )
                producer.produce(
                    topic, key=email.encode(), value=orjson.dumps(value), partition=partition
                )
                rows.append((book, email))
            self.records[partition] = rows
        assert producer.flush(60) == 0

    def assert_only_final_committed(
        self, sandbox: SandboxProcess, bootstrap: str, group: str, topic: str, dlq: str
    ) -> list[int]:
        """No committed offset passes a record that is not final; returns the offsets."""
        letters = read_topic(bootstrap, dlq, PARTITIONS * BAD_PER_PARTITION, timeout=30)
        assert len(letters) >= PARTITIONS * BAD_PER_PARTITION
        members = {book: sandbox.members(USER, book) for book in BOOKS}
        committed, _ = committed_and_end(bootstrap, group, topic, PARTITIONS)
        for partition, offset in enumerate(committed):
            for book, email in self.records[partition][: max(offset, 0)]:
                assert email is None or email in members[book], (
                    f"partition {partition} committed at {offset}, past {email}, not synced"
                )
        return committed


def start_sandbox(workdir: Path, *args: str, **account: object) -> SandboxProcess:
    return SandboxProcess(workdir, [Account(USER, "r1", BOOKS, extra=account)], *args)


def start_ddsync(
    workdir: Path,
    bootstrap: str,
    topic: str,
    dlq: str,
    group: str,
    sandbox: SandboxProcess,
    name: str,
    requests_per_minute: int | None = None,
    kafka_extra: str = "",
) -> DdsyncProcess:
    path = write_config(
        workdir / f"{name}.toml",
        bootstrap=bootstrap,
        topics=[topic],
        dead_letter_topic=dlq,
        group=group,
        connectors={"main": (USER, sandbox.discovery_url)},
        window_seconds=1.0,
        retry_timeout_seconds=DispatchSettings.retry_timeout_seconds,
        requests_per_minute=requests_per_minute,
        kafka_extra=kafka_extra,
    )
    return DdsyncProcess(
        path, workdir / f"{name}.log", {password_env("main"): "sandbox-secret-password"}
    )


def terminate_timed(process: DdsyncProcess) -> tuple[int, float]:
    """SIGTERM, then the exit status and the seconds it took (the test fails at the bound +
    10 s, not at Kubernetes' SIGKILL)."""
    started = time.monotonic()
    process.process.send_signal(signal.SIGTERM)
    status = process.process.wait(BOUND + 10)
    return status, time.monotonic() - started


def imports_accepted(sandbox: SandboxProcess) -> int:
    calls: dict[str, dict[str, int]] = sandbox.control("stats")["calls"]
    return calls.get(USER, {}).get("add", 0)


@pytest.fixture
def processes() -> Iterator[list[DdsyncProcess | SandboxProcess]]:
    started: list[DdsyncProcess | SandboxProcess] = []
    yield started
    for each in started:
        if isinstance(each, DdsyncProcess):
            if each.alive():
                each.kill()
        else:
            each.stop()


def test_sigterm_inside_a_revoke_waiting_for_a_stuck_dotdigital(
    kafka: KafkaCluster, tmp_path: Path, processes: list[DdsyncProcess | SandboxProcess]
) -> None:
    # Imports are accepted and never finish: a revoke would wait 10 s for the flushes, then
    # 120 s for the jobs, then the shutdown flush 30 s more.
    sandbox = start_sandbox(tmp_path, "--no-rate-limits", import_delay_seconds=1e9)
    processes.append(sandbox)
    topic = kafka.create_topic(partitions=PARTITIONS)
    dlq, group = kafka.unique_topic("dlq"), f"shutdown-{uuid.uuid4().hex[:8]}"
    data = Input(kafka.bootstrap_servers, topic)
    first = start_ddsync(tmp_path, kafka.bootstrap_servers, topic, dlq, group, sandbox, "first")
    processes.append(first)
    wait_until(
        lambda: imports_accepted(sandbox) >= PARTITIONS, 60, "imports", process=first.process
    )
    # A second member joins: the first gives up half its partitions, inside a revoke that waits.
    second = start_ddsync(tmp_path, kafka.bootstrap_servers, topic, dlq, group, sandbox, "second")
    processes.append(second)
    wait_until(lambda: "revoked " in first.output(), 60, "a revoke", process=first.process)
    time.sleep(2)
    assert "shutting down" not in first.output()
    status, seconds = terminate_timed(first)
    print(f"\nSIGTERM inside a revoke (DotDigital stuck): exit {status} after {seconds:.1f} s")
    assert status == ExitCode.OK, first.output()[-3000:]
    assert seconds < BOUND, first.output()[-3000:]
    second.kill()
    committed = data.assert_only_final_committed(
        sandbox, kafka.bootstrap_servers, group, topic, dlq
    )
    # The dead letters ahead of the stuck imports were final: committed, and no further.
    assert committed == [BAD_PER_PARTITION] * PARTITIONS, first.output()[-3000:]


def test_sigterm_while_every_flush_waits_for_the_rate_limiter(
    kafka: KafkaCluster, tmp_path: Path, processes: list[DdsyncProcess | SandboxProcess]
) -> None:
    sandbox = start_sandbox(tmp_path, import_delay_seconds=0.1)
    processes.append(sandbox)
    topic = kafka.create_topic(partitions=PARTITIONS)
    dlq, group = kafka.unique_topic("dlq"), f"shutdown-{uuid.uuid4().hex[:8]}"
    data = Input(kafka.bootstrap_servers, topic)
    # One call a minute: the first import goes, the others wait for the limiter.
    ddsync = start_ddsync(
        tmp_path, kafka.bootstrap_servers, topic, dlq, group, sandbox, "throttled",
        requests_per_minute=1,
    )  # fmt: skip
    processes.append(ddsync)
    wait_until(lambda: imports_accepted(sandbox) >= 1, 60, "an import", process=ddsync.process)
    time.sleep(3)
    status, seconds = terminate_timed(ddsync)
    print(f"\nSIGTERM while throttled: exit {status} after {seconds:.1f} s")
    assert status == ExitCode.OK, ddsync.output()[-3000:]
    assert seconds < BOUND, ddsync.output()[-3000:]
    assert imports_accepted(sandbox) < PARTITIONS, "not throttled after all"
    data.assert_only_final_committed(sandbox, kafka.bootstrap_servers, group, topic, dlq)


def test_sigterm_while_the_broker_does_not_answer(
    tmp_path: Path, processes: list[DdsyncProcess | SandboxProcess]
) -> None:
    state_dir = tmp_path / "kafka"
    broker = localkafka.start(state_dir)
    frozen = False
    try:
        cluster = KafkaCluster(broker.bootstrap_servers, "a broker of this test's own")
        # Imports finish a few seconds after they were accepted: after the broker froze, so
        # that the commit of their records waits for it.
        sandbox = start_sandbox(tmp_path, "--no-rate-limits", import_delay_seconds=4)
        processes.append(sandbox)
        topic = cluster.create_topic(partitions=PARTITIONS)
        dlq, group = cluster.unique_topic("dlq"), f"shutdown-{uuid.uuid4().hex[:8]}"
        data = Input(cluster.bootstrap_servers, topic)
        # Without the outcomes topic: with it, records synced after the freeze cannot become
        # final (their outcomes wait for the broker), so no commit would wait for it; this test
        # is about the shutdown that a commit to a frozen broker holds.
        ddsync = start_ddsync(
            tmp_path, cluster.bootstrap_servers, topic, dlq, group, sandbox, "broker-down",
            kafka_extra="publish_outcomes = false",
        )  # fmt: skip
        processes.append(ddsync)
        wait_until(
            lambda: imports_accepted(sandbox) >= PARTITIONS, 60, "imports", process=ddsync.process
        )
        # The broker stops answering without closing its connections: commits and the group
        # leave wait for it.
        os.kill(broker.pid, signal.SIGSTOP)
        frozen = True
        wait_until(
            lambda: all(sandbox.members(USER, book) for book in BOOKS),
            30,
            "synced",
            process=ddsync.process,
        )
        time.sleep(2)  # a commit of the synced records is waiting for the broker
        status, seconds = terminate_timed(ddsync)
        print(f"\nSIGTERM with the broker not answering: exit {status} after {seconds:.1f} s")
        assert seconds < BOUND, ddsync.output()[-3000:]
        assert status == ExitCode.UNAVAILABLE, ddsync.output()[-3000:]
        assert "nothing more is committed" in ddsync.output()
        # The log says where the consumer thread waits: here, in a commit to the frozen broker.
        waits_in = ddsync.output().split("it waits in:", 1)
        assert len(waits_in) == 2, ddsync.output()[-3000:]
        assert "in _commit" in waits_in[1], waits_in[1][:3000]
        os.kill(broker.pid, signal.SIGCONT)
        frozen = False
        data.assert_only_final_committed(sandbox, cluster.bootstrap_servers, group, topic, dlq)
    finally:
        if frozen:
            os.kill(broker.pid, signal.SIGCONT)
        for each in processes:
            if isinstance(each, DdsyncProcess) and each.alive():
                each.kill()
        localkafka.stop(state_dir)


def test_sigterm_while_dotdigital_does_not_answer(
    kafka: KafkaCluster, tmp_path: Path, processes: list[DdsyncProcess | SandboxProcess]
) -> None:
    sandbox = start_sandbox(tmp_path, "--no-rate-limits", import_delay_seconds=0.1)
    processes.append(sandbox)
    topic = kafka.create_topic(partitions=PARTITIONS)
    dlq, group = kafka.unique_topic("dlq"), f"shutdown-{uuid.uuid4().hex[:8]}"
    data = Input(kafka.bootstrap_servers, topic)
    # Frozen before ddsync's first call: connections are accepted, nothing is answered (a
    # request would wait out DotDigital's 121 s timeout, then be retried for 600 s).
    os.kill(sandbox.process.pid, signal.SIGSTOP)
    try:
        ddsync = start_ddsync(
            tmp_path, kafka.bootstrap_servers, topic, dlq, group, sandbox, "unreachable"
        )
        processes.append(ddsync)
        wait_until(lambda: "assigned " in ddsync.output(), 60, "assigned", process=ddsync.process)
        time.sleep(5)  # windows closed: every flush waits for DotDigital
        status, seconds = terminate_timed(ddsync)
    finally:
        os.kill(sandbox.process.pid, signal.SIGCONT)
    print(f"\nSIGTERM while DotDigital does not answer: exit {status} after {seconds:.1f} s")
    assert status == ExitCode.OK, ddsync.output()[-3000:]
    assert seconds < BOUND, ddsync.output()[-3000:]
    committed = data.assert_only_final_committed(
        sandbox, kafka.bootstrap_servers, group, topic, dlq
    )
    assert committed == [BAD_PER_PARTITION] * PARTITIONS, ddsync.output()[-3000:]
