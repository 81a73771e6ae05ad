"""Hostile input through the real pipeline: whatever a producer writes (any bytes, any JSON, huge
and deeply nested values, odd headers including names that are not UTF-8, null keys and values),
each record reaches the dead-letter topic with a reason, the process keeps running, commits past
them, and still syncs the good record that follows.

hypothesis chooses the records, derandomized and with few examples so the test stays fast and a
failure can be run again as it was."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from stream.config import load_settings
from stream.core.deadletter_format import H_REASON, DeadLetter
from stream.core.reasons import Reason
from stream.demo.generator import Target, transition
from stream.kafka.topics import ensure_topics
from stream.pipeline.processor import Pipeline
from stream.sandbox import (
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    run_sandbox,
)
from tests.support.kafka import KafkaCluster, headers_of
from tests.support.processes import PASSWORD, password_env, write_config
from tests.support.rawkafka import RawRecord, produce_raw
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.sandbox]

USER = "hostile@apiconnector.com"
BOOK = 777
# Larger than the dead-letter producer and topic take (1 MB by default): written without value.
HUGE = 1_400_000


def good(profile: str) -> dict[str, Any]:
    return transition(
        event_id=uuid.uuid4().hex,
        profile_id=profile,
        email=f"{profile}@example.com",
        target=Target("main", BOOK),
        action="add",
        occurred_at=datetime.now(UTC),
    )


def spoiled(field: str, value: Any) -> bytes:
    """A good transition with one field made hostile."""
    document: dict[str, Any] = good("spoiled")
    if field == "email":
        document["profile"]["partner_ids"]["34"] = value
    else:
        document[field] = value
    return json.dumps(document).encode()


ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
VALUES = st.one_of(
    st.none(),
    st.binary(max_size=300),
    ANY_JSON.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(
        [
            b"[" * 50_000 + b"]" * 50_000,
            b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
            b'"' + b"x" * HUGE + b'"',
            b"9" * 10_000,
            spoiled("address_book_id", 1e300),
            spoiled("address_book_id", 2**64 - 1),
            spoiled("address_book_id", 2**31),
            spoiled("address_book_id", 0),
            spoiled("address_book_id", True),
            spoiled("address_book_id", 12.5),
            spoiled("email", 12345),
            spoiled("email", ["a@b.c"]),
            spoiled("email", "x" * 10_000 + "@example.com"),
            spoiled("occurred_at", "9999-12-31T23:59:59-01:00"),
            spoiled("connector_id", "nobody"),
            spoiled("event_id", "e" * 200_000)[:-1] + b', "kind": "nope"}',
        ]
    ),
)
HEADER_NAMES = st.one_of(
    st.text(max_size=12).map(str.encode),
    st.binary(max_size=8),
    st.sampled_from([b"\xff\xfe", b"ddsync.reason", b"ddsync.replay_count", b""]),
)
HEADER_VALUES = st.one_of(st.none(), st.binary(max_size=40), st.just(b"\xff" * 100_000))
RECORDS = st.builds(
    RawRecord,
    key=st.none() | st.binary(max_size=40),
    value=VALUES,
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=3),
)


# In every example, whatever hypothesis adds: the cases each fix is about.
ALWAYS = [
    RawRecord(None, None),
    RawRecord(b"k", b'{"x": 1}', [(b"\xff\xfe-not-utf-8", b"v"), (b"trace", b"t")]),
    RawRecord(b"k", b'"' + b"x" * HUGE + b'"', [(b"trace", b"t")]),
    RawRecord(b"k", spoiled("address_book_id", 1e300)),
]


@settings(
    max_examples=3,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(hostile=st.lists(RECORDS, min_size=4, max_size=8))
def test_hostile_records_are_dead_lettered_and_the_pipeline_goes_on(
    kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory, hostile: list[RawRecord]
) -> None:
    asyncio.run(_run(kafka, tmp_path_factory.mktemp("hostile"), hostile))


async def _run(kafka: KafkaCluster, tmp_path: Path, hostile: list[RawRecord]) -> None:
    account = SandboxAccount(
        username=USER,
        password=PASSWORD,
        region="r1",
        address_books=(SandboxAddressBook(BOOK, "hostile"),),
    )
    async with run_sandbox(SandboxSettings(accounts=(account,), port=0)) as sandbox:
        topic = kafka.unique_topic("hostile")
        # One partition: the records' offsets are their order. It takes records larger than the
        # dead-letter topic does.
        created = kafka.admin.create_topics(
            [NewTopic(topic, 1, 1, config={"max.message.bytes": "8000000"})]
        )
        created[topic].result(timeout=60)
        group = f"hostile-{uuid.uuid4().hex[:8]}"
        config = write_config(
            tmp_path / "ddsync.toml",
            bootstrap=kafka.bootstrap_servers,
            topics=[topic],
            dead_letter_topic=kafka.unique_topic("dlq"),
            group=group,
            connectors={"main": (USER, sandbox.discovery_url)},
            window_seconds=1,
            consumer_extra={"fetch.max.bytes": "20000000"},
        )
        ddsync = load_settings(config, {password_env("main"): PASSWORD})
        ensure_topics(ddsync.kafka)
        sentinel = RawRecord(b"sentinel", orjson.dumps(good("sentinel")))
        hostile = [*ALWAYS, *hostile]
        produce_raw(kafka.bootstrap_servers, topic, [*hostile, sentinel])

        pipeline = Pipeline(ddsync)
        task = asyncio.create_task(pipeline.run())
        try:
            letters = await asyncio.to_thread(
                read, kafka, ddsync.kafka.dead_letter_topic, len(hostile), 60
            )
            await eventually(
                lambda: sandbox.members(USER, BOOK) == {"sentinel@example.com"}, 30, "no sentinel",
                interval=0.3, blocking=True,
            )  # fmt: skip
            await eventually(
                lambda: committed(kafka, group, topic) == len(hostile) + 1, 30,
                "no commit past all", interval=0.3, blocking=True,
            )  # fmt: skip
            assert not task.done(), "the pipeline stopped"
        finally:
            pipeline.stop()
            await asyncio.wait_for(task, 60)

    offsets = []
    for letter in letters:
        headers = headers_of(letter)
        restored = DeadLetter.from_headers(headers)
        assert restored.source_topic == topic
        assert restored.reason in set(Reason)
        assert restored.error_message, "a reason says what was wrong"
        assert sum(1 for name, _ in headers if name == H_REASON) == 1
        offsets.append(restored.source_offset)
    assert sorted(offsets) == list(range(len(hostile))), "each hostile record, once"
    by_offset = {DeadLetter.from_headers(m.headers() or []).source_offset: m for m in letters}
    unreadable = DeadLetter.from_headers(by_offset[1].headers() or [])
    assert "headers cannot be read" in unreadable.error_message
    assert by_offset[2].value() is None, "too large: written without its value"
    assert by_offset[3].value() == ALWAYS[3].value


def read(kafka: KafkaCluster, topic: str, count: int, seconds: float) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"read-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    records: list[Message] = []
    deadline = time.monotonic() + seconds
    try:
        while len(records) < count and time.monotonic() < deadline:
            records.extend(m for m in consumer.consume(50, 0.5) if m.error() is None)
    finally:
        consumer.close()
    assert len(records) == count, f"{len(records)} of {count} hostile records dead-lettered"
    return records


def committed(kafka: KafkaCluster, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    try:
        (position,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return int(position.offset)
    finally:
        consumer.close()
