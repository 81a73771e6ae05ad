"""/metrics, /healthz and /ready over real HTTP, with each failing condition made to happen for
real: a stalled event loop, a member of the group without partitions, an open circuit breaker,
a broker that went away (a dedicated one: the shared broker is never stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import localkafka
import orjson
import pytest

from stream import __version__
from stream.clock import FakeClock
from stream.config import load_settings
from stream.core.breaker import DeadLetterBreaker
from stream.demo.generator import DemoRecord
from stream.observability.health import Health, Vitals
from stream.observability.http_server import HttpServer
from stream.observability.metrics import Metrics
from stream.pipeline.processor import Pipeline
from stream.sandbox import (
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    run_sandbox,
)
from stream.settings import Settings
from tests.support.health import get, report, wait_for_report
from tests.support.kafka import KafkaCluster
from tests.support.processes import (
    PASSWORD,
    Account,
    DdsyncProcess,
    SandboxProcess,
    free_port,
    password_env,
    produce,
    run_with_config,
    write_config,
)
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.sandbox, pytest.mark.process]

USER = "health@apiconnector.com"
# librdkafka statistics every second, so a broker check reacts within a second or two.
FAST_STATISTICS = {"DDSYNC__KAFKA__CONSUMER__statistics.interval.ms": "1000"}


def failing(answer: dict[str, Any]) -> set[str]:
    return {name for name, check in answer["checks"].items() if check["status"] != "ok"}


# -- the server alone ---------------------------------------------------------------------------


@pytest.fixture
def server_on_a_fake_clock() -> Any:
    clock = FakeClock()
    vitals = Vitals.on(clock)
    vitals.brokers.instrument({"statistics.interval.ms": 1000})
    health = Health(
        vitals,
        liveness_timeout=60,
        assigned=lambda: 1,
        breaker=DeadLetterBreaker(window=10, ratio=0.5, min_records=4),
    )
    server = HttpServer(Metrics().registry, health)
    server.start("127.0.0.1", 0)
    try:
        yield server, clock, vitals
    finally:
        server.stop()


def test_metrics_page_with_process_and_build_info(server_on_a_fake_clock: Any) -> None:
    server, _clock, _vitals = server_on_a_fake_clock
    status, headers, body = get(server.port, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().endswith(b"# EOF\n")
    text = body.decode()
    assert f'ddsync_build_info{{version="{__version__}"}} 1.0' in text
    assert "process_resident_memory_bytes " in text
    assert "process_open_fds " in text
    assert "python_info{" in text
    assert "ddsync_records_consumed_total" in text or "ddsync_records_consumed " in text
    head = urllib.request.Request(f"http://127.0.0.1:{server.port}/healthz", method="HEAD")
    with urllib.request.urlopen(head, timeout=10) as response:
        assert (response.status, response.read()) == (200, b"")
    for path in ("/", "/nope", "/metrics/x", "/healthz/"):
        assert get(server.port, path)[0] == 404, path


def test_health_answers_follow_the_checks(server_on_a_fake_clock: Any) -> None:
    server, clock, vitals = server_on_a_fake_clock
    status, answer = report(server.port, "/healthz")
    assert status == 200
    assert set(answer["checks"]) == {"event_loop", "consumer_thread"}
    status, answer = report(server.port, "/ready")
    assert (status, failing(answer)) == (503, {"broker"})
    assert answer["checks"]["broker"]["detail"] == "no broker statistics yet"
    vitals.brokers.observe(
        orjson.dumps({"brokers": {"b/1": {"source": "learned", "state": "UP"}}}).decode()
    )
    assert report(server.port, "/ready")[0] == 200
    clock.advance(61)
    status, answer = report(server.port, "/healthz")
    assert (status, failing(answer)) == (503, {"event_loop", "consumer_thread"})


def test_a_taken_port_fails_at_start(kafka: KafkaCluster, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        clock = FakeClock()
        health = Health(
            Vitals.on(clock),
            liveness_timeout=60,
            assigned=lambda: 0,
            breaker=DeadLetterBreaker(window=10, ratio=0.5, min_records=4),
        )
        with pytest.raises(OSError, match="address already in use"):
            HttpServer(Metrics().registry, health).start("127.0.0.1", port)
        result = run_with_config(
            tmp_path,
            f'[kafka]\nbootstrap_servers = "{kafka.bootstrap_servers}"\n'
            f'topics = ["{kafka.create_topic()}"]\n'
            f'dead_letter_topic = "{kafka.create_topic()}"\n'
            # Existing output topics: ddsync logs nothing before the port fails.
            f'outcomes_topic = "{kafka.create_topic()}"\n'
            '[connectors.main]\nusername = "u"\n'
            f'password_env = "PW"\n[metrics]\nhost = "127.0.0.1"\nport = {port}\n',
            {"PW": "x"},
        )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"ddsync: metrics.port {port} cannot be opened: "), line


# -- a pipeline in-process: a stalled loop, a member without partitions ------------------------


@contextlib.asynccontextmanager
async def settings_for(kafka: KafkaCluster, tmp_path: Path, topic: str) -> AsyncIterator[Settings]:
    account = SandboxAccount(
        username=USER,
        password=PASSWORD,
        region="r1",
        address_books=(SandboxAddressBook(1, "health"),),
    )
    async with run_sandbox(SandboxSettings(accounts=(account,), port=0)) as sandbox:
        config = write_config(
            tmp_path / "ddsync.toml",
            bootstrap=kafka.bootstrap_servers,
            topics=[topic],
            dead_letter_topic=kafka.create_topic(),
            group=f"health-{uuid.uuid4().hex[:8]}",
            connectors={"main": (USER, sandbox.discovery_url)},
        )
        yield load_settings(config, {password_env("main"): PASSWORD, **FAST_STATISTICS})


class Running:
    """A pipeline on this loop with its HTTP server on a free port."""

    def __init__(self, settings: Settings, liveness_timeout: float = 60) -> None:
        self.pipeline = Pipeline(settings)
        self.server = HttpServer(
            self.pipeline.metrics.registry, Health.of(self.pipeline, liveness_timeout)
        )
        self.server.start("127.0.0.1", 0)
        self.task = asyncio.create_task(self.pipeline.run())

    async def wait_for(self, path: str, want: int, seconds: float = 30) -> dict[str, Any]:
        return await asyncio.to_thread(wait_for_report, self.server.port, path, want, seconds)

    async def stop(self) -> None:
        self.pipeline.stop()
        try:
            await asyncio.wait_for(self.task, 60)
        finally:
            self.server.stop()


async def test_liveness_fails_while_the_event_loop_is_stalled(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    topic = kafka.create_topic()
    async with settings_for(kafka, tmp_path, topic) as settings:
        running = Running(settings, liveness_timeout=1.0)
        try:
            await running.wait_for("/ready", 200)
            loop = asyncio.get_running_loop()
            # The loop runs this next, and is blocked while the thread below reads /healthz.
            loop.call_soon(time.sleep, 4)
            started = time.monotonic()
            answer = await running.wait_for("/healthz", 503, seconds=3.5)
            assert time.monotonic() - started >= 3.5, "the loop was not blocked meanwhile"
            assert "event_loop" in failing(answer)
            assert "more than 1 s" in answer["checks"]["event_loop"]["detail"]
            await running.wait_for("/healthz", 200, seconds=10)
        finally:
            await running.stop()


async def test_readiness_needs_partitions(
    kafka: KafkaCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.kafka.source")
    topic = kafka.create_topic(partitions=1)
    async with settings_for(kafka, tmp_path, topic) as settings:
        first = Running(settings)
        second: Running | None = None
        try:
            await first.wait_for("/ready", 200)
            second = Running(settings)
            # The second joined the group (a rebalance gave it nothing: the first keeps the
            # only partition, sticky), and is live but not ready.
            await eventually(
                lambda: any(r.getMessage() == "assigned nothing" for r in caplog.records),
                30,
                "the second member was never given its (empty) assignment",
            )
            answer = await second.wait_for("/ready", 503)
            assert failing(answer) == {"partitions"}, answer
            assert "no partitions assigned" in answer["checks"]["partitions"]["detail"]
            assert report(second.server.port, "/healthz")[0] == 200
            assert report(first.server.port, "/ready")[0] == 200
            # The first leaves: its partition moves to the second, which becomes ready; the
            # first, revoked, is no longer.
            first.pipeline.stop()
            await asyncio.wait_for(first.task, 60)
            status, answer = report(first.server.port, "/ready")
            assert (status, failing(answer)) == (503, {"partitions"})
            await second.wait_for("/ready", 200)
        finally:
            if not first.task.done():
                await first.stop()
            first.server.stop()
            if second is not None:
                await second.stop()


# -- ddsync as a process: an open breaker, a broker gone ---------------------------------------


def start_ddsync(
    tmp_path: Path,
    bootstrap: str,
    topic: str,
    dead_letter_topic: str,
    extra: str = "",
) -> tuple[DdsyncProcess, SandboxProcess, int]:
    account = Account(USER, "r1", (1,))
    sandbox = SandboxProcess(tmp_path, [account])
    port = free_port()
    path = write_config(
        tmp_path / "ddsync.toml",
        bootstrap=bootstrap,
        topics=[topic],
        dead_letter_topic=dead_letter_topic,
        group=f"health-{uuid.uuid4().hex[:8]}",
        connectors={"main": (USER, sandbox.discovery_url)},
        window_seconds=1.0,
        metrics_port=port,
        extra=extra,
    )
    env = {password_env("main"): PASSWORD, **FAST_STATISTICS}
    return DdsyncProcess(path, tmp_path / "ddsync.log", env), sandbox, port


def test_readiness_fails_once_the_circuit_breaker_opened(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    topic = kafka.create_topic(partitions=2)
    breaker = "[dead_letter]\nbreaker_window = 100\nbreaker_ratio = 0.9\nbreaker_min_records = 50\n"
    ddsync, sandbox, port = start_ddsync(
        tmp_path, kafka.bootstrap_servers, topic, kafka.create_topic(), extra=breaker
    )
    try:
        wait_for_report(port, "/ready", 200, 60, ddsync.process)
        produce(
            kafka.bootstrap_servers,
            topic,
            [DemoRecord(f"k{n}".encode(), b"not json", "not_json") for n in range(500)],
        )
        answer = wait_for_report(port, "/ready", 503, 60, ddsync.process)
        assert failing(answer) == {"circuit_breaker"}, answer
        assert "dead-letter breaker open" in answer["checks"]["circuit_breaker"]["detail"]
        assert report(port, "/healthz")[0] == 200, "an open breaker is no reason to restart"
        status, _, metrics = get(port, "/metrics")
        assert status == 200
        assert b"ddsync_dead_letter_circuit_open 1.0" in metrics
        assert ddsync.terminate() == 0
    finally:
        if ddsync.alive():
            ddsync.kill()
        sandbox.stop()


def test_readiness_fails_while_the_broker_is_unreachable(tmp_path: Path) -> None:
    state_dir = tmp_path / "kafka"
    broker = localkafka.start(state_dir)
    ddsync: DdsyncProcess | None = None
    sandbox: SandboxProcess | None = None
    try:
        cluster = KafkaCluster(broker.bootstrap_servers, "dedicated broker")
        topic = cluster.create_topic()
        ddsync, sandbox, port = start_ddsync(
            tmp_path, broker.bootstrap_servers, topic, cluster.create_topic()
        )
        answer = wait_for_report(port, "/ready", 200, 60, ddsync.process)
        assert answer["checks"]["broker"]["detail"].endswith("known brokers connected")
        localkafka.stop(state_dir)
        answer = wait_for_report(port, "/ready", 503, 30, ddsync.process)
        assert "broker" in failing(answer), answer
        assert answer["checks"]["broker"]["detail"].startswith("no broker connected"), answer
        status, _ = report(port, "/healthz")
        assert status == 200, "an unreachable broker is no reason to restart ddsync"
    finally:
        if ddsync is not None:
            ddsync.kill()
        if sandbox is not None:
            sandbox.stop()
        localkafka.stop(state_dir)
