"""``ddsync run`` checks its topics before it consumes: the source topics must exist, a missing
dead-letter topic is created (the broker here has auto-creation off, as managed clusters do),
and anything else stops it with one line naming the topic and what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

from stream.config import load_settings
from stream.kafka.topics import Cluster, ensure_topics
from tests.support.kafka import KafkaCluster
from tests.support.processes import DdsyncProcess, password_env, write_config
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.process]


def config_for(
    kafka: KafkaCluster,
    tmp_path: Path,
    topics: list[str],
    dead_letter_topic: str,
    kafka_extra: str = "",
) -> Path:
    return write_config(
        tmp_path / "ddsync.toml",
        bootstrap=kafka.bootstrap_servers,
        topics=topics,
        dead_letter_topic=dead_letter_topic,
        group=kafka.unique_topic("group"),
        # Never reached: without records ddsync makes no DotDigital call.
        connectors={"main": ("user@apiconnector.com", "http://127.0.0.1:9")},
        kafka_extra=kafka_extra,
    )


def run_to_exit(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, password_env("main"): "pw"},
    )  # fmt: skip


def partitions_of(kafka: KafkaCluster, config: Path, topic: str) -> int:
    settings = load_settings(config, {password_env("main"): "pw"})
    states = Cluster(settings.kafka).describe_topics(30)
    return {state.name: state.partitions for state in states}[topic]


def test_a_missing_dead_letter_topic_is_created_at_start(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    source = kafka.create_topic(partitions=2)
    dead_letters = kafka.unique_topic("dlq")
    config = config_for(
        kafka, tmp_path, [source], dead_letters, kafka_extra="dead_letter_partitions = 3\n"
    )
    assert partitions_of(kafka, config, dead_letters) == 0
    process = DdsyncProcess(config, tmp_path / "ddsync.log", {password_env("main"): "pw"})
    try:
        wait_until(
            lambda: "assigned" in process.output(), 60, "ddsync did not start consuming",
            process=process.process,
        )  # fmt: skip
        assert f"created dead-letter topic {dead_letters} (3 partitions)" in process.output()
        assert partitions_of(kafka, config, dead_letters) == 3
    finally:
        assert process.terminate() == 0


def test_an_existing_dead_letter_topic_is_left_as_it_is(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    source = kafka.create_topic()
    dead_letters = kafka.create_topic(partitions=2)
    outcomes = kafka.create_topic(partitions=3)
    config = config_for(
        kafka, tmp_path, [source], dead_letters, kafka_extra=f'outcomes_topic = "{outcomes}"\n'
    )
    settings = load_settings(config, {password_env("main"): "pw"})
    states = ensure_topics(settings.kafka)
    assert [(s.name, s.partitions, s.created) for s in states] == [
        (source, 1, False),
        (dead_letters, 2, False),
        (outcomes, 3, False),
    ]


def test_a_missing_outcomes_topic_is_created_compacted_unless_outcomes_are_off(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    source, dead_letters = kafka.create_topic(), kafka.create_topic()
    outcomes = kafka.unique_topic("outcomes")
    config = config_for(
        kafka, tmp_path, [source], dead_letters,
        kafka_extra=f'outcomes_topic = "{outcomes}"\noutcomes_partitions = 2\n',
    )  # fmt: skip
    settings = load_settings(config, {password_env("main"): "pw"})
    *_, created = ensure_topics(settings.kafka)
    assert (created.name, created.partitions, created.created) == (outcomes, 2, True)
    resource = ConfigResource(ResourceType.TOPIC, outcomes)
    described = kafka.admin.describe_configs([resource])[resource].result(timeout=30)
    assert described["cleanup.policy"].value == "compact"

    off = kafka.unique_topic("outcomes")
    config = config_for(
        kafka, tmp_path, [source], dead_letters,
        kafka_extra=f'outcomes_topic = "{off}"\npublish_outcomes = false\n',
    )  # fmt: skip
    states = ensure_topics(load_settings(config, {password_env("main"): "pw"}).kafka)
    assert [s.name for s in states] == [source, dead_letters]
    assert off not in kafka.admin.list_topics(timeout=30).topics


def test_with_creation_off_a_missing_dead_letter_topic_stops_ddsync(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    dead_letters = kafka.unique_topic("dlq")
    config = config_for(
        kafka, tmp_path, [kafka.create_topic()], dead_letters,
        kafka_extra="create_dead_letter_topic = false\n",
    )  # fmt: skip
    result = run_to_exit(config)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ddsync: dead-letter topic {dead_letters} does not exist: create it, or set "
        "kafka.create_dead_letter_topic = true to let ddsync create it"
    ]
    assert partitions_of(kafka, config, dead_letters) == 0


def test_a_missing_source_topic_stops_ddsync_naming_it(kafka: KafkaCluster, tmp_path: Path) -> None:
    present, missing = kafka.create_topic(), kafka.unique_topic("typo")
    dead_letters = kafka.unique_topic("dlq")
    result = run_to_exit(config_for(kafka, tmp_path, [present, missing], dead_letters))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"ddsync: source topic {missing} does not exist on ")
    assert lines[0].endswith("create it, or fix kafka.topics")
    # Nothing was created on the way: not the typo, not the dead-letter topic.
    config = tmp_path / "ddsync.toml"
    assert partitions_of(kafka, config, dead_letters) == 0


def test_a_dead_letter_topic_that_cannot_be_created_stops_ddsync(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    dead_letters = kafka.unique_topic("dlq")
    config = config_for(
        kafka, tmp_path, [kafka.create_topic()], dead_letters,
        kafka_extra="dead_letter_replication_factor = 1000\n",
    )  # fmt: skip
    result = run_to_exit(config)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"ddsync: dead-letter topic {dead_letters} does not exist and ")
    assert "INVALID_REPLICATION_FACTOR" in lines[0]
    assert lines[0].endswith("kafka.dead_letter_replication_factor")
