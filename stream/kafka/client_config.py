"""librdkafka settings for every Kafka client ddsync makes, from one place.

Contract:

* The cluster's connection and security settings are written once, in ``[kafka.consumer]``
  (``security.*``, ``sasl.*``, ``ssl.*``, ``client.*``, ``socket.*``, ``broker.address.*``), with
  their secrets in ``[kafka.secrets]``. :func:`connection_config` is exactly those plus
  ``bootstrap.servers``; every client (the pipeline's consumer, the dead-letter producer, the
  replay's consumer and producer, the admin client of start-up checks, ``ddsync check`` and
  ``ddsync demo``) starts from it, so a secured cluster works for all of them or none.
* The settings ddsync's guarantees rest on (:data:`GUARANTEED_CONSUMER`,
  :data:`GUARANTEED_PRODUCER`) are applied last and cannot be overridden; ``stream.config``
  refuses a configuration that tries, naming the setting; so it does an ``auto.offset.reset``
  other than earliest (:data:`RESTRICTED_CONSUMER`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from stream.settings import KafkaSettings

LIBRDKAFKA_LOG = logging.getLogger("stream.librdkafka")

# A member that has not polled for this long leaves the group; a revoke runs inside a poll.
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000

# Keys of [kafka.consumer] that say how to reach the cluster; every client needs them.
CONNECTION_PREFIXES = ("security.", "sasl.", "ssl.", "client.", "socket.", "broker.address.")

# Offsets move only when records are final (manual commits of what the ledger allows), and
# revokes are incremental so a rebalance does not stop every partition at once.
GUARANTEED_CONSUMER: Mapping[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "partition.assignment.strategy": "cooperative-sticky",
}
# A dead letter is final only once every in-sync replica has it, exactly once.
GUARANTEED_PRODUCER: Mapping[str, Any] = {"acks": "all", "enable.idempotence": True}
# Aliases librdkafka accepts for the same settings: an override by another name is one too.
GUARANTEED_ALIASES: Mapping[str, str] = {
    "request.required.acks": "acks",
}
# Settings that may be written, but only with one of these values. auto.offset.reset applies
# when a partition has no committed offset (a new group, offsets expired or out of range):
# latest/largest/end would skip every record before the current end, unsynced and never
# dead-lettered; error makes librdkafka report an error that the consumer logs and passes over
# while the partition stays unconsumed. Reading from the beginning again only re-sends what
# DotDigital already has, which the last transition winning makes harmless.
RESTRICTED_CONSUMER: Mapping[str, frozenset[str]] = {
    "auto.offset.reset": frozenset({"earliest", "smallest", "beginning"}),
}


def connection_config(settings: KafkaSettings) -> dict[str, Any]:
    """``bootstrap.servers``, the connection and security settings, their secrets, and a logger:
    librdkafka's own lines go through Python logging (one format, ``--log-format json`` too)
    instead of straight to stderr, served when the client is polled."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "logger": LIBRDKAFKA_LOG,
    }
    config.update({k: v for k, v in settings.consumer.items() if k.startswith(CONNECTION_PREFIXES)})
    config.update({key: secret.reveal() for key, secret in settings.secrets.items()})
    return config


def consumer_config(settings: KafkaSettings, *, group_id: str | None = None) -> dict[str, Any]:
    """A consumer of ``group_id`` (default ``kafka.group_id``): ddsync's defaults, then
    ``[kafka.consumer]``, then the connection, then what correctness needs."""
    config: dict[str, Any] = {
        "auto.offset.reset": "earliest",
        "max.poll.interval.ms": DEFAULT_MAX_POLL_INTERVAL_MS,
    }
    config.update(settings.consumer)
    config.update(connection_config(settings))
    config["group.id"] = group_id or settings.group_id
    config.update(GUARANTEED_CONSUMER)
    return config


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    """A producer of records ddsync must not lose (dead letters, replays): defaults, then
    ``[kafka.producer]``, then the connection, then acks=all and idempotence."""
    config: dict[str, Any] = {"linger.ms": 20, "compression.type": "lz4"}
    config.update(settings.producer)
    config.update(connection_config(settings))
    config.update(GUARANTEED_PRODUCER)
    return config


def admin_config(settings: KafkaSettings) -> dict[str, Any]:
    """An admin client (topic checks and creation, ``ddsync check``)."""
    return connection_config(settings)


# Settings with a ddsync name of their own: one way to set each.
OWN_SETTINGS: Mapping[str, str] = {
    "bootstrap.servers": "kafka.bootstrap_servers",
    "metadata.broker.list": "kafka.bootstrap_servers",
    "group.id": "kafka.group_id",
}


def refused_setting(table: str, settings: Mapping[str, Any]) -> str | None:
    """Why ``[kafka.<table>]`` may not hold one of its keys (the first such), if any: it would
    override a guarantee, it has a ddsync setting of its own, or its value could lose records."""
    guaranteed = GUARANTEED_CONSUMER if table == "consumer" else GUARANTEED_PRODUCER
    for key in settings:
        name = GUARANTEED_ALIASES.get(key, key)
        if name in guaranteed:
            return (
                f'kafka.{table}."{key}" cannot be set: ddsync requires {name} = '
                f"{_toml(guaranteed[name])} (its delivery guarantees rest on it)"
            )
        if key in OWN_SETTINGS:
            return f'kafka.{table}."{key}" cannot be set here: use {OWN_SETTINGS[key]}'
        allowed = RESTRICTED_CONSUMER.get(key) if table == "consumer" else None
        if allowed is not None and str(settings[key]).lower() not in allowed:
            return (
                f'kafka.{table}."{key}" cannot be {_toml(settings[key])}: ddsync requires '
                f'"earliest" (any other value can skip records or stop a partition without '
                f"an error when it has no committed offset)"
            )
    return None


def _toml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f'"{value}"'
