"""The mass-removal guard end to end: ddsync as a process, a real broker, the sandbox over HTTP,
and the operator's replay that releases what the guard held."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from stream.core.deadletter_format import H_ERROR_MESSAGE, H_REASON
from stream.demo.generator import DemoRecord, Target
from tests.support.kafka import KafkaCluster
from tests.support.processes import (
    Account,
    DdsyncProcess,
    SandboxProcess,
    caught_up,
    password_env,
    produce,
    read_topic,
    transition_record,
    write_config,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.sandbox, pytest.mark.process]

# Half of a book, and more than 5 contacts, within an hour.
GUARD = """
[removal_guard]
share = 0.5
min_contacts = 5
"""


def record(n: int, profile: str, action: str) -> DemoRecord:
    return transition_record(n, profile, action, Target("eu", 1))


def test_a_mass_removal_is_held_and_a_replay_releases_it(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    account = Account("guard@apiconnector.com", "r1", (1,))
    sandbox = SandboxProcess(tmp_path, [account])
    topic = kafka.create_topic(partitions=1)
    dead_letters = kafka.unique_topic("dlq")
    group = f"ddsync-{uuid.uuid4().hex[:8]}"
    config = write_config(
        tmp_path / "ddsync.toml",
        bootstrap=kafka.bootstrap_servers,
        topics=[topic],
        dead_letter_topic=dead_letters,
        group=group,
        connectors={"eu": (account.username, sandbox.discovery_url)},
        window_seconds=1.0,
        extra=GUARD,
    )
    env = {password_env("eu"): account.password}
    profiles = [f"p{n}" for n in range(10)]

    def synced() -> bool:
        return caught_up(kafka.bootstrap_servers, group, topic, 1)

    ddsync = DdsyncProcess(config, tmp_path / "ddsync.log", env)
    try:
        produce(
            kafka.bootstrap_servers, topic, [record(n, p, "add") for n, p in enumerate(profiles)]
        )
        wait_until(synced, 120, "the adds were not committed")
        everyone = {f"{p}@example.com" for p in profiles}
        assert sandbox.members(account.username, 1) == everyone

        # An audience gone wrong: 8 of 10 leave in one window. Allowed: 5.
        leaving = profiles[:8]
        produce(
            kafka.bootstrap_servers,
            topic,
            [record(100 + n, p, "remove") for n, p in enumerate(leaving)],
        )
        wait_until(synced, 120, "the held removals were not committed")
        assert sandbox.members(account.username, 1) == everyone
        letters = read_topic(kafka.bootstrap_servers, dead_letters, 8)
        assert {letter.header(H_REASON) for letter in letters} == {"removal_guard"}
        assert {letter.key for letter in letters} == {p.encode() for p in leaving}
        assert "8 removals held" in letters[0].header(H_ERROR_MESSAGE)
        assert "allowance of 5" in letters[0].header(H_ERROR_MESSAGE)
        assert "ddsync_removals_held" not in ddsync.output()  # the log speaks to people

        # The operator has looked: the replay releases them, and the guard lets them through.
        replay = subprocess.run(
            [
                sys.executable, "-m", "stream", "replay", "--config", str(config), "--json",
                "--reason", "removal_guard",
            ],
            capture_output=True, text=True, timeout=120, env={**os.environ, **env},
        )  # fmt: skip
        assert replay.returncode == 0, replay.stderr
        assert orjson.loads(replay.stdout)["replayed"] == 8
        wait_until(synced, 120, "the released removals were not committed")
        assert sandbox.members(account.username, 1) == {"p8@example.com", "p9@example.com"}
        # Nothing more was held: the dead-letter topic still has the 8 letters only.
        assert len(read_topic(kafka.bootstrap_servers, dead_letters, 8)) == 8
        assert ddsync.terminate() == 0
    finally:
        if ddsync.alive():
            ddsync.kill()
        sandbox.stop()
