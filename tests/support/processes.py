"""Real processes for end-to-end tests: the sandbox and ddsync itself, plus Kafka helpers.

The sandbox runs as ``python -m stream.sandbox`` and is queried over HTTP through its
control API; ddsync runs as ``python -m stream run`` so that it can be SIGKILLed like a crashed
pod. Nothing here fakes Kafka or HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from stream.demo.generator import DemoRecord, Target, transition
from stream.dotdigital import normalize_email
from tests.support.kafka import headers_of
from tests.support.waiting import wait_until

PASSWORD = "sandbox-secret-password"


@dataclass(frozen=True)
class Account:
    username: str
    region: str
    address_books: tuple[int, ...]
    password: str = PASSWORD
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "password": self.password,
            "region": self.region,
            "address_books": [{"id": b, "name": f"book {b}"} for b in self.address_books],
            **self.extra,
        }


class SandboxProcess:
    def __init__(self, workdir: Path, accounts: Iterable[Account], *args: str) -> None:
        self.accounts = list(accounts)
        accounts_file = workdir / "accounts.json"
        accounts_file.write_text(json.dumps({"accounts": [a.to_json() for a in self.accounts]}))
        ready = workdir / "sandbox-ready.json"
        self.log = workdir / "sandbox.log"
        command = [
            sys.executable, "-m", "stream.sandbox", "--port", "0",
            "--accounts", str(accounts_file), "--ready-file", str(ready), *args,
        ]  # fmt: skip
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_until(ready.exists, 30, "the sandbox did not start", process=self.process)
        info = json.loads(ready.read_text())
        self.urls: dict[str, str] = info["urls"]
        self.discovery_url: str = info["discovery_url"]

    def control(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(
            f"{self.discovery_url}/_sandbox/{path}",
            data=data,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return orjson.loads(response.read())

    def members(self, username: str, address_book_id: int) -> set[str]:
        answer = self.control(f"accounts/{username}/address-books/{address_book_id}/members")
        return set(answer["emails"])

    def set_faults(self, **faults: float) -> None:
        self.control("faults", faults)

    def stop(self) -> None:
        stop_process(self.process)


class DdsyncProcess:
    def __init__(self, config: Path, log: Path, env: Mapping[str, str]) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stream", "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def run_with_config(
    tmp_path: Path, text: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``ddsync run`` on a configuration that should never get as far as Kafka."""
    config = tmp_path / "ddsync.toml"
    config.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "stream", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a process to bind)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class ConfigOptions(TypedDict, total=False):
    """The optional settings of :func:`write_config`, for helpers that pass them on."""

    max_contacts: int
    window_seconds: float
    retry_timeout_seconds: float
    requests_per_minute: int | None
    max_buffered_records: int
    metrics_port: int | None
    extra: str
    kafka_extra: str
    consumer_extra: Mapping[str, str] | None
    secrets_env: Mapping[str, str] | None
    connector_extra: str


def write_config(
    path: Path,
    *,
    bootstrap: str,
    topics: list[str],
    dead_letter_topic: str,
    group: str,
    connectors: Mapping[str, tuple[str, str]],
    max_contacts: int = 1000,
    window_seconds: float = 2.0,
    retry_timeout_seconds: float = 60.0,
    requests_per_minute: int | None = None,
    max_buffered_records: int = 50_000,
    metrics_port: int | None = None,
    extra: str = "",
    kafka_extra: str = "",
    consumer_extra: Mapping[str, str] | None = None,
    secrets_env: Mapping[str, str] | None = None,
    connector_extra: str = "",
) -> Path:
    """``connectors``: name -> (username, discovery URL); passwords via DDSYNC_TEST_PASSWORD_*.
    ``kafka_extra``: lines for the ``[kafka]`` table. ``consumer_extra``: librdkafka settings
    for ``[kafka.consumer]``; ``secrets_env``: librdkafka secret -> the environment variable
    ``[kafka.secrets]`` reads it from; ``connector_extra``: lines for every connector's table."""
    lines = [
        "[kafka]",
        f'bootstrap_servers = "{bootstrap}"',
        f'group_id = "{group}"',
        f"topics = {json.dumps(topics)}",
        f'dead_letter_topic = "{dead_letter_topic}"',
        kafka_extra,
        "[kafka.consumer]",
        '"session.timeout.ms" = 10000',
        '"heartbeat.interval.ms" = 1000',
        *(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in (consumer_extra or {}).items()),
        *(
            ["[kafka.secrets]"]
            + [f'{json.dumps(k)} = {{ env = "{v}" }}' for k, v in secrets_env.items()]
            if secrets_env
            else []
        ),
        "[batching]",
        f"max_contacts = {max_contacts}",
        f"window_seconds = {window_seconds}",
        f"max_buffered_records = {max_buffered_records}",
        "revoke_flush_seconds = 10",
        "shutdown_flush_seconds = 30",
        "[dispatch]",
        f"retry_timeout_seconds = {retry_timeout_seconds}",
        "commit_interval_seconds = 0.5",
        "[metrics]",
        *(
            ["enabled = false"]
            if metrics_port is None
            else ['host = "127.0.0.1"', f"port = {metrics_port}"]
        ),
    ]
    for name, (username, discovery) in connectors.items():
        lines += [
            f'[connectors."{name}"]',
            f'username = "{username}"',
            f'password_env = "{password_env(name)}"',
            f'discovery_endpoint = "{discovery}"',
            connector_extra,
        ]
        if requests_per_minute is not None:
            # With the sandbox's limits off it sends no X-RateLimit headers to learn from.
            lines += [
                f"add_requests_per_minute = {requests_per_minute}",
                f"remove_requests_per_minute = {requests_per_minute}",
                f"other_requests_per_minute = {requests_per_minute}",
            ]
    # ``extra`` (TOML tables) goes first, where no table header precedes its lines.
    path.write_text(extra + "\n" + "\n".join(lines) + "\n")
    return path


def password_env(connector: str) -> str:
    return "DDSYNC_TEST_PASSWORD_" + "".join(c if c.isalnum() else "_" for c in connector).upper()


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[DemoRecord],
    config: Mapping[str, Any] | None = None,
) -> int:
    """``config``: more librdkafka settings (a secured cluster's), for this and the helpers
    below alike."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, **(config or {})})
    count = 0
    for record in records:
        while True:
            try:
                producer.produce(topic, key=record.key, value=record.value)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
    assert producer.flush(60) == 0
    return count


def transition_record(n: int, profile: str, action: str, target: Target) -> DemoRecord:
    """Transition ``evt-n`` of ``profile`` (email ``profile@example.com``, the record's key the
    profile) into or out of ``target``."""
    event = transition(
        event_id=f"evt-{n}",
        profile_id=profile,
        email=f"{profile}@example.com",
        target=target,
        action=action,
        occurred_at=datetime(2024, 5, 1, 12, tzinfo=UTC),
    )
    return DemoRecord(profile.encode(), orjson.dumps(event))


def expected_membership(records: Iterable[DemoRecord]) -> dict[tuple[str, int], set[str]]:
    """What the address books must hold after every good record was applied in order."""
    books: dict[tuple[str, int], set[str]] = defaultdict(set)
    for record in records:
        if record.bad:
            continue
        event = orjson.loads(record.value)
        key = (event["connector_id"], event["address_book_id"])
        email = normalize_email(event["profile"]["partner_ids"]["34"])
        if event["action"] == "add":
            books[key].add(email)
        else:
            books[key].discard(email)
    return books


@dataclass(frozen=True)
class DeadLetterRecord:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    def header(self, name: str) -> str:
        return self.headers[name].decode()

    def event(self) -> Any:
        """The value decoded as JSON (the transition a dead letter carries)."""
        assert self.value is not None, "a record without a value"
        return orjson.loads(self.value)


def read_topic(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float = 60,
    config: Mapping[str, Any] | None = None,
) -> list[DeadLetterRecord]:
    """Read a topic from the beginning until ``expected`` records came or ``timeout`` passed,
    then a little longer, so that a surplus shows up too."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **(config or {}),
        }
    )
    consumer.subscribe([topic])
    found: list[DeadLetterRecord] = []
    deadline = time.monotonic() + timeout
    quiet_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if len(found) >= expected:
                quiet_until = quiet_until or time.monotonic() + 2
                if time.monotonic() > quiet_until:
                    break
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            headers = {k: v for k, v in headers_of(message) if isinstance(v, bytes)}
            found.append(DeadLetterRecord(message.key(), message.value(), headers))
    finally:
        consumer.close()
    return found


def caught_up(
    bootstrap: str,
    group: str,
    topic: str,
    partitions: int,
    config: Mapping[str, Any] | None = None,
) -> bool:
    """Whether ``group`` committed every partition of ``topic`` to its end (an empty one
    counts); False while the group coordinator is still being elected."""
    try:
        committed, ends = committed_and_end(bootstrap, group, topic, partitions, config)
    except KafkaException:
        return False
    return all(end == 0 or offset == end for offset, end in zip(committed, ends, strict=True))


def committed_and_end(
    bootstrap: str,
    group: str,
    topic: str,
    partitions: int,
    config: Mapping[str, Any] | None = None,
) -> tuple[list[int], list[int]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **(config or {})})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = [tp.offset for tp in consumer.committed(tps, timeout=30)]
        ends = [consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in tps]
    finally:
        consumer.close()
    return committed, ends
