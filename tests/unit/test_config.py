"""The configuration file: defaults, environment overrides, secrets, and errors that name the
setting to fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stream.config import load_settings
from stream.kafka.client_config import admin_config, consumer_config, producer_config
from stream.settings import ConfigError, Secret, Settings

MINIMAL = """
[kafka]
bootstrap_servers = "k:9092"
[connectors.eu_main]
username = "apiuser-1@apiconnector.com"
password_env = "EU_PASSWORD"
"""
ENV = {"EU_PASSWORD": "s3cret"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ddsync.toml"
    path.write_text(text)
    return path


def test_defaults_follow_the_design(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), ENV)
    assert settings.kafka.topics == ("audience-transitions", "journey-transitions")
    assert settings.batching.max_contacts == 1000
    assert settings.batching.window_seconds == 1200
    connector = settings.connectors["eu_main"]
    assert (connector.add_requests_per_minute, connector.remove_requests_per_minute) == (75, 35)
    assert connector.discovery_endpoint == "https://r1-api.dotdigital.com"
    assert connector.api_endpoint is None
    assert connector.password.reveal() == "s3cret"
    assert settings.metrics.liveness_timeout_seconds == 180


def test_environment_overrides_any_setting(tmp_path: Path) -> None:
    env = {
        **ENV,
        "DDSYNC__KAFKA__BOOTSTRAP_SERVERS": "other:9093",
        "DDSYNC__BATCHING__WINDOW_SECONDS": "60",
        "DDSYNC__CONNECTORS__EU_MAIN__API_ENDPOINT": "https://r2-api.dotdigital.com/",
        "DDSYNC__KAFKA__TOPICS": '["a", "b"]',
    }
    settings = load_settings(write(tmp_path, MINIMAL), env)
    assert settings.kafka.bootstrap_servers == "other:9093"
    assert settings.batching.window_seconds == 60.0
    assert settings.kafka.topics == ("a", "b")
    # The trailing slash DotDigital puts on endpoints is dropped.
    assert settings.connectors["eu_main"].api_endpoint == "https://r2-api.dotdigital.com"


def test_environment_names_match_the_files_names_in_any_case(tmp_path: Path) -> None:
    text = MINIMAL.replace("[connectors.eu_main]", "[connectors.EU_Main]")
    env = {**ENV, "DDSYNC__CONNECTORS__EU_MAIN__API_ENDPOINT": "https://r3-api.dotdigital.com"}
    settings = load_settings(write(tmp_path, text), env)
    assert list(settings.connectors) == ["EU_Main"]
    assert settings.connectors["EU_Main"].api_endpoint == "https://r3-api.dotdigital.com"


def test_password_from_a_mounted_file(tmp_path: Path) -> None:
    secret = tmp_path / "eu_main"
    secret.write_text("from-file\n")
    text = MINIMAL.replace('password_env = "EU_PASSWORD"', f'password_file = "{secret}"')
    settings = load_settings(write(tmp_path, text), {})
    assert settings.connectors["eu_main"].password.reveal() == "from-file"


def test_a_secret_never_prints_itself() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"


@pytest.mark.parametrize(
    ("change", "env", "message"),
    [
        (("[kafka]", "[kafka]\nbogus = 1"), ENV, "unknown setting kafka.bogus"),
        (('bootstrap_servers = "k:9092"', ""), ENV, "kafka.bootstrap_servers is required"),
        (("[kafka]", "[batching]\nmax_contacts = 0\n[kafka]"), ENV, "batching.max_contacts"),
        (("[kafka]", '[batching]\nwindow_seconds = "soon"\n[kafka]'), ENV, "a number"),
        (("", ""), {}, "environment variable EU_PASSWORD is not set"),
        (('password_env = "EU_PASSWORD"', 'password = "x"'), ENV, "secrets are not read"),
        (("[kafka]", '[kafka]\ndead_letter_topic = "audience-transitions"'), ENV, "must not be"),
        (("[kafka]", "[mystery]\n[kafka]"), ENV, "unknown section [mystery]"),
        (
            ("[kafka]", "[dead_letter]\nbreaker_window = 10\nbreaker_min_records = 20\n[kafka]"),
            ENV,
            "breaker_min_records must not exceed",
        ),
        (
            ("[kafka]", "[metrics]\nliveness_timeout_seconds = 135\n[kafka]"),
            ENV,
            "metrics.liveness_timeout_seconds must exceed a revoke's bound (135 s: ",
        ),
        (
            ('username = "apiuser-1@apiconnector.com"', 'username = "u"\napi_endpoint = "r2"'),
            ENV,
            "connectors.eu_main.api_endpoint must be an http(s) URL",
        ),
        (
            ('username = "apiuser-1@apiconnector.com"', 'username = "u"\nmode = "dry"'),
            ENV,
            "connectors.eu_main.mode must be one of live, shadow, got 'dry'",
        ),
        (
            ("[kafka]", '[kafka]\noutcomes_topic = "ddsync.dlq"'),
            ENV,
            "kafka.outcomes_topic must be neither",
        ),
    ],
)
def test_a_bad_setting_is_named(
    tmp_path: Path, change: tuple[str, str], env: dict[str, str], message: str
) -> None:
    old, new = change
    text = MINIMAL.replace(old, new, 1) if old else MINIMAL
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        load_settings(write(tmp_path, text), env)
    assert "s3cret" not in str(error.value)


def test_a_shadow_connector_needs_the_outcomes_topic(tmp_path: Path) -> None:
    shadow = MINIMAL.replace(
        'password_env = "EU_PASSWORD"', 'password_env = "EU_PASSWORD"\nmode = "shadow"'
    )
    assert load_settings(write(tmp_path, shadow), ENV).connectors["eu_main"].mode == "shadow"
    without = shadow.replace("[kafka]", "[kafka]\npublish_outcomes = false")
    with pytest.raises(ConfigError, match=re.escape("connectors.eu_main.mode is shadow")):
        load_settings(write(tmp_path, without), ENV)


def test_no_connector_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no connector configured"):
        load_settings(write(tmp_path, '[kafka]\nbootstrap_servers = "k:9092"\n'), {})


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", {})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[kafka\n"), {})


def test_kafka_secrets_come_from_the_environment_or_files(tmp_path: Path) -> None:
    key_file = tmp_path / "ssl-key-password"
    key_file.write_text("key-pass\n")
    text = MINIMAL.replace(
        "[connectors.eu_main]",
        '[kafka.consumer]\n"security.protocol" = "SASL_SSL"\n'
        '[kafka.secrets]\n"sasl.password" = { env = "KAFKA_PW" }\n'
        f'"ssl.key.password" = {{ file = "{key_file}" }}\n'
        "[connectors.eu_main]",
    )
    settings = load_settings(write(tmp_path, text), {**ENV, "KAFKA_PW": "sasl-pass"})
    for config in every_client_config(settings):
        assert config["sasl.password"] == "sasl-pass"
        assert config["ssl.key.password"] == "key-pass"
        assert config["security.protocol"] == "SASL_SSL"
    assert "sasl-pass" not in repr(settings)


def test_a_kafka_secret_written_in_the_file_is_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "[connectors.eu_main]", '[kafka.producer]\n"sasl.password" = "oops"\n[connectors.eu_main]'
    )
    with pytest.raises(ConfigError, match=r"\[kafka.secrets\]") as error:
        load_settings(write(tmp_path, text), ENV)
    assert "oops" not in str(error.value)


def every_client_config(settings: Settings) -> list[dict[str, object]]:
    """What each Kafka client ddsync makes is given: pipeline consumer and dead-letter producer,
    replay consumer and producer (another group), admin (start-up checks, check, demo)."""
    kafka = settings.kafka
    return [
        consumer_config(kafka),
        producer_config(kafka),
        consumer_config(kafka, group_id="ddsync-replay"),
        admin_config(kafka),
    ]


def test_every_kafka_client_gets_the_connection_and_security_settings(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "[connectors.eu_main]",
        '[kafka.consumer]\n"security.protocol" = "SASL_SSL"\n"sasl.mechanism" = "PLAIN"\n'
        '"sasl.username" = "ddsync"\n"ssl.ca.location" = "/etc/ca.pem"\n'
        '"fetch.min.bytes" = 10\n'
        '[kafka.producer]\n"linger.ms" = 5\n'
        '[kafka.secrets]\n"sasl.password" = { env = "KAFKA_PW" }\n'
        "[connectors.eu_main]",
    )
    settings = load_settings(write(tmp_path, text), {**ENV, "KAFKA_PW": "sasl-pass"})
    configs = every_client_config(settings)
    for config in configs:
        assert config["bootstrap.servers"] == settings.kafka.bootstrap_servers
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.mechanism"] == "PLAIN"
        assert config["sasl.username"] == "ddsync"
        assert config["ssl.ca.location"] == "/etc/ca.pem"
        assert config["sasl.password"] == "sasl-pass"
    consumer, producer, replay_consumer, admin = configs
    # Consumer-only and producer-only settings stay where they belong.
    assert consumer["fetch.min.bytes"] == 10
    assert "fetch.min.bytes" not in producer
    assert producer["linger.ms"] == 5
    assert "linger.ms" not in consumer
    assert replay_consumer["group.id"] == "ddsync-replay"
    assert "group.id" not in admin
    assert "fetch.min.bytes" not in admin


def test_the_guarantees_hold_in_every_client_config(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), ENV)
    consumer, producer, replay_consumer, _ = every_client_config(settings)
    for config in (consumer, replay_consumer):
        assert config["enable.auto.commit"] is False
        assert config["enable.auto.offset.store"] is False
        assert config["partition.assignment.strategy"] == "cooperative-sticky"
    assert producer["acks"] == "all"
    assert producer["enable.idempotence"] is True


@pytest.mark.parametrize(
    ("table", "line", "message"),
    [
        ("consumer", '"enable.auto.commit" = true', "requires enable.auto.commit = false"),
        ("consumer", '"enable.auto.offset.store" = true', "enable.auto.offset.store = false"),
        (
            "consumer",
            '"partition.assignment.strategy" = "range"',
            'partition.assignment.strategy = "cooperative-sticky"',
        ),
        ("producer", '"acks" = 1', 'requires acks = "all"'),
        ("producer", '"request.required.acks" = 1', 'requires acks = "all"'),
        ("producer", '"enable.idempotence" = false', "enable.idempotence = true"),
        ("consumer", '"group.id" = "other"', "use kafka.group_id"),
        ("producer", '"bootstrap.servers" = "x:9092"', "use kafka.bootstrap_servers"),
    ],
)
def test_a_setting_the_guarantees_rest_on_cannot_be_overridden(
    tmp_path: Path, table: str, line: str, message: str
) -> None:
    text = MINIMAL.replace("[connectors.eu_main]", f"[kafka.{table}]\n{line}\n[connectors.eu_main]")
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, text), ENV)
    assert str(error.value).startswith(f"kafka.{table}.")
    assert message in str(error.value)


def test_the_dead_letter_topic_is_created_with_the_brokers_defaults_unless_told(
    tmp_path: Path,
) -> None:
    kafka = load_settings(write(tmp_path, MINIMAL), ENV).kafka
    assert kafka.create_dead_letter_topic is True
    assert kafka.dead_letter_partitions is None
    assert kafka.dead_letter_replication_factor is None
    text = MINIMAL.replace(
        'bootstrap_servers = "k:9092"',
        'bootstrap_servers = "k:9092"\ncreate_dead_letter_topic = false\n'
        "dead_letter_partitions = 6\ndead_letter_replication_factor = 3",
    )
    kafka = load_settings(write(tmp_path, text), ENV).kafka
    assert (kafka.create_dead_letter_topic, kafka.dead_letter_partitions) == (False, 6)
    assert kafka.dead_letter_replication_factor == 3
    with pytest.raises(ConfigError, match=r"kafka\.dead_letter_partitions must be greater than 0"):
        load_settings(write(tmp_path, text.replace("= 6", "= 0")), ENV)


def test_a_revoke_must_end_before_the_member_would_leave_its_group(tmp_path: Path) -> None:
    batching = load_settings(write(tmp_path, MINIMAL), ENV).batching
    assert (batching.revoke_job_seconds, batching.revoke_bound_seconds) == (120.0, 135.0)
    text = MINIMAL.replace(
        "[connectors.eu_main]",
        '[kafka.consumer]\n"max.poll.interval.ms" = 60000\n'
        "[batching]\nrevoke_flush_seconds = 10\nrevoke_job_seconds = 45\n"
        "[metrics]\nliveness_timeout_seconds = 90\n[connectors.eu_main]",
    )
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, text), ENV)
    assert str(error.value).startswith(
        "batching.revoke_flush_seconds + batching.revoke_job_seconds + 5 s (60 s) must stay "
        "below kafka.consumer max.poll.interval.ms (60 s)"
    )
    load_settings(write(tmp_path, text.replace("= 45", "= 44")), ENV)
    # librdkafka takes the number as a string too: it is checked all the same.
    as_string = text.replace("= 60000", '= "60000"')
    with pytest.raises(ConfigError, match=r"must stay below kafka\.consumer max\.poll"):
        load_settings(write(tmp_path, as_string), ENV)
    with pytest.raises(ConfigError, match="must be a whole number of milliseconds"):
        load_settings(write(tmp_path, text.replace("= 60000", '= "a minute"')), ENV)


def test_liveness_must_outlast_a_revoke(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "[connectors.eu_main]",
        "[batching]\nrevoke_job_seconds = 200\n[connectors.eu_main]",
    )
    with pytest.raises(ConfigError, match=r"liveness_timeout_seconds must exceed a revoke's bound"):
        load_settings(write(tmp_path, text), ENV)


def test_the_shutdown_bound_must_hold_the_flush_the_drain_and_the_commit(tmp_path: Path) -> None:
    batching = load_settings(write(tmp_path, MINIMAL), ENV).batching
    assert (batching.shutdown_flush_seconds, batching.shutdown_timeout_seconds) == (30.0, 50.0)
    text = MINIMAL.replace(
        "[connectors.eu_main]",
        "[batching]\nshutdown_flush_seconds = 30\nshutdown_timeout_seconds = 39\n"
        "[connectors.eu_main]",
    )
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, text), ENV)
    assert str(error.value).startswith(
        "batching.shutdown_flush_seconds + 5 s for dead-letter acknowledgements + 5 s for the "
        "final commit (40 s) must fit in batching.shutdown_timeout_seconds (39 s)"
    )
    assert load_settings(write(tmp_path, text.replace("= 39", "= 40")), ENV)
    with pytest.raises(ConfigError, match="shutdown_timeout_seconds must be greater than 0"):
        load_settings(write(tmp_path, text.replace("= 39", "= 0")), ENV)
    # Nor may liveness fail while a shutdown runs (the loop does not tick meanwhile).
    longer = text.replace("= 39", "= 200")
    with pytest.raises(ConfigError, match=r"liveness_timeout_seconds must exceed batching\.shut"):
        load_settings(write(tmp_path, longer), ENV)
    assert load_settings(
        write(
            tmp_path,
            longer.replace("[connectors", "[metrics]\nliveness_timeout_seconds = 201\n[connectors"),
        ),
        ENV,
    )


@pytest.mark.parametrize("value", ["nan", "+nan", "-nan", "inf", "+inf", "-inf"])
@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("batching", "window_seconds"),
        ("batching", "revoke_flush_seconds"),
        ("dispatch", "retry_timeout_seconds"),
        ("dispatch", "commit_interval_seconds"),
        ("metrics", "liveness_timeout_seconds"),
        ("dead_letter", "breaker_ratio"),
    ],
)
def test_a_number_that_is_not_finite_is_refused_naming_the_setting(
    tmp_path: Path, section: str, key: str, value: str
) -> None:
    # TOML has nan and inf; nan compares false with everything, so "> 0" alone lets it through
    # (a nan window crashes on the first record, a nan retry timeout never gives up).
    text = MINIMAL.replace(
        "[connectors.eu_main]", f"[{section}]\n{key} = {value}\n[connectors.eu_main]"
    )
    with pytest.raises(ConfigError, match=rf"^{section}\.{key} must be a finite number"):
        load_settings(write(tmp_path, text), ENV)


def test_a_connectors_number_that_is_not_finite_is_refused(tmp_path: Path) -> None:
    text = MINIMAL + "request_timeout_seconds = nan\n"
    with pytest.raises(ConfigError, match=r"^connectors\.eu_main\.request_timeout_seconds must"):
        load_settings(write(tmp_path, text), ENV)
    env = {**ENV, "DDSYNC__BATCHING__WINDOW_SECONDS": "nan"}
    with pytest.raises(ConfigError, match=r"^batching\.window_seconds must be a finite number"):
        load_settings(write(tmp_path, MINIMAL), env)


@pytest.mark.parametrize("value", ["latest", "largest", "end", "error"])
def test_an_offset_reset_that_could_skip_or_stall_records_is_refused(
    tmp_path: Path, value: str
) -> None:
    line = f'"auto.offset.reset" = "{value}"'
    text = MINIMAL.replace(
        "[connectors.eu_main]", f"[kafka.consumer]\n{line}\n[connectors.eu_main]"
    )
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, text), ENV)
    assert str(error.value).startswith('kafka.consumer."auto.offset.reset" cannot be')
    assert "earliest" in str(error.value)


@pytest.mark.parametrize("value", ["earliest", "smallest", "beginning"])
def test_an_offset_reset_to_the_beginning_may_be_written(tmp_path: Path, value: str) -> None:
    line = f'"auto.offset.reset" = "{value}"'
    text = MINIMAL.replace(
        "[connectors.eu_main]", f"[kafka.consumer]\n{line}\n[connectors.eu_main]"
    )
    settings = load_settings(write(tmp_path, text), ENV)
    assert consumer_config(settings.kafka)["auto.offset.reset"] == value
