"""The consumer-lag series, against the real broker.

The pipeline runs in-process (its registry is read directly) against an in-process sandbox whose
imports never finish within the test, so every record read stays open: read lag, commit lag and
the oldest open record's age are then known exactly.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stream.observability.metrics import Metrics
from tests.support.kafka import KafkaCluster
from tests.support.pipeline_harness import NEVER, harness, record
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.sandbox]

PARTITIONS = 2  # the harness's topic
READ = 20  # read before the pause
MORE = 7  # produced while paused


def per_partition(metrics: Metrics, name: str, topic: str) -> dict[int, float]:
    values: dict[int, float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and sample.labels.get("topic") == topic:
                values[int(sample.labels["partition"])] = sample.value
    return values


def value(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def oldest_age(metrics: Metrics, topic: str) -> float:
    ages = per_partition(metrics, "ddsync_oldest_open_record_age_seconds", topic)
    return max(ages.values(), default=0.0)


def total(metrics: Metrics, name: str, topic: str) -> float:
    return sum(per_partition(metrics, name, topic).values())


async def test_lag_of_open_records_and_of_a_paused_consumer(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    async with harness(
        kafka,
        tmp_path,
        max_contacts=1000,
        window_seconds=NEVER,
        import_delay=3600,  # accepted, polled, never finished: the records stay open
        # Past READ - 1 open records it pauses (and flushes into the import that never ends).
        max_buffered_records=READ - 1,
        overrides={"DDSYNC__BATCHING__SHUTDOWN_FLUSH_SECONDS": "1"},
    ) as h:
        topic = h.topic
        h.produce(*(record(f"lag-{n}", "add") for n in range(READ)))
        read_at = time.monotonic()
        async with h.pipeline() as pipeline:
            metrics = pipeline.metrics
            assert value(metrics, "ddsync_window_seconds") == NEVER
            await eventually(
                lambda: total(metrics, "ddsync_partition_commit_lag_records", topic) == READ,
                30,
                "commit lag did not reach every record read",
            )
            assert value(metrics, "ddsync_assigned_partitions") == PARTITIONS
            assert total(metrics, "ddsync_partition_read_lag_records", topic) == 0
            assert total(metrics, "ddsync_partition_end_offset", topic) == READ
            assert value(metrics, "ddsync_consumer_paused") == 1
            await eventually(lambda: oldest_age(metrics, topic) > 0, 15, "no open record aged")
            assert oldest_age(metrics, topic) <= time.monotonic() - read_at

            # Paused, the consumer fetches nothing: what arrives now is lag to read.
            h.produce(*(record(f"more-{n}", "add") for n in range(MORE)))
            await eventually(
                lambda: total(metrics, "ddsync_partition_read_lag_records", topic) == MORE,
                30,
                "read lag did not grow while paused",
            )
            assert total(metrics, "ddsync_partition_end_offset", topic) == READ + MORE
            assert total(metrics, "ddsync_partition_commit_lag_records", topic) == READ
        # Leaving the group revoked both partitions: their series are gone.
        assert value(metrics, "ddsync_assigned_partitions") == 0
        for name in (
            "ddsync_partition_end_offset",
            "ddsync_partition_read_lag_records",
            "ddsync_partition_commit_lag_records",
            "ddsync_oldest_open_record_age_seconds",
        ):
            assert per_partition(metrics, name, topic) == {}, name
