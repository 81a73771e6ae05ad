"""What every benchmark shares: the run context, processes, metrics, figures.

Benchmarks measure; they do not pass or fail. Each returns :class:`Figure` values with their
target and a validity flag (a figure whose result was not checked correct is invalid), plus the
raw samples needed to recompute them.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from prometheus_client.parser import text_string_to_metric_families

from stream.demo.generator import DemoRecord, Target, transition
from tests.support.processes import (
    Account,
    DdsyncProcess,
    SandboxProcess,
    password_env,
    write_config,
)

HARNESS_ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ``X-RateLimit-Scope`` of each sandbox tier, so that limiter labels named after scopes (rather
# than tiers) map to the sandbox's budgets. Kept here, not imported, so that the harness does
# not depend on a sandbox module a colleague may rename.
SCOPE_TIERS = {
    "mediumCallRate": "add",
    "lowCallRate": "remove",
    "highCallRate": "other",
}
TIERS = ("add", "remove", "other")


def tier_of_label(label: str) -> str | None:
    """The sandbox budget a ddsync limiter label stands for, if it can tell."""
    if label in TIERS:
        return label
    return SCOPE_TIERS.get(label)


# -- figures ---------------------------------------------------------------------------------


@dataclass
class Figure:
    """One reported number. ``goal``: ``"max"`` when the target is an upper bound (value <=
    target is met), ``"min"`` when it is a lower bound; ``None`` for figures without one."""

    key: str
    label: str
    value: float | None
    unit: str
    target: float | None = None
    goal: Literal["min", "max"] | None = None
    valid: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.target is None or self.target == 0:
            return None
        return self.value / self.target

    @property
    def met(self) -> bool | None:
        if self.value is None or self.target is None or self.goal is None:
            return None
        return self.value <= self.target if self.goal == "max" else self.value >= self.target

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "goal": self.goal,
            "ratio": self.ratio,
            "met": self.met,
            "valid": self.valid,
            "note": self.note,
        }


@dataclass
class Result:
    """What one run of one benchmark produced."""

    figures: list[Figure] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def problem(self, text: str) -> None:
        log(f"  problem: {text}")
        self.problems.append(text)


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- the run context -------------------------------------------------------------------------


@dataclass
class Context:
    """What a benchmark needs to run: the broker, where to put files, whose ddsync to run."""

    bootstrap: str
    workdir: Path
    ddsync_src: Path
    options: Mapping[str, Any]
    # Shared between repeats (e.g. B2's topic, produced once).
    cache: dict[str, Any] = field(default_factory=dict)

    def option(self, name: str) -> Any:
        return self.options[name]

    def subdir(self, name: str) -> Path:
        path = self.workdir / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    def ddsync_env(self) -> dict[str, str]:
        """The ddsync process's PYTHONPATH: the measured source first."""
        rest = os.environ.get("PYTHONPATH", "")
        return {"PYTHONPATH": os.pathsep.join(p for p in (str(self.ddsync_src), rest) if p)}

    def start_ddsync(
        self, config: Path, log_path: Path, connector: str, account: Account
    ) -> Ddsync:
        env = {**self.ddsync_env(), password_env(connector): account.password}
        return Ddsync(config, log_path, env, cwd=self.ddsync_src)


class Ddsync(DdsyncProcess):
    """ddsync as a process, started in ``cwd`` (``python -m`` puts the working directory first
    on ``sys.path``: it must be the measured source tree, not the harness's)."""

    def __init__(self, config: Path, log: Path, env: Mapping[str, str], cwd: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stream", "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=cwd,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then SIGKILL past ``timeout``; the exit code, or None when killed."""
        if not self.alive():
            return self.process.returncode
        try:
            return self.terminate(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


def module_origin(src: Path, env: Mapping[str, str]) -> str:
    """Where a process started like ddsync imports ``stream`` from (to prove --ddsync-src)."""
    out = subprocess.run(
        [sys.executable, "-c", "import stream; print(stream.__file__)"],
        env={**os.environ, **env},
        cwd=src,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def git_describe(path: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(path), *args], capture_output=True, text=True, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {
        "path": str(path),
        "commit": commit or None,
        "subject": git("log", "-1", "--format=%s") or None,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None,
    }


# -- processes -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (its threads included), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # After the command: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_total_kib"] = int(line.split()[1])
                break
    except OSError:
        pass
    return info


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- ddsync's metrics ------------------------------------------------------------------------


Samples = list[tuple[str, dict[str, str], float]]


def scrape(port: int, timeout: float = 5) -> Samples:
    """Every sample of ddsync's ``/metrics``; empty when it does not answer (yet)."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read().decode()
        connection.close()
    except OSError:
        return []
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(body)
        for s in family.samples
    ]


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for sample, sample_labels, value in samples
        if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for sample, labels, value in samples:
        if sample == name and label in labels:
            out[labels[label]] = out.get(labels[label], 0.0) + value
    return out


def http_status(port: int, path: str) -> int | None:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", path)
        status = connection.getresponse().status
        connection.close()
        return status
    except OSError:
        return None


def wait_ready(ddsync: Ddsync, port: int, timeout: float = 90) -> None:
    """Until ddsync's ``/ready`` answers 200 (its partitions are assigned)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ddsync.alive():
            raise RuntimeError(f"ddsync exited: {ddsync.output()[-2000:]}")
        if http_status(port, "/ready") == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"ddsync not ready within {timeout} s: {ddsync.output()[-2000:]}")


# -- the sandbox -----------------------------------------------------------------------------


class StatsPoller:
    """``GET /_sandbox/stats`` over one kept-alive connection (cheap enough to poll tightly)."""

    def __init__(self, sandbox: SandboxProcess) -> None:
        host_port = sandbox.discovery_url.split("//", 1)[1]
        host, port = host_port.rsplit(":", 1)
        self._host, self._port = host, int(port)
        self._connection: http.client.HTTPConnection | None = None

    def get(self) -> dict[str, Any]:
        for attempt in range(2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=10)
            try:
                self._connection.request("GET", "/_sandbox/stats")
                answer: dict[str, Any] = orjson.loads(self._connection.getresponse().read())
                return answer
            except (OSError, http.client.HTTPException):
                self._connection.close()
                self._connection = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def tier_counts(stats: Mapping[str, Any], section: str, username: str) -> dict[str, int]:
    counts: Mapping[str, int] = stats.get(section, {}).get(username, {})
    return {tier: int(counts.get(tier, 0)) for tier in TIERS}


def sandbox_account(username: str, books: Iterable[int], **extra: Any) -> Account:
    return Account(username, "r1", tuple(books), extra=extra)


# -- Kafka -----------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


def create_topic(bootstrap: str, partitions: int, prefix: str) -> str:
    name = unique(prefix)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(60)
    return name


class OffsetWatcher:
    """Committed and end offsets of one group and topic, with one kept consumer (no group
    membership: it only reads offsets)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]

    def read(self) -> tuple[list[int], list[int]]:
        committed = [tp.offset for tp in self._consumer.committed(self._tps, timeout=30)]
        ends = [self._consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in self._tps]
        return committed, ends

    def caught_up(self) -> bool:
        committed, ends = self.read()
        return committed == ends

    def close(self) -> None:
        self._consumer.close()


def add_record(book: int, email: str, action: str = "add", connector: str = "main") -> DemoRecord:
    """One plain transition (no bad records, no duplicates) for ``email`` in ``book``."""
    profile = email.split("@", 1)[0]
    value = transition(
        event_id=f"{action}-{book}-{profile}-{uuid.uuid4().hex[:6]}",
        profile_id=profile,
        email=email,
        target=Target(connector, book),
        action=action,
        occurred_at=_NOW,
    )
    return DemoRecord(profile.encode(), orjson.dumps(value))


def ddsync_config(
    ctx: Context,
    work: Path,
    *,
    topic: str,
    account: Account,
    sandbox: SandboxProcess,
    metrics_port: int,
    window_seconds: float,
    requests_per_minute: int | None = None,
    max_buffered_records: int = 50_000,
    group: str | None = None,
) -> tuple[Path, str]:
    """A ddsync configuration for one connector ``main``; returns it and its group id."""
    group = group or unique("group")
    path = write_config(
        work / f"ddsync-{uuid.uuid4().hex[:6]}.toml",
        bootstrap=ctx.bootstrap,
        topics=[topic],
        dead_letter_topic=unique("dlq"),
        group=group,
        connectors={"main": (account.username, sandbox.discovery_url)},
        window_seconds=window_seconds,
        requests_per_minute=requests_per_minute,
        max_buffered_records=max_buffered_records,
        metrics_port=metrics_port,
        # B1 empties whole books on purpose: what the mass-removal guard is there to stop.
        extra="[removal_guard]\nenabled = false",
    )
    return path, group


def poll_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def median(values: Iterable[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


_NOW = datetime(2026, 1, 1, tzinfo=UTC)
