"""The topics ddsync depends on, checked before anything depends on them.

Contract of :func:`ensure_topics`:

* Every source topic (``kafka.topics``) must exist; ddsync never creates one (a typo in a topic
  name must fail, not start consuming an empty new topic).
* The dead-letter topic is created when missing and ``kafka.create_dead_letter_topic`` is on,
  with ``kafka.dead_letter_partitions`` and ``kafka.dead_letter_replication_factor`` (absent:
  the broker's defaults, ``num.partitions`` and ``default.replication.factor``). Another
  instance creating it at the same moment is fine.
* The outcomes topic, when ``kafka.publish_outcomes`` is on, likewise
  (``kafka.create_outcomes_topic``, ``kafka.outcomes_partitions``,
  ``kafka.outcomes_replication_factor``), created compacted
  (``cleanup.policy=compact``): it keeps the latest outcome of each contact and book. An existing
  topic is used as it is.
* Anything else raises :class:`TopicError`, whose message is one line naming the topic and what
  to do. A cluster that cannot be reached raises it too, at once when it refused the credentials
  (an authentication error is not worth waiting out), else after ``timeout``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from stream.kafka.client_config import admin_config
from stream.settings import KafkaSettings

# The broker's own default, in CreateTopics requests (KIP-464).
BROKER_DEFAULT = -1


class TopicError(RuntimeError):
    """A topic ddsync needs is missing and cannot be had, or the cluster cannot be reached
    (``unreachable``); the message says what to do."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int  # 0 when the topic does not exist
    created: bool = False


@dataclass(frozen=True)
class _Output:
    """A topic ddsync writes to and may create: how, and which settings say so."""

    what: str  # "dead-letter", "outcomes"
    name: str
    create: bool
    setting: str  # the kafka.* prefix of its settings
    partitions: int | None
    replication: int | None
    config: dict[str, str]


def _outputs(settings: KafkaSettings) -> list[_Output]:
    outputs = [
        _Output(
            "dead-letter",
            settings.dead_letter_topic,
            settings.create_dead_letter_topic,
            "dead_letter",
            settings.dead_letter_partitions,
            settings.dead_letter_replication_factor,
            {},
        )
    ]
    if settings.publish_outcomes:
        outputs.append(
            _Output(
                "outcomes",
                settings.outcomes_topic,
                settings.create_outcomes_topic,
                "outcomes",
                settings.outcomes_partitions,
                settings.outcomes_replication_factor,
                {"cleanup.policy": "compact"},
            )
        )
    return outputs


def ensure_topics(settings: KafkaSettings, *, timeout: float = 30.0) -> list[TopicState]:
    """Check the source topics, create the dead-letter topic (and the outcomes topic, when on)
    if missing and allowed; the states of the source topics, then the dead-letter topic's, then
    the outcomes topic's."""
    cluster = Cluster(settings)
    metadata = cluster.metadata(timeout)
    sources = topic_states(metadata, settings)[:-1]
    for state in sources:
        if not state.partitions:
            raise TopicError(
                f"source topic {state.name} does not exist on {settings.bootstrap_servers}: "
                "create it, or fix kafka.topics"
            )
    outputs = []
    for output in _outputs(settings):
        state = _state(metadata, output.name)
        outputs.append(state if state.partitions else _create(cluster, output, timeout))
    return [*sources, *outputs]


class Cluster:
    """An admin client of the cluster (:func:`stream.kafka.client_config.admin_config`) that notices
    refused credentials instead of waiting them out."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._errors: list[KafkaError] = []
        config: dict[str, Any] = {**admin_config(settings), "error_cb": self._errors.append}
        self.admin = AdminClient(config)

    def metadata(self, timeout: float) -> Any:
        """The cluster's brokers and topics; :class:`TopicError` (unreachable) when it refused
        the credentials, or did not answer within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                # In steps, so that an authentication error ends the wait at once.
                return self.admin.list_topics(timeout=min(1.0, timeout))
            except KafkaException as exc:
                self.admin.poll(0)  # serve error_cb
                refused = [e for e in self._errors if e.code() == KafkaError._AUTHENTICATION]
                if refused:
                    raise TopicError(
                        f"Kafka at {self.settings.bootstrap_servers} refused the credentials "
                        f"({refused[0].str()}): check the sasl.* / ssl.* settings and "
                        "[kafka.secrets]",
                        unreachable=True,
                    ) from None
                if time.monotonic() >= deadline:
                    raise TopicError(
                        f"cannot reach Kafka at {self.settings.bootstrap_servers} within "
                        f"{timeout:g} s ({_describe(exc)}): check kafka.bootstrap_servers and "
                        "the security settings",
                        unreachable=True,
                    ) from None

    def describe_topics(self, timeout: float) -> list[TopicState]:
        """Each source topic and the dead-letter topic, with its partition count (0: missing)."""
        return topic_states(self.metadata(timeout), self.settings)


def topic_states(metadata: Any, settings: KafkaSettings) -> list[TopicState]:
    """From ``metadata``: each source topic, then the dead-letter topic."""
    return [_state(metadata, name) for name in (*settings.topics, settings.dead_letter_topic)]


def _state(metadata: Any, name: str) -> TopicState:
    topic = metadata.topics.get(name)
    exists = topic is not None and topic.error is None and bool(topic.partitions)
    return TopicState(name, len(topic.partitions) if exists and topic else 0)


def _create(cluster: Cluster, output: _Output, timeout: float) -> TopicState:
    name, setting = output.name, output.setting
    if not output.create:
        raise TopicError(
            f"{output.what} topic {name} does not exist: create it, or set "
            f"kafka.create_{setting}_topic = true to let ddsync create it"
        )
    topic = NewTopic(
        name,
        num_partitions=output.partitions or BROKER_DEFAULT,
        replication_factor=output.replication or BROKER_DEFAULT,
        config=output.config,
    )
    future = cluster.admin.create_topics(
        [topic], operation_timeout=timeout, request_timeout=timeout
    )[name]
    try:
        future.result(timeout=timeout)
    except KafkaException as exc:
        error = exc.args[0]
        if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise TopicError(
                f"{output.what} topic {name} does not exist and cannot be created "
                f"({_describe(exc)}): create it yourself, or fix "
                f"kafka.{setting}_partitions / kafka.{setting}_replication_factor"
            ) from None
    # Created on the controller; the broker answering metadata may learn of it a moment later.
    deadline = time.monotonic() + timeout
    while True:
        created = _state(cluster.metadata(timeout), name)
        if created.partitions or time.monotonic() >= deadline:
            return TopicState(name, created.partitions, created=True)
        time.sleep(0.1)


def _describe(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return f"{error.name()}: {error.str()}"
    return str(exc)
