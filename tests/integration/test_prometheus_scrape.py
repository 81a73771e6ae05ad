"""A real Prometheus scraping a running ddsync and evaluating ddsync's own alert rules.

ddsync (``ddsync run``) and the sandbox run as processes against the real broker; Prometheus
(Debian's ``prometheus``) scrapes ddsync's ``/metrics`` every second with
``deploy/prometheus/ddsync-rules.yml`` loaded. Everything is checked through Prometheus' HTTP
API: the target is up, ddsync's series arrive with their labels, a recording rule produces a
series and every rule evaluates without error. ``promtool check metrics`` accepts a raw scrape,
and ``/healthz`` and ``/ready`` answer 200 with JSON once ddsync holds partitions.
"""

from __future__ import annotations

import functools
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream import __version__
from stream.demo.generator import Target, generate
from tests.support.health import wait_for_report
from tests.support.kafka import KafkaCluster
from tests.support.processes import Account, free_port
from tests.support.prometheus import PrometheusProcess, require_binary
from tests.support.scenario import PARTITIONS, Scenario
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.sandbox, pytest.mark.process]

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "ddsync-rules.yml"
JOB = "ddsync"
# Prometheus' zero time: what lastEvaluation says of a rule not evaluated yet.
NEVER_EVALUATED = "0001-01-01T00:00:00Z"


@pytest.fixture
def cleanup() -> Iterator[ExitStack]:
    """Every process a test starts is registered here and stopped, last started first, also
    when the test fails."""
    with ExitStack() as stack:
        yield stack


def value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def labels(sample: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = sample["metric"]
    return found


def total(prometheus: PrometheusProcess, expr: str) -> float | None:
    """The value of a single-series ``expr`` (a ``sum(...)``), or None while it has no series."""
    result = prometheus.query(expr)
    return value(result[0]) if result else None


def test_a_real_prometheus_scrapes_ddsync_and_evaluates_its_rules(
    kafka: KafkaCluster, tmp_path: Path, cleanup: ExitStack
) -> None:
    prometheus_binary = require_binary("prometheus")
    promtool = require_binary("promtool")
    books = tuple(range(1, 6))
    metrics_port = free_port()
    instance = f"127.0.0.1:{metrics_port}"
    scenario = Scenario(
        kafka, tmp_path, {"main": Account("prometheus@apiconnector.com", "r1", books)},
        "--import-delay", "0.05", window_seconds=1.0, metrics_port=metrics_port,
    )  # fmt: skip
    cleanup.callback(scenario.close)
    ddsync = scenario.start_ddsync()
    prometheus = PrometheusProcess(
        prometheus_binary, tmp_path, port=free_port(), job=JOB, targets=[instance],
        rule_files=[RULES],
    )  # fmt: skip
    cleanup.callback(prometheus.stop)
    wait_until(lambda: prometheus.query(f'up{{job="{JOB}"}} == 1'), 60, "ddsync was never scraped")
    first_scrape = time.monotonic() - prometheus.started
    print(
        f"\nprometheus: ready {prometheus.ready_seconds:.2f} s after start, "
        f"first successful scrape of ddsync {first_scrape:.2f} s after start"
    )

    # Health once ddsync holds partitions (and a broker connection, for /ready).
    ready = wait_for_report(metrics_port, "/ready", 200, 60, ddsync.process)
    assert ready["checks"]["partitions"]["status"] == "ok", ready
    live = wait_for_report(metrics_port, "/healthz", 200, 10, ddsync.process)
    assert live["status"] == "ok", live

    # Two chunks, the second produced only once Prometheus has seen the first: the consumed
    # counter then has two different samples in the recording rule's range, so its rate is
    # above zero (a counter's first sample alone gives no rate).
    records = list(generate([Target("main", b) for b in books], 400, bad_share=0.05, seed=8))
    consumed = f'sum(ddsync_records_consumed_total{{job="{JOB}"}})'

    def seen(count: int) -> bool:
        return total(prometheus, consumed) == count

    for upto in (200, len(records)):
        scenario.produce(records[upto - 200 : upto])
        wait_until(
            functools.partial(seen, upto),
            120,
            f"Prometheus did not see {upto} records consumed",
        )
    scenario.wait_caught_up(timeout=120)

    # ddsync's series, with their labels, as Prometheus stored them.
    (series,) = prometheus.query(f'ddsync_records_consumed_total{{job="{JOB}"}}')
    assert labels(series) == {
        "__name__": "ddsync_records_consumed_total", "job": JOB, "instance": instance,
        "topic": scenario.topic,
    }  # fmt: skip
    (assigned,) = prometheus.query(f'ddsync_assigned_partitions{{job="{JOB}"}}')
    assert labels(assigned)["instance"] == instance
    assert value(assigned) == PARTITIONS
    # Lag is sampled every 5 s: wait for a sample taken after everything was read.
    lag = wait_until(
        lambda: [
            s
            for s in prometheus.query(f'ddsync_partition_read_lag_records{{job="{JOB}"}} == 0')
            if labels(s)["topic"] == scenario.topic
        ],
        60,
        "no read lag series at zero",
    )
    assert {labels(s)["partition"] for s in lag} == {str(p) for p in range(PARTITIONS)}, lag
    requests = prometheus.query(f'ddsync_dotdigital_requests_total{{job="{JOB}"}}')
    assert {labels(s)["connector"] for s in requests} == {"main"}, requests
    operations = {labels(s)["operation"] for s in requests if labels(s)["status_class"] == "2xx"}
    assert {"account_info", "import", "import_status"} <= operations, requests
    (build,) = prometheus.query(f'ddsync_build_info{{job="{JOB}"}}')
    assert labels(build)["version"] == __version__
    assert value(build) == 1
    (memory,) = prometheus.query(f'process_resident_memory_bytes{{job="{JOB}"}}')
    assert value(memory) > 0

    # A recording rule of ddsync-rules.yml produced a series from what ddsync exported.
    (rate,) = wait_until(
        lambda: prometheus.query(f'ddsync:records_consumed:rate5m{{job="{JOB}"}} > 0'),
        30,
        "the recording rule ddsync:records_consumed:rate5m gave no rate",
    )
    assert labels(rate) == {"__name__": "ddsync:records_consumed:rate5m", "job": JOB}

    # The target, as Prometheus reports it.
    (target,) = prometheus.api("targets", state="active")["activeTargets"]
    assert target["labels"] == {"job": JOB, "instance": instance}, target
    assert target["scrapeUrl"] == f"http://{instance}/metrics", target
    assert (target["health"], target["lastError"]) == ("up", ""), target

    # Every rule of the file loaded, in its groups, and evaluates without error.
    def rule_groups() -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = prometheus.api("rules")["groups"]
        evaluated = all(
            rule["lastEvaluation"] != NEVER_EVALUATED for g in groups for rule in g["rules"]
        )
        return groups if evaluated else []

    groups = wait_until(rule_groups, 30, "not every rule was evaluated")
    wanted = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    # The API lists groups by name, not in the file's order.
    assert sorted((g["name"], g["file"]) for g in groups) == sorted(
        (w["name"], str(RULES)) for w in wanted
    )
    rules_of = {w["name"]: [r.get("record") or r["alert"] for r in w["rules"]] for w in wanted}
    for group in groups:
        names = [rule["name"] for rule in group["rules"]]
        assert names == rules_of[group["name"]], group["name"]
        failed = [
            (rule["name"], rule["health"], rule.get("lastError", ""))
            for rule in group["rules"]
            if (rule["health"], rule.get("lastError", "")) != ("ok", "")
        ]
        assert failed == [], f"rules of {group['name']} did not evaluate cleanly: {failed}"

    # promtool's own check (format and lint) of a raw scrape of ddsync.
    with urllib.request.urlopen(f"http://{instance}/metrics", timeout=10) as response:
        raw = response.read()
    assert b"ddsync_dotdigital_requests_total{" in raw  # labelled series are in what is checked
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=raw, capture_output=True, timeout=60, check=False
    )
    report = (checked.stdout + checked.stderr).decode(errors="replace")
    print(f"promtool check metrics: exit {checked.returncode} {report.strip() or '(no findings)'}")
    assert checked.returncode == 0, report

    assert ddsync.terminate() == 0, ddsync.output()[-3000:]
