"""``ddsync check`` asks the Kafka cluster what ``ddsync run`` needs of it, with the configured
settings: brokers, each topic's partitions, the dead-letter topic, and the group's lag."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from stream.demo.generator import Target, generate
from stream.exitcodes import ExitCode
from tests.support.kafka import KafkaCluster
from tests.support.processes import (
    PASSWORD,
    Account,
    SandboxProcess,
    password_env,
    produce,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.sandbox, pytest.mark.process]

USER = "apiuser-check@apiconnector.com"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    process = SandboxProcess(tmp_path_factory.mktemp("sandbox"), [Account(USER, "r1", (11,))])
    yield process
    process.stop()


def check(
    kafka: KafkaCluster, sandbox: SandboxProcess, tmp_path: Path, topics: list[str], **kw: Any
) -> tuple[int, dict[str, tuple[bool, str]]]:
    config = write_config(
        tmp_path / "ddsync.toml",
        bootstrap=kw.pop("bootstrap", kafka.bootstrap_servers),
        topics=topics,
        dead_letter_topic=kw.pop("dead_letter_topic", kafka.unique_topic("dlq")),
        group=kw.pop("group", f"check-{uuid.uuid4().hex[:8]}"),
        connectors={"main": (USER, sandbox.discovery_url)},
        **kw,
    )
    result = subprocess.run(
        [sys.executable, "-m", "stream", "check", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, password_env("main"): PASSWORD},
    )  # fmt: skip
    report = orjson.loads(result.stdout)
    assert report["ok"] == (result.returncode == ExitCode.OK)
    return result.returncode, {c["name"]: (c["ok"], c["detail"]) for c in report["checks"]}


def test_a_ready_cluster_passes_with_the_groups_lag(
    kafka: KafkaCluster, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    topic = kafka.create_topic(partitions=3)
    produce(kafka.bootstrap_servers, topic, list(generate([Target("main", 11)], 30, seed=2)))
    group = f"check-{uuid.uuid4().hex[:8]}"
    # The group committed all of partition 0 but its last record, and nothing of the others.
    committer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    _, end0 = committer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
    assert end0 > 0, "partition 0 got no record"
    committer.commit(offsets=[TopicPartition(topic, 0, end0 - 1)], asynchronous=False)
    committer.close()
    dead_letters = kafka.unique_topic("dlq")
    status, checks = check(
        kafka, sandbox, tmp_path, [topic], group=group, dead_letter_topic=dead_letters
    )
    assert status == ExitCode.OK, checks
    assert checks["kafka"][0]
    assert checks["kafka"][1].startswith("1 brokers reachable (")
    assert checks[f"topic {topic}"] == (True, "3 partitions")
    assert checks[f"dead-letter topic {dead_letters}"] == (
        True,
        "does not exist yet; ddsync run creates it at start",
    )
    ok, lag = checks[f"lag {topic}"]
    assert ok
    behind = 30 - end0 + 1
    assert lag == f"group {group}: {behind} records behind (2 of 3 partitions never committed)"
    assert checks["api user"] == (True, f"{USER} (credentials accepted)")  # then DotDigital


def test_a_missing_topic_fails_the_check(
    kafka: KafkaCluster, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    missing = kafka.unique_topic("typo")
    status, checks = check(
        kafka, sandbox, tmp_path, [missing], kafka_extra="create_dead_letter_topic = false"
    )
    assert status == ExitCode.FAILED
    assert checks[f"topic {missing}"] == (False, "does not exist (fix kafka.topics)")
    dead_letters = [name for name in checks if name.startswith("dead-letter topic")]
    assert checks[dead_letters[0]][0] is False
    assert "create_dead_letter_topic is false" in checks[dead_letters[0]][1]


def test_an_unreachable_cluster_is_unavailable(
    kafka: KafkaCluster, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    status, checks = check(kafka, sandbox, tmp_path, ["t"], bootstrap="127.0.0.1:9")
    assert status == ExitCode.UNAVAILABLE
    ok, detail = checks["kafka"]
    assert not ok
    assert detail.startswith("cannot reach Kafka at 127.0.0.1:9 within 10 s")
    assert checks["api user"][0], "DotDigital is still checked"
