"""``ddsync reconcile`` end to end: ddsync as a process syncs a stream through a real broker
into the sandbox; someone edits the book by hand; reconcile sees exactly that drift, repairs it,
and the book equals the stream's membership again. Shadow mode against the same sandbox: no
request reaches it, and reconcile reads its plans."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from stream.config import load_settings
from stream.core.outcome_format import Outcome, decode
from stream.demo.generator import DemoRecord, Target
from stream.dotdigital import DotDigitalClient
from stream.dotdigital.config import ClientConfig
from tests.support.kafka import KafkaCluster
from tests.support.processes import (
    Account,
    DdsyncProcess,
    SandboxProcess,
    caught_up,
    password_env,
    produce,
    transition_record,
    write_config,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.sandbox, pytest.mark.process]


def record(n: int, profile: str, action: str) -> DemoRecord:
    return transition_record(n, profile, action, Target("eu", 1))


def run_cli(config: Path, env: Mapping[str, str], *args: str) -> tuple[int, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "stream", "reconcile", "--config", str(config), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, orjson.loads(result.stdout)


def latest_outcomes(bootstrap: str, topic: str) -> dict[bytes, Outcome]:
    """The outcomes topic read to its end: the latest outcome per key."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        latest: dict[bytes, Outcome] = {}
        for partition in partitions:
            tp = TopicPartition(topic, partition, 0)
            _, end = consumer.get_watermark_offsets(tp, timeout=10)
            if end == 0:
                continue
            consumer.assign([tp])
            position = 0
            while position < end:
                message = consumer.poll(5)
                assert message is not None, "the outcomes topic did not answer"
                if message.error() is None:
                    key = message.key()
                    assert key is not None
                    latest[key] = decode(message.value())
                    position = (message.offset() or 0) + 1
        return latest
    finally:
        consumer.close()


class Deployment(NamedTuple):
    account: Account
    sandbox: SandboxProcess
    topic: str
    config: Path
    env: dict[str, str]
    synced: Callable[[], bool]


def deploy(
    kafka: KafkaCluster,
    tmp_path: Path,
    username: str,
    partitions: int,
    *sandbox_args: str,
    connector_extra: str = "",
) -> Deployment:
    """A sandbox with one book (1) for ``username``, a source topic, and ddsync's configuration
    for connector ``eu`` with an outcomes topic of its own; ``synced`` says whether the group
    committed the topic to its end."""
    account = Account(username, "r1", (1,))
    sandbox = SandboxProcess(tmp_path, [account], *sandbox_args)
    topic = kafka.create_topic(partitions=partitions)
    group = f"ddsync-{uuid.uuid4().hex[:8]}"
    config = write_config(
        tmp_path / "ddsync.toml",
        bootstrap=kafka.bootstrap_servers,
        topics=[topic],
        dead_letter_topic=kafka.unique_topic("dlq"),
        group=group,
        connectors={"eu": (account.username, sandbox.discovery_url)},
        window_seconds=1.0,
        kafka_extra=f'outcomes_topic = "{kafka.unique_topic("outcomes")}"',
        connector_extra=connector_extra,
    )
    env = {password_env("eu"): account.password}
    return Deployment(
        account,
        sandbox,
        topic,
        config,
        env,
        lambda: caught_up(kafka.bootstrap_servers, group, topic, partitions),
    )


def outcomes_topic(config: Path) -> str:
    return load_settings(config, {password_env("eu"): "-"}).kafka.outcomes_topic


async def edit_by_hand(account: Account, discovery: str) -> None:
    """What someone does in DotDigital's UI: b taken out, a stranger and e put in."""
    config = ClientConfig(
        name="hand", username=account.username, password=lambda: account.password,
        discovery_endpoint=discovery,
    )  # fmt: skip
    async with await DotDigitalClient.connect(config) as client:
        await client.remove_contacts(1, ["b@example.com"])
        await client.import_contacts(1, ["stranger@example.com", "e@example.com"])


def test_reconcile_sees_a_hand_edit_repairs_it_and_records_the_repair(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    account, sandbox, topic, config, env, synced = deploy(
        kafka, tmp_path, "reconcile@apiconnector.com", 2, "--import-delay", "0.05"
    )
    outcomes = outcomes_topic(config)
    ddsync = DdsyncProcess(config, tmp_path / "ddsync.log", env)
    try:
        stream = [record(n, p, "add") for n, p in enumerate("abcde")]
        stream += [record(10, "e", "remove")]
        produce(kafka.bootstrap_servers, topic, stream)
        wait_until(synced, 120, "the stream was not committed")
        membership = {f"{p}@example.com" for p in "abcd"}
        assert sandbox.members(account.username, 1) == membership
        assert ddsync.terminate() == 0

        code, report = run_cli(config, env)
        assert code == 0, report
        assert report["books"][0]["in_step"] is True

        asyncio.run(edit_by_hand(account, sandbox.discovery_url))
        code, report = run_cli(config, env)
        assert code == 1, "drift found and not repaired"
        (book,) = report["books"]
        assert (book["connector"], book["address_book_id"]) == ("eu", 1)
        assert book["missing"] == ["b@example.com"]
        assert book["unexpected"] == ["e@example.com"]
        assert book["unmanaged"] == ["stranger@example.com"]
        assert book["api_calls"] == 2, "the book's size and one page of members"

        code, report = run_cli(config, env, "--repair")
        assert code == 0, report
        assert (report["books"][0]["repaired_added"], report["books"][0]["repaired_removed"]) == (
            1,
            1,
        )
        assert sandbox.members(account.username, 1) == membership | {"stranger@example.com"}
        repairs = {
            o.email: (o.state.value, o.origin, o.reported.value)
            for o in latest_outcomes(kafka.bootstrap_servers, outcomes).values()
            if o.origin == "reconcile"
        }
        assert repairs == {
            "b@example.com": ("member", "reconcile", "updated"),
            "e@example.com": ("not_member", "reconcile", "removed"),
        }
        code, report = run_cli(config, env)
        assert code == 0, "in step after the repair"

        # The strangers go too when asked.
        code, report = run_cli(config, env, "--repair", "--include-unmanaged")
        assert code == 0
        assert sandbox.members(account.username, 1) == membership
    finally:
        if ddsync.alive():
            ddsync.kill()
        sandbox.stop()


def test_a_shadow_connector_sends_nothing_and_reconcile_reads_its_plans(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    account, sandbox, topic, config, env, synced = deploy(
        kafka, tmp_path, "shadow@apiconnector.com", 1, connector_extra='mode = "shadow"'
    )
    outcomes = outcomes_topic(config)
    ddsync = DdsyncProcess(config, tmp_path / "ddsync.log", env)
    try:
        produce(
            kafka.bootstrap_servers,
            topic,
            [record(0, "a", "add"), record(1, "b", "add"), record(2, "c", "remove")],
        )
        wait_until(synced, 120, "the shadow connector did not commit")
        assert ddsync.terminate() == 0
        assert account.username not in sandbox.control("stats")["calls"], "a request was sent"
        plans = {
            o.email: o.state.value
            for o in latest_outcomes(kafka.bootstrap_servers, outcomes).values()
        }
        assert plans == {
            "a@example.com": "would_add",
            "b@example.com": "would_add",
            "c@example.com": "would_remove",
        }
        code, report = run_cli(config, env, "--repair")
        assert code == 1, "a shadow connector's drift is what it would change, never repaired"
        book = report["books"][0]
        assert book["shadow"] is True
        assert book["missing"] == ["a@example.com", "b@example.com"]
        assert sandbox.members(account.username, 1) == set()
    finally:
        if ddsync.alive():
            ddsync.kill()
        sandbox.stop()
