"""The configuration file: one TOML file, overridable by environment variables.

Contract:

* Every setting has a dotted name (``kafka.group_id``, ``connectors.eu-main.username``) and an
  error about it names it, so an operator can find the line to fix.
* ``DDSYNC__SECTION__KEY=value`` in the environment overrides ``[section] key`` (double
  underscores separate levels; values are parsed as TOML when they parse, else taken as strings).
* Secrets never come from the file: a connector names ``password_env`` or ``password_file``
  (as Kubernetes mounts them). They are held in :class:`Secret`, whose ``repr``/``str`` hide them.
* librdkafka settings under ``[kafka.consumer]`` and ``[kafka.producer]`` pass through unchanged;
  their secrets (``sasl.password``, ``ssl.key.password``, ...) come from ``[kafka.secrets]``,
  each ``{ env = "VAR" }`` or ``{ file = "/path" }``, and are refused in the other two tables.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from stream.kafka.client_config import DEFAULT_MAX_POLL_INTERVAL_MS, refused_setting

DEFAULT_DISCOVERY_ENDPOINT = "https://r1-api.dotdigital.com"
# At the end of a revoke, for the dead letters its flushes decided to be acknowledged.
REVOKE_DRAIN_SECONDS = 5.0
# At the end of a shutdown, for the dead letters of the last flushes to be acknowledged, and then
# for the final commit and leaving the group: both come out of batching.shutdown_timeout_seconds.
SHUTDOWN_DRAIN_SECONDS = 5.0
SHUTDOWN_COMMIT_SECONDS = 5.0
ENV_PREFIX = "DDSYNC__"

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names it."""


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    group_id: str = "ddsync"
    topics: tuple[str, ...] = ("audience-transitions", "journey-transitions")
    dead_letter_topic: str = "ddsync.dlq"
    # At start a missing dead-letter topic is created, as Kafka Connect does with its own;
    # partitions and replication factor default (None) to the broker's defaults.
    create_dead_letter_topic: bool = True
    dead_letter_partitions: int | None = None
    dead_letter_replication_factor: int | None = None
    consumer: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    producer: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    # librdkafka secrets, for the consumer and the producer alike.
    secrets: Mapping[str, Secret] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchingSettings:
    max_contacts: int = 1000
    window_seconds: float = 1200.0
    # Backpressure: past this many buffered records the consumer pauses its partitions.
    max_buffered_records: int = 50_000
    revoke_flush_seconds: float = 10.0
    # Then, how long a revoke waits for what DotDigital may be doing for the revoked partitions
    # (a request in the air, an accepted import or removal). The consumer is inside its
    # rebalance callback meanwhile: both bounds together must stay below max.poll.interval.ms.
    revoke_job_seconds: float = 120.0
    shutdown_flush_seconds: float = 30.0
    # From SIGTERM to the process's end, whatever state it is in (inside a revoke, throttled,
    # DotDigital or the broker unreachable): must stay below the pod's
    # terminationGracePeriodSeconds, or Kubernetes kills the process mid-commit.
    shutdown_timeout_seconds: float = 50.0

    @property
    def revoke_bound_seconds(self) -> float:
        """How long the consumer thread may wait inside one revoke: the flush, the jobs, and a
        moment for the dead letters decided meanwhile to be acknowledged."""
        return self.revoke_flush_seconds + self.revoke_job_seconds + REVOKE_DRAIN_SECONDS


@dataclass(frozen=True)
class DispatchSettings:
    retry_timeout_seconds: float = 600.0
    commit_interval_seconds: float = 1.0
    # How often a suspended connector's account is asked whether it works again.
    suspension_probe_seconds: float = 60.0


@dataclass(frozen=True)
class DeadLetterSettings:
    # The breaker opens when more than ``breaker_ratio`` of the last ``breaker_window`` finished
    # records were dead-lettered, once at least ``breaker_min_records`` were seen.
    breaker_window: int = 1000
    breaker_ratio: float = 0.9
    breaker_min_records: int = 200
    max_replays: int = 3


@dataclass(frozen=True)
class ConnectorSettings:
    name: str
    username: str
    password: Secret
    api_endpoint: str | None = None
    discovery_endpoint: str = DEFAULT_DISCOVERY_ENDPOINT
    add_requests_per_minute: int = 75
    remove_requests_per_minute: int = 35
    # Status polls, contact look-ups and address-book calls; corrected from the headers too.
    other_requests_per_minute: int = 600
    max_active_imports: int = 25
    # DotDigital asks clients to allow 121 s before timing a call out.
    request_timeout_seconds: float = 121.0
    # Contact ids remembered from imports: at most this many (oldest dropped first), each for
    # this long. An hour spans a few 20-minute windows (a contact entering and leaving soon
    # after is removed without a look-up first); an older id is looked up afresh, since the
    # older it is the likelier its contact was deleted and re-created with a new id meanwhile.
    contact_cache_size: int = 1_000_000
    contact_cache_ttl_seconds: float = 3600.0


@dataclass(frozen=True)
class MetricsSettings:
    host: str = "0.0.0.0"  # noqa: S104 - Prometheus scrapes from outside the pod
    port: int = 9464
    enabled: bool = True
    # /healthz fails when the event loop or the consumer thread made no progress for this long;
    # must exceed a revoke's bound (the consumer thread waits inside a revoke, 135 s at most by
    # default), or a normal rebalance would restart the pod.
    liveness_timeout_seconds: float = 180.0


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    connectors: Mapping[str, ConnectorSettings]
    batching: BatchingSettings = BatchingSettings()
    dispatch: DispatchSettings = DispatchSettings()
    dead_letter: DeadLetterSettings = DeadLetterSettings()
    metrics: MetricsSettings = MetricsSettings()


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path``, apply environment overrides, and validate everything."""
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    apply_env_overrides(raw, environ)
    return parse_settings(raw, environ)


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = raw
        for part in path[:-1]:
            child = node.setdefault(_existing_key(node, part), {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key} overrides {part}, which is not a section")
            node = child
        node[_existing_key(node, path[-1])] = _parse_env_value(value)


def _existing_key(node: Mapping[str, Any], lowered: str) -> str:
    """The file's own spelling of a name, when it has one: environment variable names are
    upper case by convention, while a connector may be named ``EU_Main`` in the file."""
    return next((k for k in node if k.lower() == lowered), lowered)


def _parse_env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def parse_settings(raw: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    known = {"kafka", "connectors", "batching", "dispatch", "dead_letter", "metrics"}
    for section in raw:
        if section not in known:
            raise ConfigError(f"unknown section [{section}]; known: {', '.join(sorted(known))}")
    kafka = _section(raw, "kafka")
    kafka_settings = KafkaSettings(
        bootstrap_servers=_get(kafka, "kafka.bootstrap_servers", str, required=True),
        group_id=_get(kafka, "kafka.group_id", str, KafkaSettings.group_id),
        topics=tuple(_get(kafka, "kafka.topics", list, list(KafkaSettings.topics))),
        dead_letter_topic=_get(kafka, "kafka.dead_letter_topic", str, "ddsync.dlq"),
        create_dead_letter_topic=_get(kafka, "kafka.create_dead_letter_topic", bool, True),
        dead_letter_partitions=_optional_positive(kafka, "kafka.dead_letter_partitions"),
        dead_letter_replication_factor=_optional_positive(
            kafka, "kafka.dead_letter_replication_factor"
        ),
        consumer=_librdkafka(kafka, "consumer"),
        producer=_librdkafka(kafka, "producer"),
        secrets={
            key: _secret(spec, f'kafka.secrets."{key}"', environ)
            for key, spec in _section(kafka, "secrets", "kafka.secrets").items()
        },
    )
    _check_keys(
        kafka,
        "kafka",
        {
            "bootstrap_servers",
            "group_id",
            "topics",
            "dead_letter_topic",
            "create_dead_letter_topic",
            "dead_letter_partitions",
            "dead_letter_replication_factor",
            "consumer",
            "producer",
            "secrets",
        },
    )
    if not kafka_settings.topics or not all(isinstance(t, str) for t in kafka_settings.topics):
        raise ConfigError("kafka.topics must be a non-empty list of topic names")
    if kafka_settings.dead_letter_topic in kafka_settings.topics:
        raise ConfigError("kafka.dead_letter_topic must not be one of kafka.topics")

    batching = _section(raw, "batching")
    _check_keys(batching, "batching", set(BatchingSettings.__dataclass_fields__))
    batching_settings = BatchingSettings(
        max_contacts=_positive(batching, "batching.max_contacts", int, 1000),
        window_seconds=_positive(batching, "batching.window_seconds", float, 1200.0),
        max_buffered_records=_positive(batching, "batching.max_buffered_records", int, 50_000),
        revoke_flush_seconds=_positive(batching, "batching.revoke_flush_seconds", float, 10.0),
        revoke_job_seconds=_positive(batching, "batching.revoke_job_seconds", float, 120.0),
        shutdown_flush_seconds=_positive(batching, "batching.shutdown_flush_seconds", float, 30.0),
        shutdown_timeout_seconds=_positive(
            batching, "batching.shutdown_timeout_seconds", float, 50.0
        ),
    )
    shutdown_needs = (
        batching_settings.shutdown_flush_seconds + SHUTDOWN_DRAIN_SECONDS + SHUTDOWN_COMMIT_SECONDS
    )
    if shutdown_needs > batching_settings.shutdown_timeout_seconds:
        raise ConfigError(
            f"batching.shutdown_flush_seconds + {SHUTDOWN_DRAIN_SECONDS:g} s for dead-letter "
            f"acknowledgements + {SHUTDOWN_COMMIT_SECONDS:g} s for the final commit "
            f"({shutdown_needs:g} s) must fit in batching.shutdown_timeout_seconds "
            f"({batching_settings.shutdown_timeout_seconds:g} s), the bound on a shutdown"
        )
    poll_interval = _milliseconds(
        kafka_settings.consumer.get("max.poll.interval.ms", DEFAULT_MAX_POLL_INTERVAL_MS),
        'kafka.consumer."max.poll.interval.ms"',
    )
    revoke_bound = batching_settings.revoke_bound_seconds
    if revoke_bound >= poll_interval / 1000:
        raise ConfigError(
            f"batching.revoke_flush_seconds + batching.revoke_job_seconds + "
            f"{REVOKE_DRAIN_SECONDS:g} s ({revoke_bound:g} s) must stay below kafka.consumer "
            f"max.poll.interval.ms ({poll_interval / 1000:g} s), or a revoke would take the "
            "member out of its group"
        )
    dispatch = _section(raw, "dispatch")
    _check_keys(dispatch, "dispatch", set(DispatchSettings.__dataclass_fields__))
    dispatch_settings = DispatchSettings(
        retry_timeout_seconds=_positive(dispatch, "dispatch.retry_timeout_seconds", float, 600.0),
        commit_interval_seconds=_positive(dispatch, "dispatch.commit_interval_seconds", float, 1.0),
        suspension_probe_seconds=_positive(
            dispatch,
            "dispatch.suspension_probe_seconds",
            float,
            DispatchSettings.suspension_probe_seconds,
        ),
    )
    dlq = _section(raw, "dead_letter")
    _check_keys(dlq, "dead_letter", set(DeadLetterSettings.__dataclass_fields__))
    ratio = _get(dlq, "dead_letter.breaker_ratio", float, 0.9)
    if not 0 < ratio <= 1:
        raise ConfigError("dead_letter.breaker_ratio must be in (0, 1]")
    window = _positive(dlq, "dead_letter.breaker_window", int, 1000)
    if _positive(dlq, "dead_letter.breaker_min_records", int, 200) > window:
        raise ConfigError(
            "dead_letter.breaker_min_records must not exceed dead_letter.breaker_window "
            "(the breaker could never open)"
        )
    dlq_settings = DeadLetterSettings(
        breaker_window=_positive(dlq, "dead_letter.breaker_window", int, 1000),
        breaker_ratio=ratio,
        breaker_min_records=_positive(dlq, "dead_letter.breaker_min_records", int, 200),
        max_replays=_positive(dlq, "dead_letter.max_replays", int, 3),
    )
    metrics = _section(raw, "metrics")
    _check_keys(metrics, "metrics", set(MetricsSettings.__dataclass_fields__))
    metrics_settings = MetricsSettings(
        host=_get(metrics, "metrics.host", str, MetricsSettings.host),
        port=_get(metrics, "metrics.port", int, 9464),
        enabled=_get(metrics, "metrics.enabled", bool, True),
        liveness_timeout_seconds=_positive(
            metrics, "metrics.liveness_timeout_seconds", float, 180.0
        ),
    )
    if metrics_settings.liveness_timeout_seconds <= revoke_bound:
        raise ConfigError(
            f"metrics.liveness_timeout_seconds must exceed a revoke's bound ({revoke_bound:g} s: "
            "batching.revoke_flush_seconds + batching.revoke_job_seconds + "
            f"{REVOKE_DRAIN_SECONDS:g} s); the consumer thread waits that long inside a revoke "
            "and liveness would fail meanwhile"
        )
    if metrics_settings.liveness_timeout_seconds <= batching_settings.shutdown_timeout_seconds:
        raise ConfigError(
            "metrics.liveness_timeout_seconds must exceed batching.shutdown_timeout_seconds "
            f"({batching_settings.shutdown_timeout_seconds:g} s); the event loop does not tick "
            "during a shutdown and liveness would fail meanwhile"
        )
    connectors_raw = _section(raw, "connectors")
    if not connectors_raw:
        raise ConfigError("no connector configured: add a [connectors.NAME] section")
    connectors = {
        name: parse_connector(name, _section(connectors_raw, name, f"connectors.{name}"), environ)
        for name in connectors_raw
    }
    return Settings(
        kafka=kafka_settings,
        connectors=connectors,
        batching=batching_settings,
        dispatch=dispatch_settings,
        dead_letter=dlq_settings,
        metrics=metrics_settings,
    )


def parse_connector(
    name: str, raw: Mapping[str, Any], environ: Mapping[str, str]
) -> ConnectorSettings:
    where = f"connectors.{name}"
    allowed = {
        "username",
        "password_env",
        "password_file",
        "api_endpoint",
        "discovery_endpoint",
        "add_requests_per_minute",
        "remove_requests_per_minute",
        "other_requests_per_minute",
        "max_active_imports",
        "request_timeout_seconds",
        "contact_cache_size",
        "contact_cache_ttl_seconds",
    }
    if "password" in raw:
        raise ConfigError(
            f"{where}.password: secrets are not read from the file; "
            "set password_env (an environment variable) or password_file"
        )
    _check_keys(raw, where, allowed)
    return ConnectorSettings(
        name=name,
        username=_get(raw, f"{where}.username", str, required=True),
        password=_password(raw, where, environ),
        api_endpoint=_endpoint(raw, f"{where}.api_endpoint", None),
        discovery_endpoint=_endpoint(raw, f"{where}.discovery_endpoint", DEFAULT_DISCOVERY_ENDPOINT)
        or DEFAULT_DISCOVERY_ENDPOINT,
        add_requests_per_minute=_positive(raw, f"{where}.add_requests_per_minute", int, 75),
        remove_requests_per_minute=_positive(raw, f"{where}.remove_requests_per_minute", int, 35),
        other_requests_per_minute=_positive(raw, f"{where}.other_requests_per_minute", int, 600),
        max_active_imports=_positive(raw, f"{where}.max_active_imports", int, 25),
        request_timeout_seconds=_positive(raw, f"{where}.request_timeout_seconds", float, 121.0),
        contact_cache_size=_positive(raw, f"{where}.contact_cache_size", int, 1_000_000),
        contact_cache_ttl_seconds=_positive(
            raw, f"{where}.contact_cache_ttl_seconds", float, 3600.0
        ),
    )


SECRET_SUFFIXES = ("password", "secret", "jaas.config")


def _librdkafka(kafka: Mapping[str, Any], name: str) -> dict[str, Any]:
    settings = dict(_section(kafka, name, f"kafka.{name}"))
    refused = refused_setting(name, settings)
    if refused is not None:
        raise ConfigError(refused)
    for key in settings:
        if key.endswith(SECRET_SUFFIXES):
            raise ConfigError(
                f'kafka.{name}."{key}": secrets are not read from the file; set it in '
                f'[kafka.secrets] as "{key}" = {{ env = "VAR" }} or {{ file = "/path" }}'
            )
    return settings


def _secret(spec: Any, where: str, environ: Mapping[str, str]) -> Secret:
    if not isinstance(spec, Mapping) or set(spec) not in ({"env"}, {"file"}):
        raise ConfigError(f'{where} must be {{ env = "VAR" }} or {{ file = "/path" }}')
    if "env" in spec:
        return _env_secret(str(spec["env"]), where, environ)
    return _file_secret(str(spec["file"]), where)


def _password(raw: Mapping[str, Any], where: str, environ: Mapping[str, str]) -> Secret:
    env_name = _get(raw, f"{where}.password_env", str, None)
    file_name = _get(raw, f"{where}.password_file", str, None)
    if env_name and file_name:
        raise ConfigError(f"{where}: set password_env or password_file, not both")
    if env_name:
        return _env_secret(env_name, f"{where}.password_env", environ)
    if file_name:
        return _file_secret(file_name, f"{where}.password_file")
    raise ConfigError(f"{where}: set password_env or password_file")


def _env_secret(variable: str, where: str, environ: Mapping[str, str]) -> Secret:
    value = environ.get(variable)
    if not value:
        raise ConfigError(f"{where}: environment variable {variable} is not set")
    return Secret(value)


def _file_secret(path: str, where: str) -> Secret:
    # Stripped: files written by editors and Kubernetes secrets often end with a newline.
    try:
        return Secret(Path(path).read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None


def _endpoint(raw: Mapping[str, Any], name: str, default: str | None) -> str | None:
    value = _get(raw, name, str, default)
    if value is None:
        return None
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _section(raw: Mapping[str, Any], key: str, name: str | None = None) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name or key} must be a table ([{name or key}])")
    return value


def _check_keys(raw: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"unknown setting {where}.{key}; known: {', '.join(sorted(allowed))}")


def _get(
    raw: Mapping[str, Any],
    name: str,
    kind: type[T],
    default: T | None = None,
    *,
    required: bool = False,
) -> T:
    key = name.rsplit(".", 1)[-1]
    if key not in raw:
        if required:
            raise ConfigError(f"{name} is required")
        return default  # type: ignore[return-value]
    value = raw[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{name} must be {_kind_name(kind)}, got {value!r}")
    # TOML has nan and inf. nan passes every comparison-based check (nan <= 0 is false), and no
    # duration, ratio or timeout of ddsync means anything infinite.
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return value


def _positive(raw: Mapping[str, Any], name: str, kind: type[T], default: T) -> T:
    value = _get(raw, name, kind, default)
    if value <= 0:  # type: ignore[operator]
        raise ConfigError(f"{name} must be greater than 0, got {value!r}")
    return value


def _milliseconds(value: Any, name: str) -> int:
    """A librdkafka duration, which may be written as a number or a string of digits."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{name} must be a whole number of milliseconds, got {value!r}")
    try:
        return int(str(value))
    except ValueError:
        raise ConfigError(f"{name} must be a whole number of milliseconds, got {value!r}") from None


def _optional_positive(raw: Mapping[str, Any], name: str) -> int | None:
    if name.rsplit(".", 1)[-1] not in raw:
        return None
    return _positive(raw, name, int, 1)


def _kind_name(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
    }.get(kind, kind.__name__)
