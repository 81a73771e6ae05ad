"""``ddsync replay`` against a real broker.

Dead-letter records are built the way the pipeline builds them (the original key, value and
headers plus :meth:`DeadLetter.to_headers`, through an idempotent producer), then replayed; each
test reads the source topics and the replay group's committed offsets back from the broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.core.deadletter_format import (
    H_REASON,
    H_REPLAY_COUNT,
    H_REPLAYED_REASON,
    H_SOURCE_TOPIC,
    DeadLetter,
    replay_count_of,
)
from stream.core.reasons import Reason
from stream.demo.generator import DemoRecord, Target, transition
from stream.replay.decide import ReplayFilter
from stream.replay.report import ReplayProgress, StopReason
from stream.replay.runner import Replayer, ReplayError, ReplayOptions, run_replay
from stream.settings import DeadLetterSettings, KafkaSettings, Settings
from tests.support.kafka import KafkaCluster
from tests.support.processes import (
    Account,
    DdsyncProcess,
    SandboxProcess,
    caught_up,
    password_env,
    produce,
    read_topic,
    write_config,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.sandbox, pytest.mark.process]

FAILED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NO_OFFSET = -1001


@dataclass(frozen=True)
class Letter:
    """A dead-letter record to put on the topic: the original record and why it failed."""

    key: bytes | None
    value: bytes | None
    letter: DeadLetter
    headers: tuple[tuple[str, bytes], ...] = (("traceparent", b"00-abc-def-01"),)


@dataclass(frozen=True)
class Read:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class Setup:
    """Two source topics, a dead-letter topic and a unique replay group for one test."""

    def __init__(self, kafka: KafkaCluster, dlq_partitions: int = 1, max_replays: int = 3) -> None:
        self.kafka = kafka
        self.audience = kafka.create_topic(partitions=2)
        self.journey = kafka.create_topic(partitions=1)
        self.dlq = kafka.create_topic(partitions=dlq_partitions)
        self.dlq_partitions = dlq_partitions
        self.group = f"replay-{uuid.uuid4().hex[:8]}"
        self.settings = Settings(
            kafka=KafkaSettings(
                bootstrap_servers=kafka.bootstrap_servers,
                group_id="ddsync-test",
                topics=(self.audience, self.journey),
                dead_letter_topic=self.dlq,
            ),
            connectors={},
            dead_letter=DeadLetterSettings(max_replays=max_replays),
        )
        self._source_offset = 0

    def letter(
        self,
        n: int,
        *,
        reason: Reason = Reason.RETRIES_EXHAUSTED,
        topic: str | None = None,
        connector: str | None = "eu-main",
        book: int | None = 100,
        replay_count: int = 0,
    ) -> Letter:
        self._source_offset += 1
        return Letter(
            key=f"profile-{n}".encode(),
            value=f'{{"event_id": "evt-{n}", "email": "person{n}@example.com"}}'.encode(),
            letter=DeadLetter(
                reason=reason,
                error_code="ERROR_X",
                error_message=f"failed for person{n}@example.com",
                source_topic=topic or self.audience,
                source_partition=n % 2,
                source_offset=self._source_offset,
                failed_at=FAILED_AT,
                attempts=3,
                replay_count=replay_count,
                connector_id=connector,
                address_book_id=book,
                event_id=f"evt-{n}",
            ),
        )

    def put(self, letters: Iterable[Letter], *, partition: int | None = None) -> None:
        """Produce dead letters as DeadLetterPublisher does: original headers + letter headers."""
        producer = Producer(
            {"bootstrap.servers": self.kafka.bootstrap_servers, "enable.idempotence": True}
        )
        for n, item in enumerate(letters):
            producer.produce(
                self.dlq,
                key=item.key,
                value=item.value,
                headers=[*item.headers, *item.letter.to_headers()],
                partition=n % self.dlq_partitions if partition is None else partition,
            )
        assert producer.flush(30) == 0

    def put_raw(self, key: bytes, headers: list[tuple[str, str | bytes | None]]) -> None:
        producer = Producer({"bootstrap.servers": self.kafka.bootstrap_servers})
        producer.produce(self.dlq, key=key, value=b"{}", headers=headers)
        assert producer.flush(30) == 0

    def options(self, **overrides: Any) -> ReplayOptions:
        fields: dict[str, Any] = {"group": self.group}
        fields.update(overrides)
        return ReplayOptions(**fields)

    def read(self, topic: str) -> list[Read]:
        """Everything on ``topic`` up to its current end (assign, no group: fast and exact)."""
        consumer = Consumer(
            {"bootstrap.servers": self.kafka.bootstrap_servers, "group.id": "reader"}
        )
        try:
            partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
            marks = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                for p in partitions
            }
            wanted = {p: high for p, (low, high) in marks.items() if high > low}
            consumer.assign([TopicPartition(topic, p, marks[p][0]) for p in wanted])
            found: list[Read] = []
            while wanted:
                message = consumer.poll(10)
                assert message is not None, f"{topic} ran dry before its end offsets"
                assert message.error() is None, message.error()
                partition, offset = message.partition(), message.offset()
                assert partition is not None
                assert offset is not None
                raw = message.headers() or []
                pairs = raw.items() if isinstance(raw, dict) else raw
                headers = [(k, v) for k, v in pairs if isinstance(v, bytes)]
                found.append(Read(partition, offset, message.key(), message.value(), headers))
                if offset + 1 >= wanted.get(partition, 0):
                    wanted.pop(partition, None)
            return found
        finally:
            consumer.close()

    def committed(self) -> list[int]:
        consumer = Consumer(
            {"bootstrap.servers": self.kafka.bootstrap_servers, "group.id": self.group}
        )
        try:
            tps = [TopicPartition(self.dlq, p) for p in range(self.dlq_partitions)]
            return [tp.offset for tp in consumer.committed(tps, timeout=30)]
        finally:
            consumer.close()


def by_key(records: Iterable[Read]) -> dict[bytes | None, Read]:
    return {r.key: r for r in records}


def test_replays_the_filtered_subset_with_original_key_value_and_incremented_count(
    kafka: KafkaCluster,
) -> None:
    setup = Setup(kafka)
    chosen = [
        setup.letter(1, reason=Reason.AUTH_FAILED),
        setup.letter(2, reason=Reason.AUTH_FAILED, replay_count=1),
        setup.letter(3, reason=Reason.AUTH_FAILED, topic=setup.journey),
    ]
    others = [
        setup.letter(4, reason=Reason.CONTACT_REJECTED),
        setup.letter(5, reason=Reason.AUTH_FAILED, connector="us-main"),
        setup.letter(6, reason=Reason.AUTH_FAILED, book=200),
        setup.letter(7, reason=Reason.INVALID_EVENT, connector=None, book=None),
    ]
    setup.put([chosen[0], others[0], chosen[1], others[1], others[2], chosen[2], others[3]])

    summary = run_replay(
        setup.settings,
        setup.options(
            record_filter=ReplayFilter(
                reasons=frozenset({Reason.AUTH_FAILED}),
                connector_ids=frozenset({"eu-main"}),
                address_book_ids=frozenset({100}),
            )
        ),
    )

    assert (summary.replayed, summary.refused, summary.filtered, summary.malformed) == (3, 0, 4, 0)
    assert summary.stopped is StopReason.END
    assert summary.by_reason_and_topic == {
        ("auth_failed", setup.audience): 2,
        ("auth_failed", setup.journey): 1,
    }
    audience = by_key(setup.read(setup.audience))
    journey = by_key(setup.read(setup.journey))
    assert set(audience) == {b"profile-1", b"profile-2"}
    assert set(journey) == {b"profile-3"}
    for original in chosen:
        landed = {**audience, **journey}[original.key]
        assert landed.value == original.value
        # The original's own headers travel on; of ddsync's, only the new replay count and
        # the reason it was dead-lettered for (which releases what the removal guard held).
        assert landed.headers == [
            ("traceparent", b"00-abc-def-01"),
            (H_REPLAY_COUNT, str(original.letter.replay_count + 1).encode()),
            (H_REPLAYED_REASON, b"auth_failed"),
        ]
        assert replay_count_of(landed.headers) == original.letter.replay_count + 1
    # Everything up to the end was decided about, the skipped records included.
    assert setup.committed() == [7]


def test_dry_run_produces_nothing_and_commits_nothing(kafka: KafkaCluster) -> None:
    setup = Setup(kafka)
    setup.put(
        [
            setup.letter(1, reason=Reason.AUTH_FAILED),
            setup.letter(2, reason=Reason.CONTACT_REJECTED, topic=setup.journey),
            setup.letter(3, reason=Reason.AUTH_FAILED, replay_count=3),
        ]
    )

    summary = run_replay(setup.settings, setup.options(dry_run=True))

    assert summary.dry_run
    assert (summary.replayed, summary.refused, summary.filtered) == (2, 1, 0)
    assert [(s.key, s.reason, s.dead_letter_offset) for s in summary.samples] == [
        ("'profile-1'", "auth_failed", 0),
        ("'profile-2'", "contact_rejected", 1),
    ]
    assert setup.read(setup.audience) == []
    assert setup.read(setup.journey) == []
    assert setup.committed() == [NO_OFFSET]
    # A real run afterwards still finds everything.
    assert run_replay(setup.settings, setup.options()).replayed == 2


def test_records_replayed_max_replays_times_are_refused(kafka: KafkaCluster) -> None:
    setup = Setup(kafka, max_replays=2)
    setup.put(
        [
            setup.letter(1, replay_count=0),
            setup.letter(2, replay_count=1),
            setup.letter(3, replay_count=2),
            setup.letter(4, replay_count=5),
        ]
    )

    summary = run_replay(setup.settings, setup.options())

    assert (summary.replayed, summary.refused) == (2, 2)
    landed = by_key(setup.read(setup.audience))
    assert set(landed) == {b"profile-1", b"profile-2"}
    assert replay_count_of(landed[b"profile-2"].headers) == 2
    assert setup.committed() == [4]


def test_an_interrupted_replay_resumes_without_loss_or_repeats(kafka: KafkaCluster) -> None:
    setup = Setup(kafka, dlq_partitions=2)
    letters = [setup.letter(n) for n in range(10)]
    setup.put(letters)

    first = run_replay(setup.settings, setup.options(limit=4, batch_size=3))
    assert (first.replayed, first.stopped) == (4, StopReason.LIMIT)
    # Whichever partitions the records came from, exactly those 4 are behind the commits.
    assert sum(max(offset, 0) for offset in setup.committed()) == 4
    assert len(setup.read(setup.audience)) == 4

    second = run_replay(setup.settings, setup.options(batch_size=3))
    assert (second.replayed, second.stopped) == (6, StopReason.END)
    landed = [r.key or b"" for r in setup.read(setup.audience)]
    assert sorted(landed) == sorted(letter.key or b"" for letter in letters)  # each exactly once
    assert setup.committed() == [5, 5]

    third = run_replay(setup.settings, setup.options())
    assert (third.replayed, third.filtered, third.refused) == (0, 0, 0)


def test_malformed_records_are_reported_and_skipped(kafka: KafkaCluster) -> None:
    setup = Setup(kafka)
    setup.put([setup.letter(1)])
    setup.put_raw(b"no-headers", [])
    setup.put_raw(b"bad-reason", [*setup.letter(2).letter.to_headers(), ("ddsync.reason", b"??")])
    setup.put_raw(
        b"loop",
        [*setup.letter(3).letter.to_headers(), (H_SOURCE_TOPIC, setup.dlq.encode())],
    )
    setup.put([setup.letter(4)])

    summary = run_replay(setup.settings, setup.options())

    assert (summary.replayed, summary.malformed) == (2, 3)
    assert summary.malformed_samples == (
        "dead-letter [0]@1: header ddsync.reason is missing",
        "dead-letter [0]@2: header ddsync.reason is unknown: '??'",
        "dead-letter [0]@3: its source topic is the dead-letter topic",
    )
    assert set(by_key(setup.read(setup.audience))) == {b"profile-1", b"profile-4"}
    assert setup.committed() == [5]


def test_stops_at_the_end_offsets_taken_at_start(kafka: KafkaCluster) -> None:
    setup = Setup(kafka)
    setup.put([setup.letter(1), setup.letter(2)])

    def more_arrive(replayer: Replayer) -> None:
        assert replayer.backlog == 2
        setup.put([setup.letter(3), setup.letter(4)])

    summary = run_replay(setup.settings, setup.options(), on_open=more_arrive)

    assert summary.replayed == 2
    assert set(by_key(setup.read(setup.audience))) == {b"profile-1", b"profile-2"}
    assert setup.committed() == [2]
    assert run_replay(setup.settings, setup.options()).replayed == 2


def test_stop_finishes_cleanly_and_a_rerun_does_the_rest(kafka: KafkaCluster) -> None:
    setup = Setup(kafka)
    setup.put([setup.letter(1), setup.letter(2)])

    summary = run_replay(setup.settings, setup.options(), on_open=lambda r: r.stop())

    assert (summary.replayed, summary.stopped) == (0, StopReason.INTERRUPTED)
    assert setup.committed() == [NO_OFFSET]
    assert run_replay(setup.settings, setup.options()).replayed == 2
    assert len(setup.read(setup.audience)) == 2


def test_a_missing_source_topic_stops_the_run_before_that_record(kafka: KafkaCluster) -> None:
    setup = Setup(kafka)
    setup.put(
        [setup.letter(1), setup.letter(2, topic=f"gone-{uuid.uuid4().hex[:8]}"), setup.letter(3)]
    )

    with pytest.raises(ReplayError, match=r"source topic gone-\w+ does not exist") as failure:
        run_replay(setup.settings, setup.options())

    assert failure.value.summary.replayed == 1
    assert set(by_key(setup.read(setup.audience))) == {b"profile-1"}
    assert setup.committed() == [1]  # the record of the missing topic is read again next time


def cli_config(setup: Setup, tmp_path: Path) -> Path:
    """A configuration file for ``ddsync replay`` as a process, on ``setup``'s topics."""
    return write_config(
        tmp_path / "ddsync.toml",
        bootstrap=setup.kafka.bootstrap_servers,
        topics=[setup.audience, setup.journey],
        dead_letter_topic=setup.dlq,
        group="ddsync-cli",
        connectors={"eu-main": ("apiuser-1@apiconnector.com", "http://127.0.0.1:9")},
    )


def test_cli_dry_run_then_replay_as_a_real_process(kafka: KafkaCluster, tmp_path: Path) -> None:
    setup = Setup(kafka)
    setup.put(
        [
            setup.letter(1, reason=Reason.AUTH_FAILED),
            setup.letter(2, reason=Reason.CONTACT_REJECTED),
            setup.letter(3, reason=Reason.AUTH_FAILED, replay_count=3),
        ]
    )
    config = cli_config(setup, tmp_path)
    env = {**os.environ, password_env("eu-main"): "cli-secret-password"}

    def ddsync(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stream", "replay", "--config", str(config), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    dry = ddsync("--group", setup.group, "--reason", "auth_failed", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "auth_failed -> " + setup.audience + ": 1" in dry.stdout
    assert f"{setup.audience}[1]@1 reason=auth_failed code=ERROR_X key='profile-1'" in dry.stdout
    assert (
        "dry run: would replay 1, refused (too many replays) 1, skipped by filter 1, malformed 0,"
        " superseded 0, unverifiable 0" in dry.stdout
    )
    assert setup.committed() == [NO_OFFSET]

    real = ddsync("--group", setup.group, "--reason", "auth_failed")
    assert real.returncode == 0, real.stderr
    assert (
        "replayed 1, refused (too many replays) 1, skipped by filter 1, malformed 0, "
        "superseded 0, unverifiable 0" in real.stdout.splitlines()
    )
    assert [r.key for r in setup.read(setup.audience)] == [b"profile-1"]
    assert setup.committed() == [3]
    for output in (dry.stdout + dry.stderr, real.stdout + real.stderr):
        # No secret, no record value, no error message (personal data) in any output.
        assert "cli-secret-password" not in output
        assert "@example.com" not in output


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[kafka]\nbootstrap_servers = "x"\ntopics = "not-a-list"\n')
    run = subprocess.run(
        [sys.executable, "-m", "stream", "replay", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0
    assert run.stderr.startswith("ddsync: kafka.topics")


def test_progress_is_reported_after_each_batch_up_to_the_whole_backlog(
    kafka: KafkaCluster,
) -> None:
    setup = Setup(kafka)
    setup.put(
        [
            setup.letter(n, reason=Reason.AUTH_FAILED if n % 3 else Reason.INVALID_EVENT)
            for n in range(1, 8)
        ]
    )
    seen: list[ReplayProgress] = []
    summary = run_replay(
        setup.settings,
        setup.options(
            batch_size=2, record_filter=ReplayFilter(reasons=frozenset({Reason.AUTH_FAILED}))
        ),
        on_progress=seen.append,
    )
    assert (summary.replayed, summary.filtered) == (5, 2)
    assert len(seen) >= 4  # 7 records, at most 2 a batch
    assert [p.looked_at for p in seen] == sorted(p.looked_at for p in seen)
    assert seen[-1] == ReplayProgress(looked_at=7, backlog=7, replayed=5, skipped=2)


def test_cli_json_prints_one_object_on_stdout(kafka: KafkaCluster, tmp_path: Path) -> None:
    setup = Setup(kafka)
    setup.put([setup.letter(1), setup.letter(2, replay_count=3)])
    config = cli_config(setup, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "stream", "replay", "--config", str(config), "--json",
         "--group", setup.group],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, password_env("eu-main"): "x"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert (report["replayed"], report["refused"], report["stopped"]) == (1, 1, "end")
    assert report["error"] is None
    assert report["by_reason_and_topic"] == [
        {"reason": "retries_exhausted", "source_topic": setup.audience, "count": 1}
    ]
    assert "2 record(s) to look at" in result.stderr
    assert "@example.com" not in result.stdout + result.stderr


def test_a_replay_never_makes_a_book_older(kafka: KafkaCluster, tmp_path: Path) -> None:
    """The issue's story: a record fails, a newer transition of the same contact syncs once the
    cause is fixed, then the operator replays. The book must keep the newer state, while a
    failed record that nothing superseded is replayed as before."""
    account = Account("replay@apiconnector.com", "r1", (1,))
    # A second, healthy connector: with only one, a wrong password would stop consumption
    # (every connector suspended opens the breaker) instead of dead-lettering.
    spare = Account("spare@apiconnector.com", "r1", (2,))
    sandbox = SandboxProcess(tmp_path, [account, spare], "--import-delay", "0.05")
    topic = kafka.create_topic(partitions=2)
    dead_letters = kafka.unique_topic("dlq")
    group = f"ddsync-{uuid.uuid4().hex[:8]}"
    config = write_config(
        tmp_path / "ddsync.toml",
        bootstrap=kafka.bootstrap_servers,
        topics=[topic],
        dead_letter_topic=dead_letters,
        group=group,
        connectors={
            "eu": (account.username, sandbox.discovery_url),
            "spare": (spare.username, sandbox.discovery_url),
        },
        window_seconds=1.0,
        retry_timeout_seconds=4,
    )
    wrong = {password_env("eu"): "not-the-password", password_env("spare"): spare.password}
    right = {password_env("eu"): account.password, password_env("spare"): spare.password}

    def record(n: int, profile: str, action: str) -> DemoRecord:
        event = transition(
            event_id=f"evt-{n}",
            profile_id=profile,
            email=f"{profile.upper()}@Example.com",  # the decoder's normalisation applies
            target=Target("eu", 1),
            action=action,
            occurred_at=datetime(2024, 5, 1, 12, n, tzinfo=UTC),
        )
        return DemoRecord(profile.encode(), orjson.dumps(event))

    def synced() -> bool:
        return caught_up(kafka.bootstrap_servers, group, topic, 2)

    processes: list[DdsyncProcess] = []
    try:
        # 1. The password is wrong: the connector is suspended, both adds are dead-lettered.
        processes.append(DdsyncProcess(config, tmp_path / "broken.log", wrong))
        produce(
            kafka.bootstrap_servers, topic, [record(1, "older", "add"), record(2, "kept", "add")]
        )
        wait_until(synced, 120, "the failing records were not committed")
        assert processes[-1].terminate() == 0
        letters = read_topic(kafka.bootstrap_servers, dead_letters, 2)
        reasons = {letter.header(H_REASON) for letter in letters}
        assert len(letters) == 2
        assert "auth_failed" in reasons
        assert reasons <= {"auth_failed", "connector_suspended"}

        # 2. The password is fixed; a newer transition of one contact removes it, and syncs.
        processes.append(DdsyncProcess(config, tmp_path / "fixed.log", right))
        produce(kafka.bootstrap_servers, topic, [record(3, "older", "remove")])
        wait_until(synced, 120, "the newer transition was not committed")
        assert sandbox.members(account.username, 1) == set()

        # 3. The operator replays everything.
        result = subprocess.run(
            [
                sys.executable, "-m", "stream", "replay", "--config", str(config), "--json",
                "--reason", "auth_failed", "--reason", "connector_suspended",
            ],
            capture_output=True, text=True, timeout=120, env={**os.environ, **right},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        wait_until(synced, 120, "the replayed records were not committed")

        # The removal stays; the add nothing superseded is applied.
        assert sandbox.members(account.username, 1) == {"kept@example.com"}
        report = orjson.loads(result.stdout)
        assert (report["replayed"], report["superseded"]) == (1, 1)
    finally:
        for process in processes:
            if process.alive():
                process.kill()
        sandbox.stop()


def test_unverifiable_records_are_skipped_unless_asked_and_land_in_their_source_partition(
    kafka: KafkaCluster,
) -> None:
    setup = Setup(kafka)

    def value(email: str) -> bytes:
        return orjson.dumps(
            transition(
                event_id=f"evt-{email}",
                profile_id=email,
                email=email,
                target=Target("eu-main", 100),
                action="add",
                occurred_at=FAILED_AT,
            )
        )

    # One original on partition 1 (offset 0); partition 0 stays empty.
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    producer.produce(setup.audience, key=b"k-1", value=value("one@example.com"), partition=1)
    assert producer.flush(30) == 0

    def at(partition: int, offset: int, email: str) -> Letter:
        return Letter(
            key=f"k-{partition}".encode(),
            value=value(email),
            letter=replace(
                setup.letter(partition).letter, source_partition=partition, source_offset=offset
            ),
        )

    # Partition 0 ends at 0, before the record at 5: recreated or truncated, nothing to check.
    setup.put([at(1, 0, "one@example.com"), at(0, 5, "gone@example.com")])

    dry = run_replay(setup.settings, setup.options(dry_run=True))
    assert (dry.replayed, dry.unverifiable, dry.superseded) == (1, 1, 0)
    assert dry.unverifiable_samples == (
        f"dead-letter [0]@1: {setup.audience}[0] ends at offset 0, before the record: the topic "
        "was recreated or truncated",
    )

    summary = run_replay(setup.settings, setup.options(replay_unverifiable=True))
    assert (summary.replayed, summary.unverifiable) == (2, 0)
    replayed = [r for r in setup.read(setup.audience) if replay_count_of(r.headers)]
    # Each back in the partition it came from, whatever the partitioner would choose.
    assert sorted((r.partition, r.key) for r in replayed) == [(0, b"k-0"), (1, b"k-1")]


def test_a_transition_produced_while_the_replay_runs_still_supersedes(
    kafka: KafkaCluster,
) -> None:
    setup = Setup(kafka)

    def value(email: str, action: str) -> bytes:
        return orjson.dumps(
            transition(
                event_id=f"evt-{email}-{action}",
                profile_id=email,
                email=email,
                target=Target("eu-main", 100),
                action=action,
                occurred_at=FAILED_AT,
            )
        )

    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})

    def put_source(email: str, action: str) -> None:
        producer.produce(
            setup.audience, key=email.encode(), value=value(email, action), partition=0
        )
        assert producer.flush(30) == 0

    put_source("a@example.com", "add")  # offset 0
    put_source("b@example.com", "add")  # offset 1
    setup.put(
        [
            Letter(
                key=email.encode(),
                value=value(email, "add"),
                letter=replace(setup.letter(0).letter, source_partition=0, source_offset=offset),
            )
            for offset, email in enumerate(["a@example.com", "b@example.com"])
        ]
    )
    arrived: list[int] = []

    def newer_arrives(progress: ReplayProgress) -> None:
        # After the first letter was decided, before the second: b leaves meanwhile.
        if progress.looked_at == 1 and not arrived:
            put_source("b@example.com", "remove")
            arrived.append(1)

    summary = run_replay(setup.settings, setup.options(batch_size=1), on_progress=newer_arrives)

    assert arrived
    assert (summary.replayed, summary.superseded) == (1, 1)
    source = setup.read(setup.audience)
    assert [(r.key, replay_count_of(r.headers)) for r in source] == [
        (b"a@example.com", 0),
        (b"b@example.com", 0),
        (b"a@example.com", 1),  # replayed in the first batch
        (b"b@example.com", 0),  # the removal: still the last transition of b
    ]


def test_records_deleted_after_the_failed_one_make_it_unverifiable(kafka: KafkaCluster) -> None:
    setup = Setup(kafka)
    emails = ["old@example.com", "a@example.com", "b@example.com", "c@example.com"]
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for email in emails:  # offsets 0-3 of partition 0
        event = transition(
            event_id=f"evt-{email}",
            profile_id=email,
            email=email,
            target=Target("eu-main", 100),
            action="add",
            occurred_at=FAILED_AT,
        )
        producer.produce(setup.audience, key=email.encode(), value=orjson.dumps(event), partition=0)
    assert producer.flush(30) == 0
    letters = [
        Letter(
            key=emails[offset].encode(),
            value=setup.read(setup.audience)[offset].value,
            letter=replace(setup.letter(0).letter, source_partition=0, source_offset=offset),
        )
        for offset in (0, 3)
    ]
    setup.put(letters)
    # As retention would: offsets 0-2 are gone, so whatever followed offset 0 cannot be known.
    deleted = kafka.admin.delete_records([TopicPartition(setup.audience, 0, 3)])
    for future in deleted.values():
        future.result(timeout=30)

    summary = run_replay(setup.settings, setup.options())

    assert (summary.replayed, summary.unverifiable) == (1, 1)
    assert summary.unverifiable_samples == (
        f"dead-letter [0]@0: records of {setup.audience}[0] after it are gone (up to offset 2: "
        "retention, compaction or transaction markers)",
    )
    replayed = [r for r in setup.read(setup.audience) if replay_count_of(r.headers)]
    assert [r.key for r in replayed] == [b"c@example.com"]
