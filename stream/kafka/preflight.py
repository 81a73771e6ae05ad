"""The Kafka part of ``ddsync check``: what ``ddsync run`` needs of the cluster, asked with the
configured connection and security settings (:mod:`stream.kafka.client_config`).

Contract of :func:`kafka_checks`: it never raises for what the cluster answers. Results, in
order: the brokers (reachable or not; when not, nothing else is asked), each source topic (its
partitions; missing fails), the dead-letter topic (missing passes only when ddsync creates it
at start), and the consumer group's lag per source topic (committed offsets against the end
offsets, read without joining the group). :attr:`KafkaReport.reachable` tells an unreachable
cluster (exit status 3) from a failed check (1).
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, TopicPartition

from stream.checks import CheckResult
from stream.kafka.client_config import consumer_config
from stream.kafka.topics import Cluster, TopicError, TopicState, topic_states
from stream.settings import KafkaSettings


@dataclass(frozen=True)
class KafkaReport:
    results: list[CheckResult]
    reachable: bool


def kafka_checks(settings: KafkaSettings, *, timeout: float = 10.0) -> KafkaReport:
    try:
        metadata = Cluster(settings).metadata(timeout)
    except TopicError as exc:
        return KafkaReport([CheckResult("kafka", False, str(exc))], reachable=False)
    states = topic_states(metadata, settings)
    brokers = ", ".join(sorted(f"{b.host}:{b.port}" for b in metadata.brokers.values()))
    results = [CheckResult("kafka", True, f"{len(metadata.brokers)} brokers reachable ({brokers})")]
    *sources, dead_letter = states
    for state in sources:
        results.append(
            CheckResult(f"topic {state.name}", True, f"{state.partitions} partitions")
            if state.partitions
            else CheckResult(f"topic {state.name}", False, "does not exist (fix kafka.topics)")
        )
    results.append(_dead_letter_result(settings, dead_letter))
    results.extend(_lag(settings, [s for s in sources if s.partitions], timeout))
    return KafkaReport(results, reachable=True)


def _dead_letter_result(settings: KafkaSettings, state: TopicState) -> CheckResult:
    name = f"dead-letter topic {state.name}"
    if state.partitions:
        return CheckResult(name, True, f"{state.partitions} partitions")
    if settings.create_dead_letter_topic:
        return CheckResult(name, True, "does not exist yet; ddsync run creates it at start")
    return CheckResult(
        name, False, "does not exist and kafka.create_dead_letter_topic is false: create it"
    )


def _lag(settings: KafkaSettings, topics: list[TopicState], timeout: float) -> list[CheckResult]:
    if not topics:
        return []
    # A consumer of the group that never subscribes: it reads the group's commits without
    # joining it, so a running ddsync is not rebalanced by the check.
    consumer = Consumer(consumer_config(settings))
    results = []
    try:
        for topic in topics:
            partitions = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
            committed = consumer.committed(partitions, timeout=timeout)
            lag = 0
            uncommitted = 0
            for tp in committed:
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
                if tp.offset == OFFSET_INVALID:  # never committed
                    uncommitted += 1
                    lag += high - low
                else:
                    lag += max(0, high - tp.offset)
            detail = f"group {settings.group_id}: {lag} records behind"
            if uncommitted:
                detail += f" ({uncommitted} of {len(committed)} partitions never committed)"
            results.append(CheckResult(f"lag {topic.name}", True, detail))
    except KafkaException as exc:
        results.append(CheckResult("lag", False, f"cannot read the group's offsets: {exc}"))
    finally:
        consumer.close()
    return results
