"""Every command's exit status follows one convention (stream/exitcodes.py, README "Exit codes").

Each command runs as a real process (``python -m stream ...``), against the sandbox as a process
and the real Kafka broker where it needs one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.exitcodes import ExitCode
from tests.support.kafka import KafkaCluster
from tests.support.processes import PASSWORD, Account, SandboxProcess, password_env, write_config

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.sandbox, pytest.mark.process]

USER = "apiuser-exit@apiconnector.com"
# Every command that takes --config, with what it needs besides.
CONFIG_COMMANDS = [
    ["run"],
    ["replay"],
    ["demo"],
    ["check"],
    ["address-books", "list"],
    ["address-books", "create", "A book"],
]


def ddsync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    process = SandboxProcess(tmp_path_factory.mktemp("sandbox"), [Account(USER, "r1", (11,))])
    yield process
    process.stop()


def config_for(
    tmp_path: Path, discovery: str, bootstrap: str = "127.0.0.1:9", topic: str = "exit-codes"
) -> Path:
    return write_config(
        tmp_path / "ddsync.toml",
        bootstrap=bootstrap,
        topics=[topic],
        dead_letter_topic=f"exit-codes-missing-dlq-{uuid.uuid4().hex[:8]}",
        group="exit-codes",
        connectors={"main": (USER, discovery)},
    )


GOOD_PASSWORD = {password_env("main"): PASSWORD}


def test_version_exits_ok() -> None:
    result = ddsync("--version")
    assert (result.returncode, result.stdout.split()[0]) == (ExitCode.OK, "ddsync")


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=" ".join)
def test_a_bad_configuration_is_a_usage_error(command: list[str], tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[kafka]\nbootstrap_servers = "127.0.0.1:9"\n[batching]\nmax_contacts = "many"\n'
        '[connectors.main]\nusername = "u"\npassword_env = "X"\n'
    )
    result = ddsync(*command, "--config", str(config), env={"X": "x"})
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "batching.max_contacts must be an integer" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [*CONFIG_COMMANDS, ["sandbox"]], ids=" ".join)
def test_a_bad_flag_is_a_usage_error(command: list[str], tmp_path: Path) -> None:
    result = ddsync(*command, "--config", str(tmp_path / "x.toml"), "--no-such-flag")
    assert result.returncode == ExitCode.USAGE
    assert "unrecognized arguments: " in result.stderr
    assert "--no-such-flag" in result.stderr.splitlines()[-1]


def test_a_bad_logging_variable_is_a_usage_error(tmp_path: Path) -> None:
    result = ddsync("check", "--config", str(tmp_path / "x.toml"), env={"DDSYNC_LOG_FORMAT": "xml"})
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.strip() == "ddsync: DDSYNC_LOG_FORMAT must be one of text, json"


def test_a_bad_librdkafka_setting_is_a_usage_error_for_replay(tmp_path: Path) -> None:
    config = config_for(tmp_path, "http://127.0.0.1:9")
    config.write_text(config.read_text() + '[kafka.producer]\n"no.such.setting" = 1\n')
    result = ddsync("replay", "--config", str(config), env=GOOD_PASSWORD)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "ddsync: kafka.producer: No such configuration"
    )


def test_the_sandbox_on_a_bad_accounts_file_is_a_usage_error(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.json"
    accounts.write_text("{not json")
    result = ddsync("sandbox", "--accounts", str(accounts))
    assert result.returncode == ExitCode.USAGE
    assert "Traceback" not in result.stderr


def test_check_and_address_books_succeed_or_fail_with_their_codes(
    sandbox: SandboxProcess, kafka: KafkaCluster, tmp_path: Path
) -> None:
    config = str(
        config_for(tmp_path, sandbox.discovery_url, kafka.bootstrap_servers, kafka.create_topic())
    )
    ok = ddsync("check", "--config", config, env=GOOD_PASSWORD)
    assert ok.returncode == ExitCode.OK, ok.stdout + ok.stderr
    created = ddsync("address-books", "create", "Twice", "--config", config, env=GOOD_PASSWORD)
    assert created.returncode == ExitCode.OK, created.stderr
    # DotDigital refused the request itself: the operation failed.
    again = ddsync("address-books", "create", "Twice", "--config", config, env=GOOD_PASSWORD)
    assert again.returncode == ExitCode.FAILED
    assert "already exists" in again.stderr
    # A name no address book can have is a bad argument.
    long_name = ddsync("address-books", "create", "x" * 129, "--config", config, env=GOOD_PASSWORD)
    assert long_name.returncode == ExitCode.USAGE


def test_rejected_credentials_and_an_unreachable_dotdigital_are_unavailable(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    config = str(config_for(tmp_path, sandbox.discovery_url))
    # DotDigital's refusal alone (the unreachable Kafka of this config is the next case's).
    denied = ddsync(
        "check", "--config", config, "--skip-kafka", env={password_env("main"): "wrong"}
    )
    assert denied.returncode == ExitCode.UNAVAILABLE
    assert "HTTP 401" in denied.stderr
    # DotDigital answers, Kafka does not: still a dependency out of reach.
    no_kafka = ddsync("check", "--config", config, env=GOOD_PASSWORD)
    assert no_kafka.returncode == ExitCode.UNAVAILABLE, no_kafka.stdout + no_kafka.stderr
    assert "FAILED: cannot reach Kafka at 127.0.0.1:9" in no_kafka.stdout
    assert "credentials accepted" in no_kafka.stdout
    nowhere = str(config_for(tmp_path, "http://127.0.0.1:9"))
    unreachable = ddsync(
        "address-books", "list", "--config", nowhere, "--retry-seconds", "0", env=GOOD_PASSWORD
    )
    assert unreachable.returncode == ExitCode.UNAVAILABLE
    assert "DotDigital is unavailable" in unreachable.stderr


def test_a_replay_that_cannot_run_has_failed(kafka: KafkaCluster, tmp_path: Path) -> None:
    config = config_for(tmp_path, "http://127.0.0.1:9", kafka.bootstrap_servers)
    result = ddsync("replay", "--config", str(config), env=GOOD_PASSWORD)
    assert result.returncode == ExitCode.FAILED, result.stderr
    assert "dead-letter topic exit-codes-missing-dlq-" in result.stderr
    assert "does not exist" in result.stderr
