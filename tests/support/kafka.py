"""A real Kafka broker for the whole session (the ``kafka`` fixture), and :class:`KafkaCluster`,
what a test uses it through (topics with unique names).

Where the broker comes from, in order:
1. ``KAFKA_BOOTSTRAP_SERVERS`` (an existing cluster; ``make test`` sets it to the broker it
   starts);
2. a testcontainers Kafka when a Docker engine answers;
3. the local KRaft broker of ``deploy/kafka/localkafka.py``, started and stopped by this fixture.

A fixture module: ``tests/conftest.py`` registers it with ``pytest_plugins``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]


@dataclass
class KafkaCluster:
    """A reachable Kafka cluster and what a test needs to use it."""

    bootstrap_servers: str
    origin: str
    _admin: AdminClient | None = field(default=None, repr=False)

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        return self._admin

    @staticmethod
    def unique_topic(prefix: str = "test") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    def create_topic(self, name: str | None = None, partitions: int = 1) -> str:
        """Create a topic (unique name unless given) and wait until the broker has it."""
        name = name or self.unique_topic()
        futures = self.admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=30,
        )
        futures[name].result(timeout=60)
        return name


def headers_of(message: Message) -> list[tuple[str, str | bytes | None]]:
    """A consumed record's headers, in order: confluent-kafka hands them over as a list of
    ``(name, value)`` (its type also allows a dict, which only a producer is given)."""
    headers = message.headers()
    if headers is None:
        return []
    assert isinstance(headers, list), headers
    return headers


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield KafkaCluster(given, "KAFKA_BOOTSTRAP_SERVERS")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield KafkaCluster(container.get_bootstrap_server(), "testcontainers")
        return
    import localkafka

    state_dir: Path = tmp_path_factory.mktemp("kafka")
    broker = localkafka.start(state_dir)
    try:
        yield KafkaCluster(broker.bootstrap_servers, "local broker")
    finally:
        localkafka.stop(state_dir)
