"""Every Kafka client of ddsync against a secured cluster.

A broker of this module's own (``localkafka.start`` with a SASL user) has a SASL_PLAINTEXT
listener with the PLAIN mechanism; ddsync, and every helper of these tests, is given only that
address, with ``security.protocol``, ``sasl.mechanism`` and ``sasl.username`` in
``[kafka.consumer]`` and the password in ``[kafka.secrets]`` from the environment. So ``run``
(its consumer, its dead-letter producer, its start-up admin client), ``replay`` (its consumer
and producer) and ``check`` each work only if they are built with the connection settings and
the secret. The shared test broker is never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import localkafka
import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from stream.core.deadletter_format import H_REASON, H_REPLAY_COUNT
from stream.demo.generator import DemoRecord, Target, generate
from stream.exitcodes import ExitCode
from tests.support.processes import (
    PASSWORD,
    Account,
    DdsyncProcess,
    SandboxProcess,
    caught_up,
    committed_and_end,
    expected_membership,
    password_env,
    produce,
    read_topic,
    write_config,
)
from tests.support.scenario import EXPECTED_REASON, expected_reason
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.sandbox, pytest.mark.process]

KAFKA_USER = "ddsync"
KAFKA_PASSWORD = "kafka-sasl-secret-4d1f9c"
KAFKA_PASSWORD_ENV = "DDSYNC_TEST_KAFKA_SASL_PASSWORD"
# What [kafka.consumer] says; the password comes from [kafka.secrets].
SASL = {
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanism": "PLAIN",
    "sasl.username": KAFKA_USER,
}
DOTDIGITAL_USER = "sasl@apiconnector.com"
BOOKS = (31, 32, 33)
PARTITIONS = 3


@dataclass(frozen=True)
class SecuredCluster:
    """The SASL listener of a broker started for this module; its plaintext one goes unused."""

    bootstrap: str

    @staticmethod
    def client(password: str = KAFKA_PASSWORD) -> dict[str, Any]:
        """librdkafka settings of a client that authenticates as ``ddsync``."""
        return {**SASL, "sasl.password": password}

    def create_topic(self, partitions: int) -> str:
        name = f"sasl-{uuid.uuid4().hex[:10]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap, **self.client()})
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=30,
        )
        futures[name].result(timeout=60)
        return name

    def config(self, path: Path, sandbox: SandboxProcess, topic: str, **kw: Any) -> Path:
        """A ddsync configuration for this cluster, with the password from the environment."""
        return write_config(
            path,
            bootstrap=self.bootstrap,
            topics=[topic],
            dead_letter_topic=kw.pop("dead_letter_topic", f"sasl-dlq-{uuid.uuid4().hex[:8]}"),
            group=kw.pop("group", f"sasl-{uuid.uuid4().hex[:8]}"),
            connectors={"main": (DOTDIGITAL_USER, sandbox.discovery_url)},
            consumer_extra=SASL,
            secrets_env={"sasl.password": KAFKA_PASSWORD_ENV},
            **kw,
        )


def environment(kafka_password: str = KAFKA_PASSWORD) -> dict[str, str]:
    return {**os.environ, password_env("main"): PASSWORD, KAFKA_PASSWORD_ENV: kafka_password}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredCluster]:
    state_dir = tmp_path_factory.mktemp("secured-kafka")
    began = time.monotonic()
    try:
        broker = localkafka.start(state_dir, sasl_users={KAFKA_USER: KAFKA_PASSWORD})
    except localkafka.LocalKafkaError as exc:  # its message ends with the broker log's tail
        pytest.fail(f"the SASL broker did not start: {exc}")
    try:
        assert broker.sasl_bootstrap_servers is not None
        print(
            f"\nSASL broker ready at {broker.sasl_bootstrap_servers} "
            f"in {time.monotonic() - began:.1f} s"
        )
        yield SecuredCluster(broker.sasl_bootstrap_servers)
    finally:
        localkafka.stop(state_dir)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    process = SandboxProcess(
        tmp_path_factory.mktemp("sasl-sandbox"),
        [Account(DOTDIGITAL_USER, "r1", BOOKS)],
        "--import-delay",
        "0.05",
    )
    yield process
    process.stop()


@dataclass(frozen=True)
class Synced:
    """A stream ``ddsync run`` consumed to the end over SASL, and what it left behind."""

    topic: str
    dead_letter_topic: str
    config: Path
    records: list[DemoRecord]
    end_offsets: list[int]
    output: str

    @property
    def bad(self) -> list[DemoRecord]:
        return [r for r in self.records if r.bad]


@pytest.fixture(scope="module")
def synced(
    secured: SecuredCluster, sandbox: SandboxProcess, tmp_path_factory: pytest.TempPathFactory
) -> Synced:
    workdir = tmp_path_factory.mktemp("sasl-run")
    topic = secured.create_topic(PARTITIONS)
    dead_letter_topic = f"sasl-dlq-{uuid.uuid4().hex[:8]}"  # ddsync creates it at start
    group = f"sasl-{uuid.uuid4().hex[:8]}"
    records = list(generate([Target("main", b) for b in BOOKS], 300, bad_share=0.1, seed=17))
    assert {r.bad for r in records if r.bad} == set(EXPECTED_REASON), "not every bad kind"
    produce(secured.bootstrap, topic, records, secured.client())
    config = secured.config(
        workdir / "ddsync.toml",
        sandbox,
        topic,
        dead_letter_topic=dead_letter_topic,
        group=group,
        window_seconds=1.0,
    )

    def synced() -> bool:
        return caught_up(secured.bootstrap, group, topic, PARTITIONS, secured.client())

    began = time.monotonic()
    process = DdsyncProcess(config, workdir / "ddsync.log", environment())
    try:
        wait_until(
            synced, 50, "committed offsets did not reach the end",
            process=process.process, interval=0.5,
        )  # fmt: skip
        elapsed = time.monotonic() - began
        assert process.terminate() == ExitCode.OK, process.output()[-3000:]
    except AssertionError:
        print(process.output()[-5000:])
        raise
    finally:
        if process.alive():
            process.kill()
    print(f"\nddsync run over SASL: {len(records)} records committed to the end in {elapsed:.1f} s")
    _, ends = committed_and_end(secured.bootstrap, group, topic, PARTITIONS, secured.client())
    return Synced(topic, dead_letter_topic, config, records, ends, process.output())


def test_run_syncs_dead_letters_and_commits_over_sasl(
    secured: SecuredCluster, sandbox: SandboxProcess, synced: Synced
) -> None:
    assert sum(synced.end_offsets) == len(synced.records)
    expected = expected_membership(synced.records)
    for book in BOOKS:
        members = sandbox.members(DOTDIGITAL_USER, book)
        assert members == expected.get(("main", book), set()), f"book {book} differs"
    # Auto-creation is off on this broker too: the topic exists because ddsync created it.
    assert f"created dead-letter topic {synced.dead_letter_topic}" in synced.output
    letters = read_topic(
        secured.bootstrap, synced.dead_letter_topic, len(synced.bad), 30, secured.client()
    )
    got = Counter((letter.key, letter.value, letter.header(H_REASON)) for letter in letters)
    want = Counter((r.key, r.value, expected_reason(r).value) for r in synced.bad)
    assert got == want
    assert KAFKA_PASSWORD not in synced.output


def test_replay_reproduces_the_dead_letters_over_sasl(
    secured: SecuredCluster, synced: Synced
) -> None:
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "stream", "replay", "--config", str(synced.config), "--json"],
        capture_output=True, text=True, timeout=60, check=False, env=environment(),
    )  # fmt: skip
    print(f"\nddsync replay over SASL: {time.monotonic() - began:.1f} s")
    assert result.returncode == ExitCode.OK, result.stderr
    report = orjson.loads(result.stdout)
    # Reading the source partitions for newer transitions works over SASL too: each
    # dead-lettered record is replayed or superseded, none is unverifiable.
    assert (
        report["replayed"] + report["superseded"],
        report["unverifiable"],
        report["stopped"],
        report["error"],
    ) == (len(synced.bad), 0, "end", None)
    assert report["replayed"] > 0
    # The source topic now holds the stream and, once more, each replayed record.
    everything = len(synced.records) + report["replayed"]
    found = read_topic(secured.bootstrap, synced.topic, everything, 30, secured.client())
    replayed = [r for r in found if H_REPLAY_COUNT in r.headers]
    assert Counter((r.key, r.value) for r in found if H_REPLAY_COUNT not in r.headers) == Counter(
        (r.key, r.value) for r in synced.records
    )
    assert len(replayed) == report["replayed"]
    assert not Counter((r.key, r.value) for r in replayed) - Counter(
        (r.key, r.value) for r in synced.bad
    )
    assert {r.header(H_REPLAY_COUNT) for r in replayed} == {"1"}
    assert KAFKA_PASSWORD not in result.stdout + result.stderr


def test_check_reports_the_cluster_topics_and_lag_over_sasl(
    secured: SecuredCluster, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    topic = secured.create_topic(2)
    produce(secured.bootstrap, topic, generate([Target("main", BOOKS[0])], 20), secured.client())
    group = f"sasl-check-{uuid.uuid4().hex[:8]}"
    dead_letters = f"sasl-dlq-{uuid.uuid4().hex[:8]}"
    config = secured.config(
        tmp_path / "ddsync.toml", sandbox, topic, group=group, dead_letter_topic=dead_letters
    )
    result = subprocess.run(
        [sys.executable, "-m", "stream", "check", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False, env=environment(),
    )  # fmt: skip
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    checks = {c["name"]: (c["ok"], c["detail"]) for c in orjson.loads(result.stdout)["checks"]}
    # The broker answers with the listener it was reached on: the SASL one.
    assert checks["kafka"] == (True, f"1 brokers reachable ({secured.bootstrap})")
    assert checks[f"topic {topic}"] == (True, "2 partitions")
    assert checks[f"dead-letter topic {dead_letters}"] == (
        True,
        "does not exist yet; ddsync run creates it at start",
    )
    assert checks[f"lag {topic}"] == (
        True,
        f"group {group}: 20 records behind (2 of 2 partitions never committed)",
    )
    assert checks["api user"] == (True, f"{DOTDIGITAL_USER} (credentials accepted)")
    assert KAFKA_PASSWORD not in result.stdout + result.stderr


def test_a_wrong_sasl_password_stops_run_without_revealing_it(
    secured: SecuredCluster, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    topic = secured.create_topic(1)
    config = secured.config(tmp_path / "ddsync.toml", sandbox, topic)
    wrong = "not-the-kafka-password-91c2"
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "stream", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=90, check=False, env=environment(wrong),
    )  # fmt: skip
    elapsed = time.monotonic() - began
    lines = result.stderr.splitlines()
    print(
        f"\nwrong SASL password: exit {result.returncode} after {elapsed:.1f} s, {len(lines)} lines"
    )
    # The broker refuses the credentials: the start-up check says so at once, in one line,
    # and librdkafka's own lines went through ddsync's logging, not straight to stderr.
    assert result.returncode == ExitCode.UNAVAILABLE, result.stderr[-3000:]
    assert lines, "nothing on stderr"
    ours = [line for line in lines if line.startswith("ddsync:")]
    assert ours == [lines[-1]], "ddsync says why in one line, its last"
    assert ours[0].startswith(f"ddsync: Kafka at {secured.bootstrap} refused the credentials (")
    assert "SASL authentication error" in ours[0]
    assert ours[0].endswith("check the sasl.* / ssl.* settings and [kafka.secrets]")
    assert not [line for line in lines if line.startswith("%")], "raw librdkafka lines"
    assert elapsed < 30, "it waited out the authentication error"
    assert wrong not in result.stdout + result.stderr
    assert KAFKA_PASSWORD not in result.stdout + result.stderr
