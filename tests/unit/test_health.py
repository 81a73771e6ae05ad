"""Liveness and readiness checks on a fake clock: heartbeats, broker statistics, the report."""

from __future__ import annotations

import orjson

from stream.clock import FakeClock
from stream.core.breaker import DeadLetterBreaker
from stream.observability.health import (
    STALE_INTERVALS,
    BrokerStatus,
    Health,
    Heartbeat,
    Report,
    Vitals,
)

TIMEOUT = 60.0


def statistics(**states: tuple[str, str]) -> str:
    """librdkafka's statistics JSON, reduced to its brokers: name -> (source, state)."""
    brokers = {name: {"source": source, "state": state} for name, (source, state) in states.items()}
    return orjson.dumps({"name": "rdkafka#consumer-1", "brokers": brokers}).decode()


UP = statistics(
    **{
        "k:9092/1": ("learned", "UP"),
        "k:9092/bootstrap": ("configured", "INIT"),
        "GroupCoordinator": ("logical", "UP"),
    }
)
ALL_DOWN = statistics(
    **{
        "k:9092/1": ("learned", "DOWN"),
        "k:9092/bootstrap": ("configured", "CONNECT"),
        # librdkafka's internal broker is always UP; it says nothing about the cluster.
        ":0/internal": ("internal", "UP"),
        "GroupCoordinator": ("logical", "UP"),
    }
)


class Pipeline:
    """What Health reads of a pipeline, settable by the test."""

    def __init__(self, clock: FakeClock) -> None:
        self.vitals = Vitals.on(clock)
        self.vitals.brokers.instrument({"statistics.interval.ms": 5000})
        self.assigned = 3
        self.breaker = DeadLetterBreaker(window=10, ratio=0.5, min_records=4)
        self.health = Health(
            self.vitals,
            liveness_timeout=TIMEOUT,
            assigned=lambda: self.assigned,
            breaker=self.breaker,
        )


def failing(report: Report) -> set[str]:
    return {name for name, check in report.checks.items() if not check.ok}


def test_a_heartbeat_ages_with_the_clock_and_a_beat_resets_it() -> None:
    clock = FakeClock()
    heartbeat = Heartbeat(clock)
    assert heartbeat.age() == 0
    clock.advance(7)
    assert heartbeat.age() == 7
    heartbeat.beat()
    assert heartbeat.age() == 0


def test_liveness_fails_when_the_loop_stops_ticking_and_recovers_when_it_ticks() -> None:
    clock = FakeClock()
    p = Pipeline(clock)
    clock.advance(TIMEOUT)
    assert p.health.liveness().ok, "exactly the timeout is still alive"
    p.vitals.consumer.beat()
    clock.advance(1)
    report = p.health.liveness()
    assert failing(report) == {"event_loop"}
    assert "61.0 s ago (more than 60 s)" in report.checks["event_loop"].detail
    assert report.to_json()["status"] == "failing"
    p.vitals.loop.beat()
    assert p.health.liveness().ok


def test_liveness_fails_when_the_consumer_thread_stops_polling() -> None:
    clock = FakeClock()
    p = Pipeline(clock)
    for _ in range(7):
        clock.advance(10)
        p.vitals.loop.beat()
    assert failing(p.health.liveness()) == {"consumer_thread"}


def test_readiness_is_ok_with_partitions_a_broker_and_a_closed_breaker() -> None:
    clock = FakeClock()
    p = Pipeline(clock)
    p.vitals.brokers.observe(UP)
    report = p.health.readiness()
    assert report.ok
    body = report.to_json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {
        "event_loop",
        "consumer_thread",
        "partitions",
        "broker",
        "circuit_breaker",
    }
    assert body["checks"]["broker"] == {"status": "ok", "detail": "1 of 2 known brokers connected"}
    assert body["checks"]["partitions"]["detail"] == "3 partitions assigned"


def test_readiness_fails_without_partitions() -> None:
    clock = FakeClock()
    p = Pipeline(clock)
    p.vitals.brokers.observe(UP)
    p.assigned = 0
    report = p.health.readiness()
    assert failing(report) == {"partitions"}
    assert "no partitions assigned" in report.checks["partitions"].detail
    assert p.health.liveness().ok, "being in no group yet is not a reason to restart"


def test_readiness_fails_while_no_broker_is_connected_and_recovers() -> None:
    clock = FakeClock()
    p = Pipeline(clock)
    assert failing(p.health.readiness()) == {"broker"}, "no statistics yet"
    p.vitals.brokers.observe(ALL_DOWN)
    report = p.health.readiness()
    assert failing(report) == {"broker"}
    assert report.checks["broker"].detail == "no broker connected (0 of 2 known)"
    clock.advance(5)
    p.vitals.brokers.observe(UP)
    assert p.health.readiness().ok


def test_readiness_fails_when_statistics_stop_coming() -> None:
    clock = FakeClock()
    p = Pipeline(clock)
    p.vitals.brokers.observe(UP)
    clock.advance(STALE_INTERVALS * 5)
    assert p.health.readiness().checks["broker"].ok
    clock.advance(1)
    check = p.health.readiness().checks["broker"]
    assert (check.ok, check.detail) == (False, "no broker statistics for 16 s")


def test_unreadable_statistics_leave_the_status_as_it_was() -> None:
    clock = FakeClock()
    status = BrokerStatus(clock)
    status.instrument({"statistics.interval.ms": "1000"})  # librdkafka takes strings too
    status.observe(UP)
    status.observe("not json")
    status.observe('{"brokers": 3}')
    assert status.check().ok


def test_brokers_are_not_monitored_without_statistics() -> None:
    status = BrokerStatus(FakeClock())
    config = status.instrument({"bootstrap.servers": "k:9092", "statistics.interval.ms": 0})
    assert config["stats_cb"] == status.observe
    assert config["bootstrap.servers"] == "k:9092"
    assert status.check().ok
    assert "not monitored" in status.check().detail


def test_readiness_fails_once_the_breaker_opened_and_says_why() -> None:
    clock = FakeClock()
    p = Pipeline(clock)
    p.vitals.brokers.observe(UP)
    for _ in range(4):
        p.breaker.decoded(True)
    report = p.health.readiness()
    assert failing(report) == {"circuit_breaker"}
    assert report.checks["circuit_breaker"].detail == p.breaker.describe()
    assert "dead-letter breaker open" in report.checks["circuit_breaker"].detail


def test_readiness_includes_liveness() -> None:
    clock = FakeClock()
    p = Pipeline(clock)
    clock.advance(TIMEOUT + 1)
    p.vitals.brokers.observe(UP)
    assert failing(p.health.readiness()) == {"event_loop", "consumer_thread"}
