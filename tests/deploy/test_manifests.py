"""The deployment material under deploy/ checked against the code it deploys.

* Prometheus rules and their unit tests pass ``promtool`` (Debian package ``prometheus``); each
  alert's unit tests really pin it down (an always-firing or never-firing variant fails them).
* Every metric and label the rules and the Grafana dashboard name is one ddsync exports
  (``stream.observability.metrics.Metrics``), so a rename breaks
  this test, not a dashboard in production.
* The Kubernetes manifests agree with each other, with ``ddsync.toml`` as ``stream.config`` reads
  it, and with the container image.
* The Dockerfile's ENTRYPOINT and CMD parse as a real ``ddsync`` command line.
* The probes and the image's HEALTHCHECK ask paths ddsync's HTTP server answers, and fail when
  its health does (the server and the HEALTHCHECK's own command run for real).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from stream.cli import main as cli
from stream.cli import reconcile as reconcile_command
from stream.cli import run as run_command
from stream.clock import FakeClock
from stream.config import load_settings
from stream.core.breaker import DeadLetterBreaker
from stream.observability.health import Health, Vitals
from stream.observability.http_server import HttpServer
from stream.observability.metrics import Metrics, ReconcileMetrics
from stream.settings import MetricsSettings, Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "ddsync-rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "ddsync-rules.test.yml"
PROMETHEUS_EXAMPLE = DEPLOY / "prometheus" / "prometheus.example.yml"
DASHBOARD = DEPLOY / "grafana" / "ddsync-dashboard.json"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# Labels Prometheus attaches to every scraped series (plain scrape config and Prometheus
# Operator), and the histogram bucket label. Anything else must be a label ddsync exports.
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
)
# Series a rule may use that Prometheus itself produces.
PROMETHEUS_SERIES = frozenset({"up"})
OPERATIONS = REPO / "docs" / "operations.md"
# The label kube-prometheus-stack's rule and ServiceMonitor selectors match for a Helm release
# named `prometheus` (its default: `release: <release name>`).
OPERATOR_SELECTOR_LABELS = {"release": "prometheus"}


# -- what ddsync exports -----------------------------------------------------------------------


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name ddsync exports, with its label names, as prometheus_client renders it.

    Labelled metrics export nothing until a child exists, so one child of each is created; the
    names (``_total``, ``_bucket``/``_sum``/``_count``, ``_created``) then come from the client
    library itself rather than from a rule of thumb.
    """
    series: dict[str, set[str]] = {}
    # The service's, and those ``ddsync reconcile --metrics-file`` writes.
    for metrics in (Metrics(), ReconcileMetrics()):
        for wrapper in vars(metrics).values():
            if isinstance(wrapper, MetricWrapperBase) and wrapper._labelnames:
                wrapper.labels(*("x" for _ in wrapper._labelnames))
        for family in metrics.registry.collect():
            for sample in family.samples:
                series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in series.items()}


EXPORTED = exported_series()


def test_exported_series_are_derived_with_the_client_suffixes() -> None:
    # The derivation itself: counters get _total, histograms _bucket/_sum/_count with `le`.
    assert "ddsync_records_consumed_total" in EXPORTED
    assert "ddsync_records_consumed" not in EXPORTED
    assert EXPORTED["ddsync_flush_seconds_bucket"] == {"connector", "le"}
    assert {"ddsync_flush_seconds_sum", "ddsync_flush_seconds_count"} <= EXPORTED.keys()
    assert EXPORTED["ddsync_dead_letter_circuit_open"] == frozenset()
    assert EXPORTED["ddsync_dispatch_failures_total"] == {"connector", "operation", "reason"}


# -- PromQL references -------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"\b(ddsync_[a-zA-Z0-9_]*|up)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w:$.])[a-zA-Z_:][a-zA-Z0-9_:]*")


def promql_problems(expr: str, recorded: frozenset[str] = frozenset()) -> list[str]:
    """What in ``expr`` does not exist: metric names, matcher labels, grouping labels."""
    problems: list[str] = []
    used_labels: set[str] = set()
    for name, matchers in _SELECTOR.findall(expr):
        labels = set(_MATCHER_LABEL.findall(_STRING.sub('""', matchers)))
        allowed = EXPORTED.get(name, frozenset()) | TARGET_LABELS
        problems += [f"{name} has no label {label!r}" for label in sorted(labels - allowed)]
    bare = _STRING.sub('""', expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    metric_labels: set[str] = set()
    for token in _IDENTIFIER.findall(bare):
        if token.startswith("ddsync_"):
            if token not in EXPORTED:
                problems.append(f"{token} is not a series ddsync exports")
            else:
                metric_labels |= EXPORTED[token]
        elif token.startswith("ddsync:") and token not in recorded:
            problems.append(f"{token} is not a recording rule of {RULES.name}")
    for group in _GROUPING.findall(bare):
        used_labels.update(label.strip() for label in group.split(",") if label.strip())
    known = metric_labels | TARGET_LABELS
    problems += [f"grouping label {label!r} is on no series used" for label in used_labels - known]
    return problems


def test_promql_checker_flags_renamed_metrics_and_labels() -> None:
    good = 'sum by (connector) (rate(ddsync_records_synced_total{operation="add"}[5m]))'
    assert promql_problems(good) == []
    assert promql_problems("rate(ddsync_records_synced[5m])") == [
        "ddsync_records_synced is not a series ddsync exports"
    ]
    assert promql_problems('ddsync_records_synced_total{contact="a@b.c"}') == [
        "ddsync_records_synced_total has no label 'contact'"
    ]
    assert promql_problems("sum by (topic) (ddsync_buffered_records)") == [
        "grouping label 'topic' is on no series used"
    ]
    assert promql_problems("ddsync:nope:rate5m") == [
        "ddsync:nope:rate5m is not a recording rule of ddsync-rules.yml"
    ]


# -- Prometheus rules --------------------------------------------------------------------------


def load_rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return data


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in all_rules() if "alert" in rule]


def recorded_names() -> frozenset[str]:
    return frozenset(rule["record"] for rule in all_rules() if "record" in rule)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: it comes with Debian's `prometheus` package "
            "(apt-get install -y prometheus). The rule checks cannot run without it."
        )
    return path


def run_promtool(
    promtool: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"


def test_promtool_check_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES))
    assert_ok(result)
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_promtool_check_example_scrape_config(promtool: str) -> None:
    result = run_promtool(
        promtool, "check", "config", PROMETHEUS_EXAMPLE.name, cwd=PROMETHEUS_EXAMPLE.parent
    )
    assert_ok(result)
    config = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text(encoding="utf-8"))
    assert config["rule_files"] == [RULES.name]
    (job,) = config["scrape_configs"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == [f"127.0.0.1:{MetricsSettings.port}"]
    assert re.fullmatch(r".*ddsync.*", job["job_name"]), "DdsyncTargetDown matches on the job"


def test_every_alert_is_pinned_by_a_firing_and_a_silent_case() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [RULES.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a firing case"
    assert names - silent == set(), "alerts without a not-firing case"


@dataclass(frozen=True)
class Mutant:
    alert: str
    kind: str
    expr: str


def mutants() -> Iterator[Mutant]:
    for rule in alert_rules():
        yield Mutant(rule["alert"], "always fires", "vector(1)")
        yield Mutant(rule["alert"], "never fires", "vector(1) > 2")


def test_unit_tests_fail_when_an_alert_always_or_never_fires(promtool: str, tmp_path: Path) -> None:
    """The unit tests are not vacuous: each alert's cases catch a broken expression."""

    def survives(index: int, mutant: Mutant) -> bool:
        workdir = tmp_path / str(index)
        workdir.mkdir()
        rules = load_rules()
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == mutant.alert:
                    rule["expr"] = mutant.expr
                    rule.pop("for", None)
        (workdir / RULES.name).write_text(yaml.safe_dump(rules), encoding="utf-8")
        # Only this alert's cases: they alone must catch the mutant (and it keeps this fast).
        tests = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))
        cases = []
        for case in tests["tests"]:
            checks = [c for c in case.get("alert_rule_test", []) if c["alertname"] == mutant.alert]
            if checks:
                cases.append({**case, "alert_rule_test": checks, "promql_expr_test": []})
        tests["tests"] = cases
        (workdir / RULES_TEST.name).write_text(yaml.safe_dump(tests), encoding="utf-8")
        result = run_promtool(promtool, "test", "rules", RULES_TEST.name, cwd=workdir)
        if result.returncode == 0:
            return True
        # Failed because of this alert's cases, not because the mutant did not load.
        assert f"alertname: {mutant.alert}," in result.stderr + result.stdout, result.stderr
        return False

    cases = list(mutants())
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        survived = list(pool.map(survives, range(len(cases)), cases))
    assert [f"{m.alert} ({m.kind})" for m, s in zip(cases, survived, strict=True) if s] == []


def test_rules_reference_only_exported_metrics_and_labels() -> None:
    recorded = recorded_names()
    problems = {
        rule.get("alert") or rule["record"]: promql_problems(rule["expr"], recorded)
        for rule in all_rules()
    }
    assert {name: p for name, p in problems.items() if p} == {}
    # Names outside ddsync's own: only what Prometheus itself produces.
    for rule in all_rules():
        for name, _ in _SELECTOR.findall(rule["expr"]):
            assert name.startswith("ddsync_") or name in PROMETHEUS_SERIES


def test_rules_cover_the_operational_signals() -> None:
    exprs = " ".join(rule["expr"] for rule in alert_rules())
    for series in (
        "ddsync_partition_read_lag_records",
        "ddsync_oldest_open_record_age_seconds",
        "ddsync_window_seconds",
        "ddsync_partition_end_offset",
        "ddsync_records_consumed_total",
        "ddsync_assigned_partitions",
        "ddsync_partition_commit_lag_records",
        "ddsync:committed_offset:last_change_timestamp",
        "ddsync_dotdigital_throttled_total",
        "ddsync_dead_letter_errors_total",
        "absent(up{",
        "ddsync_dead_letter_circuit_open",
        "ddsync_records_dead_lettered_total",
        "ddsync_consumer_paused",
        "ddsync_offset_commits_total",
        "ddsync_buffered_records",
        "ddsync_dispatch_failures_total",
        "ddsync_flush_seconds_bucket",
    ):
        assert series in exprs
    assert 'reason="auth_failed"' in exprs
    assert 'result="error"' in exprs
    assert recorded_names(), "at least one recording rule"
    assert all(name.startswith("ddsync:") for name in recorded_names())


def markdown_anchors(text: str) -> frozenset[str]:
    """The anchors GitHub gives a Markdown page's headings (lower case, punctuation dropped)."""
    anchors: set[str] = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and not in_code:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return frozenset(anchors)


def test_markdown_anchors_are_headings_only() -> None:
    text = "# Top\n## Rate limits\nDdsyncX in text\n```\n# not a heading\n```\n### DdsyncX\n"
    assert markdown_anchors(text) == {"top", "rate-limits", "ddsyncx"}


def test_alerts_carry_severity_summary_description_and_runbook() -> None:
    anchors = markdown_anchors(OPERATIONS.read_text(encoding="utf-8"))
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), rule["alert"]
        assert len(annotations["description"]) > len(annotations["summary"]), rule["alert"]
        assert "runbook" not in annotations, f"{rule['alert']}: runbook_url, not runbook"
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md", rule["alert"]
        # One section per alert, named after it.
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no heading #{anchor} in docs/operations.md"


def test_prometheus_rule_resource_matches_the_rule_file() -> None:
    (resource,) = load_yaml_documents(K8S / "prometheusrule.yaml")
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == load_rules()["groups"], (
        "prometheusrule.yaml is stale: regenerate it from deploy/prometheus/ddsync-rules.yml"
    )
    check = subprocess.run(
        [sys.executable, str(DEPLOY / "prometheus" / "render_prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr


# -- Grafana dashboard -------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def as_plain_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Prometheus would receive it."""
    for variable in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(variable, "5m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def test_dashboard_has_a_datasource_variable_used_by_every_panel() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_dashboard_shows_the_operational_signals() -> None:
    exprs = " ".join(dashboard_exprs())
    for series in (
        "ddsync_records_consumed_total",
        "ddsync_records_synced_total",
        "ddsync_records_dead_lettered_total",
        "ddsync_buffered_records",
        "ddsync_consumer_paused",
        "ddsync_dead_letter_circuit_open",
        "ddsync_offset_commits_total",
        "ddsync_committed_offset",
        "ddsync_flush_seconds_bucket",
        "ddsync_batch_contacts_bucket",
        "ddsync_rebalances_total",
        "ddsync_partition_read_lag_records",
        "ddsync_partition_commit_lag_records",
        "ddsync_oldest_open_record_age_seconds",
        "ddsync_window_seconds",
        "ddsync_assigned_partitions",
        "ddsync_dotdigital_requests_total",
        "ddsync_dotdigital_throttled_total",
        "ddsync_dotdigital_retries_total",
        "ddsync_rate_limiter_wait_seconds_total",
        "ddsync_rate_limit_budget_per_minute",
        "ddsync_dotdigital_active_imports",
        "ddsync_import_contacts_total",
    ):
        assert series in exprs
    assert "histogram_quantile(0.95" in exprs


def test_dashboard_references_only_exported_metrics_and_labels() -> None:
    problems = {e: promql_problems(as_plain_promql(e)) for e in dashboard_exprs()}
    assert {e: p for e, p in problems.items() if p} == {}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            assert promql_problems(as_plain_promql(variable["definition"])) == []


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": as_plain_promql(expr)}
                    for i, expr in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    assert_ok(run_promtool(promtool, "check", "rules", str(path)))


# -- Kubernetes --------------------------------------------------------------------------------


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def kustomization() -> dict[str, Any]:
    (data,) = load_yaml_documents(K8S / "kustomization.yaml")
    return data


def resources() -> dict[str, dict[str, Any]]:
    """The resources kustomization.yaml lists, by kind."""
    by_kind: dict[str, dict[str, Any]] = {}
    for name in kustomization()["resources"]:
        for document in load_yaml_documents(K8S / name):
            assert document["kind"] not in by_kind, f"one {document['kind']} expected"
            by_kind[document["kind"]] = document
    return by_kind


def secret_example() -> dict[str, Any]:
    (secret,) = load_yaml_documents(K8S / "secret.example.yaml")
    return secret


def container() -> dict[str, Any]:
    only: dict[str, Any]
    (only,) = resources()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def volume_mounts() -> dict[str, dict[str, Any]]:
    """Mounts of the ddsync container, by volume, joined with the volume's source."""
    pod = resources()["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["name"]: {**volumes[m["name"]], "mount": m} for m in container()["volumeMounts"]}


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_manifest_parses_and_is_namespace_agnostic() -> None:
    files = sorted(K8S.glob("*.yaml"))
    assert files
    listed = set(kustomization()["resources"])
    for path in files:
        for document in load_yaml_documents(path):
            if path.name == "kustomization.yaml":
                assert "namespace" not in document
                continue
            assert {"apiVersion", "kind", "metadata"} <= document.keys(), path.name
            assert document["metadata"]["name"], path.name
            assert "namespace" not in document["metadata"], path.name
        if path.name not in {"kustomization.yaml", "secret.example.yaml"}:
            assert path.name in listed, f"{path.name} is not in kustomization.yaml"
    assert "secret.example.yaml" not in listed, "the example Secret must not be applied"
    assert set(resources()) == {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "PodDisruptionBudget",
    }


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """ddsync.toml of the ConfigMap as ddsync reads it, the Secret's files in a temp dir."""
    toml_text = resources()["ConfigMap"]["data"]["ddsync.toml"]
    raw = tomllib.loads(toml_text)
    password_files = {c["password_file"] for c in raw["connectors"].values()}
    (secret_dir,) = {str(PurePosixPath(f).parent) for f in password_files}
    for name in secret_example()["stringData"]:
        (tmp_path / name).write_text("placeholder\n", encoding="utf-8")
    config = tmp_path / "ddsync.toml"
    config.write_text(toml_text.replace(secret_dir + "/", f"{tmp_path}/"), encoding="utf-8")
    return load_settings(config, environ={})


def test_configmap_is_a_valid_ddsync_configuration(settings: Settings) -> None:
    assert settings.kafka.topics
    assert settings.kafka.dead_letter_topic not in settings.kafka.topics
    assert len(settings.connectors) >= 1
    for connector in settings.connectors.values():
        assert connector.password.reveal() == "placeholder", connector.name
    assert settings.metrics.enabled
    assert settings.metrics.host == "0.0.0.0"  # scraped from outside the pod


def test_container_exposes_the_configured_metrics_port(settings: Settings) -> None:
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"metrics": settings.metrics.port}
    service = resources()["Service"]
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in (ports["metrics"], "metrics")
    assert service_port["port"] == settings.metrics.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container()[probe]
        action = spec.get("httpGet") or spec.get("tcpSocket")
        assert action["port"] in ("metrics", settings.metrics.port), probe
    expose = dockerfile_instructions()["EXPOSE"]
    assert [str(settings.metrics.port)] == [p.split("/")[0] for e in expose for p in e.split()]


@pytest.fixture
def health_server() -> Iterator[tuple[HttpServer, FakeClock]]:
    """ddsync's HTTP server on a free port, its health on a fake clock, everything else ok."""
    clock = FakeClock()
    vitals = Vitals.on(clock)
    vitals.brokers.instrument({"statistics.interval.ms": 0})
    health = Health(
        vitals,
        liveness_timeout=MetricsSettings.liveness_timeout_seconds,
        assigned=lambda: 1,
        breaker=DeadLetterBreaker(window=10, ratio=0.5, min_records=4),
    )
    server = HttpServer(Metrics().registry, health)
    server.start("127.0.0.1", 0)
    try:
        yield server, clock
    finally:
        server.stop()


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_probes_ask_the_health_endpoints_the_server_answers(
    health_server: tuple[HttpServer, FakeClock],
) -> None:
    server, clock = health_server
    probes = ("startupProbe", "livenessProbe", "readinessProbe")
    paths = {probe: container()[probe]["httpGet"]["path"] for probe in probes}
    assert paths == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/ready",
    }
    for probe, path in paths.items():
        assert http_status(server.port, path) == 200, probe
    clock.advance(MetricsSettings.liveness_timeout_seconds + 1)
    for probe, path in paths.items():
        assert http_status(server.port, path) == 503, f"{probe} cannot fail"
    (endpoint,) = resources()["ServiceMonitor"]["spec"]["endpoints"]
    assert http_status(server.port, endpoint["path"]) == 200
    assert http_status(server.port, "/no-such-path") == 404


def test_the_image_healthcheck_asks_healthz_and_fails_with_it(
    health_server: tuple[HttpServer, FakeClock], settings: Settings
) -> None:
    (healthcheck,) = dockerfile_instructions()["HEALTHCHECK"]
    options, _, command = healthcheck.partition("CMD ")
    assert "--timeout=5s" in options.split()
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"], "the slim image has python, not curl"
    url = f"http://127.0.0.1:{settings.metrics.port}/healthz"
    assert url in argv[2]
    server, clock = health_server
    # The image's very command, against the server on its test port.
    code = [sys.executable, "-c", argv[2].replace(url, f"http://127.0.0.1:{server.port}/healthz")]
    assert subprocess.run(code, capture_output=True, timeout=30, check=False).returncode == 0
    clock.advance(MetricsSettings.liveness_timeout_seconds + 1)
    assert subprocess.run(code, capture_output=True, timeout=30, check=False).returncode == 1


def test_grace_period_outlasts_the_shutdown_bound(settings: Settings) -> None:
    """ddsync ends within batching.shutdown_timeout_seconds of SIGTERM; Kubernetes must not
    SIGKILL it before, mid-commit."""
    pod = resources()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    overrides = [e["name"] for e in container.get("env", []) if e["name"].startswith("DDSYNC__")]
    assert not [name for name in overrides if name.startswith("DDSYNC__BATCHING__SHUTDOWN")]
    assert pod["terminationGracePeriodSeconds"] > settings.batching.shutdown_timeout_seconds
    assert settings.batching.shutdown_timeout_seconds == 50


def test_secret_is_mounted_where_password_files_point(settings: Settings) -> None:
    raw = tomllib.loads(resources()["ConfigMap"]["data"]["ddsync.toml"])
    password_files = [PurePosixPath(c["password_file"]) for c in raw["connectors"].values()]
    secret = secret_example()
    (mounted,) = [v for v in volume_mounts().values() if "secret" in v]
    assert mounted["secret"]["secretName"] == secret["metadata"]["name"]
    assert mounted["mount"]["readOnly"] is True
    for path in password_files:
        assert str(path.parent) == mounted["mount"]["mountPath"]
        assert path.name in secret["stringData"], f"the Secret has no key {path.name}"
    assert set(secret["stringData"]) == {p.name for p in password_files}


def test_example_secret_holds_only_marked_placeholders() -> None:
    secret = secret_example()
    assert "data" not in secret, "no base64 values: placeholders in stringData only"
    for key, value in secret["stringData"].items():
        assert value.startswith("REPLACE-ME"), key
    assert "EXAMPLE ONLY" in (K8S / "secret.example.yaml").read_text(encoding="utf-8")


def test_config_is_mounted_where_the_image_looks_for_it() -> None:
    argv = image_command()
    config_path = PurePosixPath(argv[argv.index("--config") + 1])
    (mounted,) = [v for v in volume_mounts().values() if "configMap" in v]
    assert mounted["configMap"]["name"] == resources()["ConfigMap"]["metadata"]["name"]
    assert mounted["mount"]["mountPath"] == str(config_path.parent)
    assert {"key": "ddsync.toml", "path": config_path.name} in mounted["configMap"]["items"]
    # The Deployment's args, when set, are a valid command too and use the same file.
    args = cli.build_parser().parse_args(container()["args"])
    assert args.handler is run_command.handle
    assert PurePosixPath(args.config) == config_path


def test_the_reconcile_cronjob_runs_reconcile_with_the_deployment_s_config_and_secrets() -> None:
    (cronjob,) = load_yaml_documents(RECONCILE / "cronjob.yaml")
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0, "exit 1 is a finding (drift), not a failure to retry"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["template"]["spec"]
    (reconcile,) = pod["containers"]
    args = cli.build_parser().parse_args(reconcile["args"])
    assert args.handler is reconcile_command.handle
    assert PurePosixPath(args.config) == PurePosixPath(container()["args"][-1])
    deployment_pod = resources()["Deployment"]["spec"]["template"]["spec"]
    assert pod["volumes"] == deployment_pod["volumes"]
    assert reconcile["volumeMounts"] == container()["volumeMounts"]
    assert reconcile["securityContext"] == container()["securityContext"]


def test_deployment_runs_two_hardened_replicas() -> None:
    deployment = resources()["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert matches(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(dockerfile_user().split(":")[0])
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources_ = container()["resources"]
    assert {"cpu", "memory"} <= resources_["requests"].keys()
    assert "memory" in resources_["limits"]
    # A read-only root file system still needs a writable /tmp.
    assert any(
        v["mount"]["mountPath"] == "/tmp" and "emptyDir" in v for v in volume_mounts().values()
    )
    assert container()["image"] in {i["name"] for i in kustomization()["images"]}


def test_service_monitor_and_disruption_budget_select_the_pods() -> None:
    r = resources()
    pod_labels = r["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = r["Service"]
    assert matches(service["spec"]["selector"], pod_labels)
    monitor = r["ServiceMonitor"]
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in port_names
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    # The job label is the Service name; DdsyncTargetDown matches job=~".*ddsync.*".
    assert "ddsync" in service["metadata"]["name"]
    pdb = r["PodDisruptionBudget"]
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"].get("maxUnavailable", 0) == 1 or pdb["spec"].get("minAvailable") == 1


def test_operator_resources_carry_the_labels_kube_prometheus_stack_selects() -> None:
    r = resources()
    for kind in ("PrometheusRule", "ServiceMonitor"):
        labels = r[kind]["metadata"]["labels"]
        assert matches(OPERATOR_SELECTOR_LABELS, labels), f"{kind} lacks {OPERATOR_SELECTOR_LABELS}"


# -- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions() -> dict[str, list[str]]:
    """Instruction -> its arguments, in order; continuation lines joined, comments dropped."""
    instructions: dict[str, list[str]] = {}
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, rest = whole.partition(" ")
        instructions.setdefault(keyword.upper(), []).append(rest.strip())
    assert not pending, "a continuation line runs off the end of the Dockerfile"
    return instructions


def exec_form(instruction: str) -> list[str]:
    (value,) = dockerfile_instructions()[instruction]
    argv = json.loads(value)
    assert isinstance(argv, list), f"{instruction} must use the exec (JSON) form"
    assert all(isinstance(a, str) for a in argv)
    return argv


def dockerfile_user() -> str:
    return dockerfile_instructions()["USER"][-1]


def image_command() -> list[str]:
    """The container's default argv after the `ddsync` entry point."""
    entrypoint = exec_form("ENTRYPOINT")
    assert entrypoint[0] == "ddsync"
    return entrypoint[1:] + exec_form("CMD")


def test_dockerfile_entrypoint_and_cmd_are_a_real_ddsync_command() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert exec_form("ENTRYPOINT") == ["ddsync"]
    assert pyproject["project"]["scripts"]["ddsync"] == "stream.cli.main:main"
    try:
        args = cli.build_parser().parse_args(image_command())
    except SystemExit:
        pytest.fail(f"`ddsync {shlex.join(image_command())}` does not parse")
    assert args.command == "run"
    assert args.handler is run_command.handle
    assert args.config == Path("/etc/ddsync/ddsync.toml")


def test_dockerfile_builds_a_non_root_python_311_image_of_the_repo() -> None:
    instructions = dockerfile_instructions()
    assert instructions["FROM"] == ["python:3.11-slim"]
    user = dockerfile_user()
    assert user.split(":")[0] not in {"root", "0"}
    assert int(user.split(":")[0]) > 0, "a numeric uid lets Kubernetes verify runAsNonRoot"
    assert any(re.search(r"\bpip install \.(\s|$)", run) for run in instructions["RUN"])
    assert instructions["STOPSIGNAL"] == ["SIGTERM"]
    # What COPY takes from the build context exists and passes .dockerignore's allow-list.
    allowed = {
        line[1:].strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    for copy in instructions["COPY"]:
        *sources, _destination = copy.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
    assert {"pyproject.toml", "README.md", "stream"} <= allowed


# -- KEDA --------------------------------------------------------------------------------------

KEDA = K8S / "keda"
RECONCILE = K8S / "reconcile"


def scaled_object() -> dict[str, Any]:
    (component,) = load_yaml_documents(KEDA / "kustomization.yaml")
    assert component["kind"] == "Component", "optional: a kustomize component, not a base"
    (name,) = component["resources"]
    (resource,) = load_yaml_documents(KEDA / name)
    return resource


def test_scaled_object_scales_the_deployment_on_the_groups_lag(settings: Settings) -> None:
    resource = scaled_object()
    assert resource["apiVersion"] == "keda.sh/v1alpha1"
    assert resource["kind"] == "ScaledObject"
    spec = resource["spec"]
    deployment = resources()["Deployment"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    # The PodDisruptionBudget lets one pod go: with fewer than two, a drain stops consuming.
    assert 2 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    triggers = spec["triggers"]
    assert {t["type"] for t in triggers} == {"kafka"}
    assert sorted(t["metadata"]["topic"] for t in triggers) == sorted(settings.kafka.topics)
    for trigger in triggers:
        metadata = trigger["metadata"]
        # KEDA reads trigger metadata as strings only.
        assert all(isinstance(v, str) for v in metadata.values()), metadata
        assert metadata["consumerGroup"] == settings.kafka.group_id
        assert metadata["bootstrapServers"] == settings.kafka.bootstrap_servers
        # Idle consumers beyond the partitions would only add rebalances.
        assert metadata["allowIdleConsumers"] == "false"
        # Committed lag holds about a window of input in normal operation (docs/scaling.md).
        assert int(metadata["lagThreshold"]) >= 10_000


# -- schema validation -------------------------------------------------------------------------

# kubernetes-validate (PyPI) ships the Kubernetes API's JSON schemas; kubeconform validates
# manifests against them. Versions pinned in the Makefile's install target.
KUBERNETES_VERSIONS = ("v1.30.0", "v1.37.0")
# Custom resources: no registry package reachable here ships their CRDs' schemas in a form
# kubeconform reads, so they get the structural checks below instead.
CUSTOM_KINDS = frozenset({"PrometheusRule", "ServiceMonitor", "ScaledObject"})


@pytest.fixture(scope="module")
def kubeconform() -> str:
    beside_python = Path(sys.executable).parent / "kubeconform"
    path = str(beside_python) if beside_python.exists() else shutil.which("kubeconform")
    if path is None:
        pytest.fail(
            "kubeconform is not installed: `make install` puts it into .venv/bin with "
            "`go install github.com/yannh/kubeconform/cmd/kubeconform@v0.7.0`. "
            "The manifests cannot be validated without it."
        )
    return path


@pytest.fixture(scope="module")
def kubernetes_schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Standalone copies of kubernetes-validate's strict schemas, in kubeconform's layout.

    kubernetes-validate's schemas refer to one shared ``/api/_definitions.json`` that only its
    own resolver finds; each copy here embeds those definitions so kubeconform can read it.
    """
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is not installed: `make install` installs "
            "kubernetes-validate==1.37.0, which ships the Kubernetes JSON schemas."
        )
    shipped = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    out = tmp_path_factory.mktemp("schemas")
    kinds = {
        (d["apiVersion"], d["kind"])
        for d in manifests_to_validate()
        if d["kind"] not in CUSTOM_KINDS
    }
    for version in KUBERNETES_VERSIONS:
        source = shipped / f"{version}-local-strict"
        assert source.is_dir(), f"kubernetes-validate ships no schemas for {version}"
        shared = json.loads((source / "_definitions.json").read_text(encoding="utf-8"))["$defs"]
        target = out / f"{version}-standalone-strict"
        target.mkdir()
        for api_version, kind in kinds:
            group, _, ver = api_version.rpartition("/")
            suffix = f"-{group.split('.')[0]}-{ver}" if group else f"-{ver}"
            name = f"{kind.lower()}{suffix}.json"
            schema = json.loads(_local_refs((source / name).read_text(encoding="utf-8")))
            schema["$defs"] = json.loads(_local_refs(json.dumps(shared)))
            (target / name).write_text(json.dumps(schema), encoding="utf-8")
    return out


def _local_refs(text: str) -> str:
    return text.replace('"/api/_definitions.json#/$defs/', '"#/$defs/')


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    kustomize = shutil.which("kustomize")
    if kustomize:
        argv = [kustomize, "build", str(directory)]
    elif kubectl:
        argv = [kubectl, "kustomize", str(directory)]
    else:
        pytest.fail("neither kustomize nor kubectl is installed: the kustomization cannot build")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def with_keda(tmp_path: Path) -> Path:
    """An overlay of the base with the optional components (KEDA, the reconcile CronJob), as a
    user enables them."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    # kustomize takes only relative paths to bases and components.
    base = os.path.relpath(K8S, overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [base], "components": [f"{base}/keda", f"{base}/reconcile"]}),
        encoding="utf-8",
    )
    return overlay


def manifests_to_validate() -> list[dict[str, Any]]:
    files = [
        *sorted(K8S.glob("*.yaml")),
        *sorted(KEDA.glob("*.yaml")),
        *sorted(RECONCILE.glob("*.yaml")),
    ]
    return [
        d
        for path in files
        for d in load_yaml_documents(path)
        if d["kind"] not in {"Kustomization", "Component"}
    ]


def run_kubeconform(
    kubeconform: str, schemas: Path, version: str, documents: list[dict[str, Any]], tmp: Path
) -> subprocess.CompletedProcess[str]:
    path = tmp / f"manifests-{version}.yaml"
    path.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    location = (
        f"{schemas}/{version}-standalone-strict/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json"
    )
    return subprocess.run(
        [
            kubeconform,
            "-strict",
            "-summary",
            "-schema-location",
            location,
            "-skip",
            ",".join(sorted(CUSTOM_KINDS)),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_manifests_validate_against_the_kubernetes_schemas(
    kubeconform: str, kubernetes_schemas: Path, tmp_path: Path
) -> None:
    files = manifests_to_validate()
    built = kustomize_build(with_keda(tmp_path))
    assert {d["kind"] for d in built} == {d["kind"] for d in files} - {"Secret"}
    for version in KUBERNETES_VERSIONS:
        for name, documents in (("files", files), ("kustomize output", built)):
            result = run_kubeconform(kubeconform, kubernetes_schemas, version, documents, tmp_path)
            assert result.returncode == 0, f"{name} on {version}:\n{result.stdout}{result.stderr}"
            core = sum(d["kind"] not in CUSTOM_KINDS for d in documents)
            assert f"Valid: {core}, Invalid: 0, Errors: 0" in result.stdout, result.stdout


def test_schema_validation_rejects_a_broken_manifest(
    kubeconform: str, kubernetes_schemas: Path, tmp_path: Path
) -> None:
    """The validation can fail: a misspelt field and a wrong type are reported."""
    deployment = resources()["Deployment"]
    misspelt = json.loads(json.dumps(deployment))
    misspelt["spec"]["replica"] = misspelt["spec"].pop("replicas")
    mistyped = json.loads(json.dumps(deployment))
    mistyped["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "sixty"
    for broken in (misspelt, mistyped):
        result = run_kubeconform(
            kubeconform, kubernetes_schemas, KUBERNETES_VERSIONS[-1], [broken], tmp_path
        )
        assert result.returncode != 0, result.stdout
        assert "Invalid: 1" in result.stdout, result.stdout


def custom_resource_problems(document: Mapping[str, Any]) -> list[str]:
    """Structural checks of the custom resources, standing in for their CRDs' schemas."""
    kind = document["kind"]
    spec = document.get("spec", {})
    problems: list[str] = []
    expected_api = {
        "PrometheusRule": "monitoring.coreos.com/v1",
        "ServiceMonitor": "monitoring.coreos.com/v1",
        "ScaledObject": "keda.sh/v1alpha1",
    }[kind]
    if document["apiVersion"] != expected_api:
        problems.append(f"{kind}: apiVersion {document['apiVersion']} is not {expected_api}")
    if set(document) - {"apiVersion", "kind", "metadata", "spec"}:
        problems.append(f"{kind}: unknown top-level fields")
    if kind == "PrometheusRule":
        for group in spec.get("groups", []):
            if set(group) - {"name", "interval", "limit", "rules"} or "name" not in group:
                problems.append(f"PrometheusRule group {group.get('name')}: bad fields")
            for rule in group.get("rules", []):
                allowed = {"alert", "record", "expr", "for", "keep_firing_for", "labels"}
                allowed |= {"annotations"}
                if set(rule) - allowed or ("alert" in rule) == ("record" in rule):
                    problems.append(f"PrometheusRule rule {rule}: bad fields")
                if not isinstance(rule.get("expr"), str):
                    problems.append(f"PrometheusRule rule {rule}: expr is not a string")
    elif kind == "ServiceMonitor":
        if not isinstance(spec.get("selector", {}).get("matchLabels"), dict):
            problems.append("ServiceMonitor: no selector.matchLabels")
        for endpoint in spec.get("endpoints", []):
            if set(endpoint) - {"port", "path", "interval", "scrapeTimeout", "scheme"}:
                problems.append(f"ServiceMonitor endpoint {endpoint}: unknown fields")
    elif kind == "ScaledObject":
        allowed = {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval"}
        allowed |= {"cooldownPeriod", "advanced", "triggers", "fallback", "idleReplicaCount"}
        if set(spec) - allowed:
            problems.append(f"ScaledObject: unknown spec fields {sorted(set(spec) - allowed)}")
        for field in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
            if field in spec and not isinstance(spec[field], int):
                problems.append(f"ScaledObject: {field} is not an integer")
        for trigger in spec.get("triggers", []):
            if set(trigger) - {"type", "name", "metadata", "authenticationRef", "metricType"}:
                problems.append(f"ScaledObject trigger {trigger.get('type')}: unknown fields")
            if not all(isinstance(v, str) for v in trigger.get("metadata", {}).values()):
                problems.append("ScaledObject trigger metadata values must be strings")
    return problems


def test_custom_resources_are_structurally_valid(tmp_path: Path) -> None:
    documents = [d for d in kustomize_build(with_keda(tmp_path)) if d["kind"] in CUSTOM_KINDS]
    assert {d["kind"] for d in documents} == CUSTOM_KINDS
    assert [p for d in documents for p in custom_resource_problems(d)] == []
    # The checks can fail.
    broken = json.loads(json.dumps(scaled_object()))
    broken["spec"]["maxReplicas"] = broken["spec"].pop("maxReplicaCount")
    broken["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 50000
    assert len(custom_resource_problems(broken)) == 2
