"""ddsync's settings: what can be configured, each setting's default, and what it must satisfy.

Contract:

* A leaf module: it imports the standard library only, so any layer (``stream.core`` included)
  may depend on these types without depending on how they are read. Reading them (TOML, the
  ``DDSYNC__`` environment overrides, secrets) is :mod:`stream.config`'s job.
* The dataclasses are the single statement of the settings: ``[section] key`` of the file is
  field ``key`` of the section's dataclass, its type is the field's, and its default is the
  field's default, written once, here. The loader derives the known keys, types and defaults
  from the fields and adds nothing but what cannot be a field of its own: secrets, librdkafka's
  pass-through tables, and the checks that relate several settings.
* A constraint on one value is part of its type: ``Annotated[int, positive]``
  (:data:`PositiveInt`) and the like. A constraint takes the value, returns it (normalised,
  for :func:`http_url`) or raises :class:`ValueError` saying what the value must be; the loader
  prefixes the dotted name of the setting. Constructing a dataclass directly (tests, tools)
  checks nothing: the constraints are the file's, not the objects'.
* Every float read from the file is finite (the loader's rule for every float, not a
  constraint to remember per field).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

DEFAULT_DISCOVERY_ENDPOINT = "https://r1-api.dotdigital.com"
# At the end of a revoke, for the dead letters its flushes decided to be acknowledged.
REVOKE_DRAIN_SECONDS = 5.0
# At the end of a shutdown, for the dead letters of the last flushes to be acknowledged, and then
# for the final commit and leaving the group: both come out of batching.shutdown_timeout_seconds.
SHUTDOWN_DRAIN_SECONDS = 5.0
SHUTDOWN_COMMIT_SECONDS = 5.0

N = TypeVar("N", int, float)

# A constraint on one setting's value: see the module's contract.
Constraint = Callable[[Any], Any]


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


def positive(value: N) -> N:
    # Counts, sizes, rates and durations: zero would mean "never" or "nothing", never "off".
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return value


def http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    # DotDigital writes its endpoints with a trailing slash; paths are appended to them.
    return value.rstrip("/")


def ratio(value: float) -> float:
    # A share of records: 0 would open the breaker on the first dead letter.
    if not 0 < value <= 1:
        raise ValueError("must be in (0, 1]")
    return value


def topic_names(value: tuple[Any, ...]) -> tuple[str, ...]:
    if not value or not all(isinstance(topic, str) for topic in value):
        raise ValueError("must be a non-empty list of topic names")
    return value


def connector_mode(value: str) -> str:
    if value not in CONNECTOR_MODES:
        raise ValueError(f"must be one of {', '.join(CONNECTOR_MODES)}, got {value!r}")
    return value


CONNECTOR_MODES = ("live", "shadow")
PositiveInt = Annotated[int, positive]
PositiveFloat = Annotated[float, positive]
ConnectorMode = Annotated[str, connector_mode]
HttpUrl = Annotated[str, http_url]
Ratio = Annotated[float, ratio]
TopicNames = Annotated[tuple[str, ...], topic_names]
# A librdkafka table, passed through as written (its own keys and value types).
LibrdkafkaTable = Mapping[str, str | int | float | bool]


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    group_id: str = "ddsync"
    topics: TopicNames = ("audience-transitions", "journey-transitions")
    dead_letter_topic: str = "ddsync.dlq"
    # At start a missing dead-letter topic is created, as Kafka Connect does with its own;
    # partitions and replication factor default (None) to the broker's defaults.
    create_dead_letter_topic: bool = True
    dead_letter_partitions: PositiveInt | None = None
    dead_letter_replication_factor: PositiveInt | None = None
    # Each contact's final outcome per address book, latest kept by compaction (README:
    # "Outcomes topic"); created at start like the dead-letter topic, cleanup.policy=compact.
    publish_outcomes: bool = True
    outcomes_topic: str = "ddsync.outcomes"
    create_outcomes_topic: bool = True
    outcomes_partitions: PositiveInt | None = None
    outcomes_replication_factor: PositiveInt | None = None
    consumer: LibrdkafkaTable = field(default_factory=dict)
    producer: LibrdkafkaTable = field(default_factory=dict)
    # librdkafka secrets, for the consumer and the producer alike.
    secrets: Mapping[str, Secret] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchingSettings:
    max_contacts: PositiveInt = 1000
    window_seconds: PositiveFloat = 1200.0
    # Backpressure: past this many buffered records the consumer pauses its partitions.
    max_buffered_records: PositiveInt = 50_000
    revoke_flush_seconds: PositiveFloat = 10.0
    # Then, how long a revoke waits for what DotDigital may be doing for the revoked partitions
    # (a request in the air, an accepted import or removal). The consumer is inside its
    # rebalance callback meanwhile: both bounds together must stay below max.poll.interval.ms.
    revoke_job_seconds: PositiveFloat = 120.0
    shutdown_flush_seconds: PositiveFloat = 30.0
    # From SIGTERM to the process's end, whatever state it is in (inside a revoke, throttled,
    # DotDigital or the broker unreachable): must stay below the pod's
    # terminationGracePeriodSeconds, or Kubernetes kills the process mid-commit.
    shutdown_timeout_seconds: PositiveFloat = 50.0

    @property
    def revoke_bound_seconds(self) -> float:
        """How long the consumer thread may wait inside one revoke: the flush, the jobs, and a
        moment for the dead letters decided meanwhile to be acknowledged."""
        return self.revoke_flush_seconds + self.revoke_job_seconds + REVOKE_DRAIN_SECONDS


@dataclass(frozen=True)
class DispatchSettings:
    retry_timeout_seconds: PositiveFloat = 600.0
    commit_interval_seconds: PositiveFloat = 1.0
    # How often a suspended connector's account is asked whether it works again.
    suspension_probe_seconds: PositiveFloat = 60.0


@dataclass(frozen=True)
class DeadLetterSettings:
    # The breaker opens when more than ``breaker_ratio`` of the last ``breaker_window`` finished
    # records were dead-lettered, once at least ``breaker_min_records`` were seen.
    breaker_window: PositiveInt = 1000
    breaker_ratio: Ratio = 0.9
    breaker_min_records: PositiveInt = 200
    max_replays: PositiveInt = 3


@dataclass(frozen=True)
class ConnectorSettings:
    # The name of its [connectors.NAME] table.
    name: str
    username: str
    # From password_env or password_file, never from the file itself.
    password: Secret
    # "shadow": read, window and decide as usual, send nothing to DotDigital, record the plans
    # (would_add, would_remove) on the outcomes topic and commit. README: "Shadow mode".
    mode: ConnectorMode = "live"
    api_endpoint: HttpUrl | None = None
    discovery_endpoint: HttpUrl = DEFAULT_DISCOVERY_ENDPOINT
    add_requests_per_minute: PositiveInt = 75
    remove_requests_per_minute: PositiveInt = 35
    # Status polls, contact look-ups and address-book calls; corrected from the headers too.
    other_requests_per_minute: PositiveInt = 600
    max_active_imports: PositiveInt = 25
    # DotDigital asks clients to allow 121 s before timing a call out.
    request_timeout_seconds: PositiveFloat = 121.0
    # Contact ids remembered from imports: at most this many (oldest dropped first), each for
    # this long. An hour spans a few 20-minute windows (a contact entering and leaving soon
    # after is removed without a look-up first); an older id is looked up afresh, since the
    # older it is the likelier its contact was deleted and re-created with a new id meanwhile.
    contact_cache_size: PositiveInt = 1_000_000
    contact_cache_ttl_seconds: PositiveFloat = 3600.0


@dataclass(frozen=True)
class RemovalGuardSettings:
    # A flush's removals are held (dead-lettered as removal_guard, until an operator replays
    # them) when, with what was removed from the same address book in the last
    # ``window_seconds``, they exceed both ``share`` of the book and ``min_contacts``. An hour
    # at a fifth of a book: far above the churn of an audience (a few percent a day), far
    # below what an inverted filter does; small books (under 5,000) are left alone, since
    # their turnover is proportionally higher and their loss small. See the README.
    enabled: bool = True
    share: Ratio = 0.2
    min_contacts: PositiveInt = 1000
    window_seconds: PositiveFloat = 3600.0


@dataclass(frozen=True)
class MetricsSettings:
    host: str = "0.0.0.0"  # noqa: S104 - Prometheus scrapes from outside the pod
    # Not constrained: 0 binds a free port (see HttpServer.start).
    port: int = 9464
    enabled: bool = True
    # /healthz fails when the event loop or the consumer thread made no progress for this long;
    # must exceed a revoke's bound (the consumer thread waits inside a revoke, 135 s at most by
    # default), or a normal rebalance would restart the pod.
    liveness_timeout_seconds: PositiveFloat = 180.0


@dataclass(frozen=True)
class Settings:
    # One field per [section] of the file, in the order the loader reads and checks them.
    kafka: KafkaSettings
    connectors: Mapping[str, ConnectorSettings]
    batching: BatchingSettings = BatchingSettings()
    dispatch: DispatchSettings = DispatchSettings()
    dead_letter: DeadLetterSettings = DeadLetterSettings()
    removal_guard: RemovalGuardSettings = RemovalGuardSettings()
    metrics: MetricsSettings = MetricsSettings()
