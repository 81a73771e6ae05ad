"""``localkafka.resume``: a broker stopped with its data kept comes back on the same address
with its topics, records and committed group offsets (what the chaos run's restarts rely on)."""

from __future__ import annotations

from pathlib import Path

import localkafka
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.kafka,
    pytest.mark.skipif(not localkafka.can_run_locally(), reason="needs a JDK and Maven"),
]


def test_a_resumed_broker_keeps_records_and_committed_offsets(tmp_path: Path) -> None:
    state = localkafka.start(tmp_path)
    try:
        bootstrap = state.bootstrap_servers
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("kept", num_partitions=1, replication_factor=1)])[
            "kept"
        ].result(60)
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        for n in range(3):
            producer.produce("kept", value=f"r{n}".encode())
        assert producer.flush(60) == 0
        group = {"bootstrap.servers": bootstrap, "group.id": "g", "enable.auto.commit": False}
        consumer = Consumer(group)
        consumer.commit(offsets=[TopicPartition("kept", 0, 2)], asynchronous=False)
        consumer.close()

        assert localkafka.stop(tmp_path, keep_data=True)
        resumed = localkafka.resume(tmp_path, state)

        assert resumed.bootstrap_servers == bootstrap
        assert resumed.pid != state.pid
        consumer = Consumer({**group, "auto.offset.reset": "earliest"})
        try:
            committed = consumer.committed([TopicPartition("kept", 0)], timeout=60)
            assert committed[0].offset == 2
            consumer.assign([TopicPartition("kept", 0, 0)])
            values: list[bytes | None] = []
            while len(values) < 3:
                message = consumer.poll(30)
                assert message is not None, f"only {values} came back"
                if message.error() is None:
                    values.append(message.value())
            assert values == [b"r0", b"r1", b"r2"]
        finally:
            consumer.close()
    finally:
        localkafka.stop(tmp_path)
