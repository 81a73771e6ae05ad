"""Liveness and readiness of a running pipeline, from signals its threads leave behind.

The pipeline's event loop and the Kafka consumer thread each beat a :class:`Heartbeat` as they
go round (``Pipeline._tick``, ``KafkaSource._run``); librdkafka's statistics tell
:class:`BrokerStatus` which brokers the consumer is connected to. :class:`Health` reads those
signals, never the pipeline's loop, so it can be asked from another thread (the HTTP server's)
and still answer while the loop is stalled.

Contract:

* **Liveness** fails when the event loop or the consumer thread has not beaten for more than
  ``liveness_timeout`` seconds. The consumer thread legitimately blocks inside a revoke callback
  for up to ``BatchingSettings.revoke_bound_seconds`` (the flush, the accepted jobs, the dead
  letters' acknowledgements; 135 s by default), so the timeout must exceed that
  (``stream.config`` refuses one that does not). The loop does not tick during shutdown either,
  which is bounded by ``batching.shutdown_flush_seconds`` plus a few seconds of draining.
* **Readiness** fails while liveness fails, while no partition is assigned (not in the group
  yet, or the assignment was revoked or lost), while no broker is connected, or while the
  dead-letter circuit breaker is open. A suspended connector (:mod:`stream.core.suspensions`) is
  named in the ``connectors`` check but does not fail it: the other connectors are served.
* The broker check reads librdkafka's statistics (``statistics.interval.ms``): a broker counts
  when its connection state is ``UP``. Statistics rather than ``error_cb``: an error callback
  says when every broker went down, but nothing says when one came back; an idle consumer
  (nothing to read, nothing to commit) would stay "unreachable" for good. The statistics say
  both, every interval. When they stop coming (more than three intervals) the check fails too;
  with ``statistics.interval.ms = 0`` the brokers are not monitored and the check passes.
* Every check is named in the report, with a one-line reason; no secret is ever in one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from stream.clock import Clock
from stream.core.breaker import DeadLetterBreaker
from stream.core.ledger import Ledger
from stream.core.suspensions import Suspensions

log = logging.getLogger(__name__)

STATISTICS_INTERVAL_MS = 5000
# Statistics older than this many intervals mean librdkafka stopped reporting.
STALE_INTERVALS = 3
# Broker entries of librdkafka's statistics that stand for a real connection (the others are
# its internal broker, always UP, and logical ones such as the group coordinator's alias).
_REAL_BROKER_SOURCES = frozenset({"configured", "learned"})


class Heartbeat:
    """The time something last made progress. :meth:`beat` from any thread; cheap.

    A new heartbeat counts as a beat at its creation, so what has not started yet gets a whole
    timeout to do so.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = clock.monotonic()

    def beat(self) -> None:
        self._last = self._clock.monotonic()

    def age(self) -> float:
        """Seconds since the last beat."""
        return max(0.0, self._clock.monotonic() - self._last)


class BrokerStatus:
    """Which brokers the consumer is connected to, from librdkafka's statistics callback."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._interval = 0.0
        self._seen_at: float | None = None
        self._up = 0
        self._known = 0

    def instrument(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` with this status as its ``stats_cb``, for the consumer it builds."""
        self._interval = float(config.get("statistics.interval.ms", 0)) / 1000
        return {**config, "stats_cb": self.observe}

    def observe(self, statistics: str) -> None:
        """One librdkafka statistics report (JSON). Never raises: it runs inside ``poll``."""
        try:
            brokers = orjson.loads(statistics)["brokers"].values()
            real = [b for b in brokers if b.get("source") in _REAL_BROKER_SOURCES]
            up = sum(1 for b in real if b.get("state") == "UP")
        except Exception:
            log.warning("unreadable librdkafka statistics; broker status left as it was")
            return
        self._up, self._known = up, len(real)
        self._seen_at = self._clock.monotonic()

    def check(self) -> Check:
        if self._interval <= 0:
            return Check(True, "not monitored: statistics.interval.ms is 0")
        if self._seen_at is None:
            return Check(False, "no broker statistics yet")
        age = self._clock.monotonic() - self._seen_at
        if age > STALE_INTERVALS * self._interval:
            return Check(False, f"no broker statistics for {age:.0f} s")
        if self._up == 0:
            return Check(False, f"no broker connected (0 of {self._known} known)")
        return Check(True, f"{self._up} of {self._known} known brokers connected")


@dataclass(frozen=True)
class Vitals:
    """The signals a pipeline's threads leave for :class:`Health`."""

    loop: Heartbeat
    consumer: Heartbeat
    brokers: BrokerStatus

    @classmethod
    def on(cls, clock: Clock) -> Vitals:
        return cls(Heartbeat(clock), Heartbeat(clock), BrokerStatus(clock))


class Monitored(Protocol):
    """What health reads of a running pipeline (:class:`stream.pipeline.processor.Pipeline`),
    named here so observability does not import the pipeline that imports it."""

    @property
    def vitals(self) -> Vitals: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def breaker(self) -> DeadLetterBreaker: ...
    @property
    def suspensions(self) -> Suspensions: ...


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Report:
    """Named checks; ok when every one is."""

    checks: Mapping[str, Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks.values())

    def to_json(self) -> dict[str, Any]:
        """``{"status": "ok"|"failing", "checks": {name: {"status": ..., "detail": ...}}}``."""
        return {
            "status": _status(self.ok),
            "checks": {
                name: {"status": _status(check.ok), "detail": check.detail}
                for name, check in self.checks.items()
            },
        }


class Health:
    """Liveness and readiness of one pipeline; safe to ask from any thread."""

    def __init__(
        self,
        vitals: Vitals,
        *,
        liveness_timeout: float,
        assigned: Callable[[], int],
        breaker: DeadLetterBreaker,
        suspensions: Suspensions | None = None,
    ) -> None:
        self._vitals = vitals
        self._timeout = liveness_timeout
        self._assigned = assigned
        self._breaker = breaker
        self._suspensions = suspensions

    @classmethod
    def of(cls, pipeline: Monitored, liveness_timeout: float) -> Health:
        ledger = pipeline.ledger
        return cls(
            pipeline.vitals,
            liveness_timeout=liveness_timeout,
            # Asked from the HTTP thread: the snapshot is copied in C, under the GIL, at once.
            assigned=lambda: len(ledger.owned),
            breaker=pipeline.breaker,
            suspensions=pipeline.suspensions,
        )

    def liveness(self) -> Report:
        return Report(
            {
                "event_loop": self._progress(self._vitals.loop, "the event loop ticked"),
                "consumer_thread": self._progress(self._vitals.consumer, "the consumer polled"),
            }
        )

    def readiness(self) -> Report:
        assigned = self._assigned()
        partitions = (
            Check(True, f"{assigned} partition{'' if assigned == 1 else 's'} assigned")
            if assigned
            else Check(False, "no partitions assigned (not in the group yet, or revoked or lost)")
        )
        breaker = Check(not self._breaker.is_open, self._breaker.describe())
        checks = {
            **self.liveness().checks,
            "partitions": partitions,
            "broker": self._vitals.brokers.check(),
            "circuit_breaker": breaker,
        }
        if self._suspensions is not None:
            # Ready with some connectors suspended: the others are being served, and the
            # suspended ones' records are dead-lettered, not held. All suspended opens the
            # breaker, which fails readiness above.
            checks["connectors"] = Check(True, self._suspensions.describe())
        return Report(checks)

    def _progress(self, heartbeat: Heartbeat, what: str) -> Check:
        age = heartbeat.age()
        if age > self._timeout:
            return Check(False, f"{what} {age:.1f} s ago (more than {self._timeout:g} s)")
        return Check(True, f"{what} {age:.1f} s ago")


def _status(ok: bool) -> str:
    return "ok" if ok else "failing"
