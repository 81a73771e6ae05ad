"""The chaos run: ddsync as real processes, while everything around it misbehaves.

One run, seeded (``ChaosSettings.seed``; every random choice below draws from it):

1. A broker of its own (``deploy/kafka/localkafka.py``, a temporary state directory, free
   ports), so that it can be stopped and started again on its data; the sandbox as a process
   with two accounts (connectors ``a`` and ``b``), 30 address books each.
2. Phase *broken*: ``instances`` ddsync processes run with connector ``b``'s password wrong; an
   idempotent producer writes the first ``broken_share`` of the records at a steady pace while,
   at seeded moments, an instance is SIGKILLed and restarted, the broker restarts, and the
   sandbox adds latency spikes and 429 storms on top of its 5xx errors and dropped connections.
   Then the harness waits (``isolation_timeout``) until every record produced so far is
   committed: connector ``a`` must keep syncing while ``b`` is refused (issue 12).
3. Phase *fixed*: the operator fixes the secret and restarts the instances with SIGTERM; the
   rest of the records arrive under the same kind of chaos.
4. Faults off; wait until the group's committed offsets reach the end (``converge_timeout``);
   ``python -m stream replay`` of connector ``b``'s records dead-lettered for
   ``replay_reasons``; wait again.
5. Verdict: every book's members in the sandbox equal the membership computed from the topic as
   written (last transition of each connector, book and email in partition order), minus the
   addresses DotDigital rejects; every invalid record and every rejected address is on the
   dead-letter topic with its reason; no dead letter for any other reason.

Everything lands in ``report_dir/<time>-seed<seed>/``: ``report.json``, the ddsync logs (one per
process), the sandbox's and the broker's. ``passed`` is true only without failures.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from stream.core.deadletter_format import H_ADDRESS_BOOK_ID, H_CONNECTOR_ID, H_REASON
from stream.core.outcome_format import Outcome, decode, key_of
from stream.core.reasons import Reason
from stream.demo.generator import DemoRecord, Target
from stream.dotdigital import normalize_email
from stream.settings import KafkaSettings
from tests.chaos.workload import INVALID_KINDS, REJECTED, generate
from tests.support.processes import (
    Account,
    DdsyncProcess,
    SandboxProcess,
    committed_and_end,
    password_env,
    write_config,
)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "kafka"))
import localkafka  # noqa: E402

# kafka.outcomes_topic's default: each run has a broker of its own.
OUTCOMES_TOPIC = KafkaSettings.outcomes_topic

GOOD, BROKEN = "a", "b"
WRONG_PASSWORD = "not-the-password"
FAULTS_OFF = {"error_rate": 0.0, "latency_seconds": 0.0, "drop_rate": 0.0, "throttle_rate": 0.0}
QUIET = logging.getLogger("tests.chaos.kafka")
QUIET.setLevel(logging.CRITICAL)
QUIET.propagate = False
TERMINATION_GRACE_SECONDS = 60.0  # the Deployment's terminationGracePeriodSeconds


@dataclass(frozen=True)
class ChaosSettings:
    seed: int
    records: int = 50_000
    profiles: int = 5_000
    books_per_connector: int = 30
    partitions: int = 6
    instances: int = 2
    kills: int = 10
    broker_restarts: int = 2
    # How long the records take to arrive (and the chaos lasts), both phases together.
    chaos_seconds: float = 240.0
    broken_share: float = 0.4
    window_seconds: float = 5.0
    retry_timeout_seconds: float = 60.0
    isolation_timeout: float = 240.0
    converge_timeout: float = 600.0
    error_rate: float = 0.2
    drop_rate: float = 0.02
    rejected_share: float = 0.02
    invalid_share: float = 0.01
    # The sandbox's per-account budgets (calls a minute).
    add_per_minute: int = 600
    remove_per_minute: int = 600
    other_per_minute: int = 6000
    # Reasons of the broken connector's dead letters the operator replays after the fix; only
    # those this ddsync knows (Reason) are passed on.
    replay_reasons: tuple[str, ...] = ("auth_failed", "connector_suspended")
    # False: a control run, b's password right throughout (the operator's restart still
    # happens): tells the chaos's findings from the broken account's.
    broken_account: bool = True
    report_dir: Path = ROOT / ".ddsync" / "chaos"

    @classmethod
    def short(cls, seed: int, **changes: Any) -> ChaosSettings:
        """The version in ``make test``: a few thousand records, three kills, one restart."""
        values: dict[str, Any] = {
            "records": 3_000,
            "profiles": 600,
            "books_per_connector": 10,
            "kills": 3,
            "broker_restarts": 1,
            "chaos_seconds": 50.0,
            "window_seconds": 2.0,
            "retry_timeout_seconds": 20.0,
            "isolation_timeout": 75.0,
            "converge_timeout": 180.0,
            **changes,
        }
        return cls(seed=seed, **values)


@dataclass
class Report:
    seed: int
    settings: dict[str, Any]
    directory: str
    failures: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def fail(self, message: str) -> None:
        self.failures.append(message)
        self.note(f"FAILURE: {message}")

    def note(self, message: str) -> None:
        line = f"[chaos {time.strftime('%H:%M:%S')}] {message}"
        self.events.append(line)
        print(line, flush=True)

    def write(self) -> Path:
        path = Path(self.directory) / "report.json"
        body = {**asdict(self), "passed": self.passed}
        path.write_text(json.dumps(body, indent=2, default=str) + "\n")
        return path

    def summary(self) -> str:
        f = self.figures
        lines = [
            f"chaos run seed {self.seed}: {'PASSED' if self.passed else 'FAILED'}",
            f"  wall time            {f.get('wall_seconds', 0):.0f} s",
            f"  records              {f.get('records_produced')} produced, "
            f"{f.get('records_read_back')} read back",
            f"  kills survived       {f.get('kills')}",
            f"  broker restarts      {f.get('broker_restarts')}",
            f"  worst SIGTERM exit   {f.get('sigterm_worst_seconds')} s",
            f"  records lost         {f.get('records_lost')}",
            f"  wrong memberships    {f.get('wrong_memberships')}",
            f"  duplicate sends      {f.get('duplicate_sends')}",
            f"  dead letters         {f.get('dead_letters_by_reason')}",
            f"  replay               {f.get('replay')}",
            f"  report               {Path(self.directory) / 'report.json'}",
            f"  rerun                make chaos CHAOS_ARGS='{self.settings.get('rerun')}'",
        ]
        lines += [f"  FAILURE: {failure}" for failure in self.failures]
        return "\n".join(lines)


class OwnBroker:
    """A broker only this run uses, restartable on its data."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.state = localkafka.start(state_dir)
        self.bootstrap = self.state.bootstrap_servers

    def restart(self, down_seconds: float) -> None:
        localkafka.stop(self.state_dir, keep_data=True)
        time.sleep(down_seconds)
        self.state = localkafka.resume(self.state_dir, self.state)

    def close(self, keep_log: Path) -> None:
        with contextlib.suppress(OSError):
            shutil.copy(self.state.log_file, keep_log)
        localkafka.stop(self.state_dir)


class Instances:
    """The ddsync processes: started, SIGKILLed and restarted, SIGTERMed, by slot."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str], count: int) -> None:
        self.config = config
        self.workdir = workdir
        self.env = env
        self.started = 0
        self.slots: list[DdsyncProcess] = [self._start(i) for i in range(count)]

    def _start(self, slot: int) -> DdsyncProcess:
        self.started += 1
        log = self.workdir / f"ddsync-{slot}-{self.started:02d}.log"
        return DdsyncProcess(self.config, log, self.env)

    def kill(self, slot: int) -> None:
        self.slots[slot].kill()

    def start(self, slot: int) -> None:
        self.slots[slot] = self._start(slot)

    def terminate_all(self, report: Report) -> list[float]:
        """SIGTERM every instance at once; the seconds each took to exit."""
        began = time.monotonic()
        for process in self.slots:
            if process.alive():
                process.process.send_signal(signal.SIGTERM)
        took: dict[int, float] = {}
        while len(took) < len(self.slots):
            for slot, process in enumerate(self.slots):
                if slot not in took and not process.alive():
                    took[slot] = round(time.monotonic() - began, 1)
                    code = process.process.returncode
                    if code not in (0, -signal.SIGTERM):
                        report.note(f"instance {slot} exited with {code} on SIGTERM")
            if time.monotonic() - began > TERMINATION_GRACE_SECONDS:
                for slot, process in enumerate(self.slots):
                    if slot not in took:
                        report.fail(
                            f"instance {slot} did not exit within "
                            f"{TERMINATION_GRACE_SECONDS:g} s of SIGTERM (Kubernetes would "
                            f"SIGKILL it mid-commit); log {process.log.name}"
                        )
                        process.kill()
                        took[slot] = round(time.monotonic() - began, 1)
            time.sleep(0.1)
        return [took[slot] for slot in range(len(self.slots))]

    def check(self, report: Report, expected_dead: set[int]) -> None:
        """An instance that ended by itself is a finding; it is restarted so the run goes on."""
        for slot, process in enumerate(self.slots):
            if slot not in expected_dead and not process.alive():
                report.fail(
                    f"instance {slot} exited by itself with {process.process.returncode} "
                    f"(log {process.log.name}: {_last_line(process.log)})"
                )
                self.start(slot)

    def kill_all(self) -> None:
        for process in self.slots:
            if process.alive():
                process.kill()


@dataclass(frozen=True)
class Event:
    at: float
    kind: str  # kill, broker, latency, storm
    slot: int = 0
    pause: float = 0.0
    value: float = 0.0


def schedule(rng: random.Random, settings: ChaosSettings) -> list[Event]:
    """Seeded moments over ``chaos_seconds`` (both phases' clocks laid end to end)."""
    span = settings.chaos_seconds
    events = [
        Event(
            rng.uniform(3, span - 3), "kill", rng.randrange(settings.instances), rng.uniform(0.5, 3)
        )
        for _ in range(settings.kills)
    ]
    events += [
        Event(rng.uniform(5, span - 5), "broker", pause=rng.uniform(2, 6))
        for _ in range(settings.broker_restarts)
    ]
    for start in range(5, int(span) - 5, 20):
        kind = rng.choice(("latency", "storm"))
        value = rng.uniform(1.0, 3.0) if kind == "latency" else rng.uniform(0.4, 0.8)
        events.append(Event(start + rng.uniform(0, 10), kind, pause=rng.uniform(4, 8), value=value))
    return sorted(events, key=lambda e: e.at)


def rerun_args(settings: ChaosSettings) -> str:
    """The ``python -m tests.chaos`` options that give ``settings`` again."""
    short = settings.records == ChaosSettings.short(settings.seed).records
    base = ChaosSettings.short(settings.seed) if short else ChaosSettings(seed=settings.seed)
    args = [f"--seed {settings.seed}", *(["--short"] if short else [])]
    for name in ("records", "profiles", "chaos_seconds", "kills", "broker_restarts"):
        if getattr(settings, name) != getattr(base, name):
            args.append(f"--{name.replace('_', '-')} {getattr(settings, name):g}")
    if not settings.broken_account:
        args.append("--no-broken-account")
    if settings.replay_reasons != base.replay_reasons:
        args += [f"--replay-reason {r}" for r in settings.replay_reasons]
    return " ".join(args)


def run(settings: ChaosSettings) -> Report:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = settings.report_dir / f"{stamp}-seed{settings.seed}"
    workdir.mkdir(parents=True, exist_ok=True)
    report = Report(
        settings.seed, {**asdict(settings), "report_dir": str(settings.report_dir)}, str(workdir)
    )
    report.settings["rerun"] = rerun_args(settings)
    report.note(f"seed {settings.seed}; rerun: {report.settings['rerun']}; logs in {workdir}")
    began = time.monotonic()
    broker: OwnBroker | None = None
    try:
        broker = OwnBroker(workdir / "kafka-state")
        report.note(f"own broker at {broker.bootstrap} in {time.monotonic() - began:.0f} s")
        _Run(settings, report, workdir, broker).execute()
    except Exception as exc:  # the report must still be written, with what went wrong
        report.fail(f"the harness stopped: {type(exc).__name__}: {exc}")
        raise
    finally:
        report.figures["wall_seconds"] = round(time.monotonic() - began, 1)
        if broker is not None:
            broker.close(workdir / "broker.log")
        report.write()
        print(report.summary(), flush=True)
    return report


class _Run:
    def __init__(
        self, settings: ChaosSettings, report: Report, workdir: Path, broker: OwnBroker
    ) -> None:
        self.s = settings
        self.report = report
        self.workdir = workdir
        self.broker = broker
        self.rng = random.Random(settings.seed)
        self.topic = f"chaos-{uuid.uuid4().hex[:8]}"
        self.dlq = f"{self.topic}-dlq"
        self.group = f"ddsync-{self.topic}"
        self.kills = 0
        self.broker_restarts = 0
        self.sigterm_seconds: list[float] = []
        self.produce_errors: list[str] = []

    def execute(self) -> None:
        s, report = self.s, self.report
        books_a = tuple(range(1, s.books_per_connector + 1))
        books_b = tuple(range(1001, 1001 + s.books_per_connector))
        limits = {
            "add_per_minute": s.add_per_minute,
            "remove_per_minute": s.remove_per_minute,
            "other_per_minute": s.other_per_minute,
            "import_delay_seconds": 0.2,
        }
        self.accounts = {
            GOOD: Account("chaos-a@apiconnector.com", "r1", books_a, extra=limits),
            BROKEN: Account("chaos-b@apiconnector.com", "r2", books_b, extra=limits),
        }
        targets = [Target(GOOD, b) for b in books_a] + [Target(BROKEN, b) for b in books_b]
        records = generate(
            targets, s.records, seed=s.seed, profiles=s.profiles,
            rejected_share=s.rejected_share, invalid_share=s.invalid_share,
        )  # fmt: skip
        self.kind_of = {r.value: r.bad for r in records}
        admin = AdminClient({"bootstrap.servers": self.broker.bootstrap})
        new = NewTopic(self.topic, num_partitions=s.partitions, replication_factor=1)
        admin.create_topics([new])[self.topic].result(60)
        sandbox = SandboxProcess(
            self.workdir, self.accounts.values(), "--seed", str(s.seed), "--error-rate", "0"
        )
        self.sandbox = sandbox
        self.config = write_config(
            self.workdir / "ddsync.toml",
            bootstrap=self.broker.bootstrap,
            topics=[self.topic],
            dead_letter_topic=self.dlq,
            group=self.group,
            connectors={n: (a.username, sandbox.discovery_url) for n, a in self.accounts.items()},
            window_seconds=s.window_seconds,
            retry_timeout_seconds=s.retry_timeout_seconds,
        )
        env = {
            password_env(GOOD): self.accounts[GOOD].password,
            password_env(BROKEN): WRONG_PASSWORD
            if s.broken_account
            else self.accounts[BROKEN].password,
        }
        instances = Instances(self.config, self.workdir, env, s.instances)
        self.instances = instances
        try:
            self._phases(records, env)
            self._verdict(records)
        finally:
            instances.kill_all()
            stats = sandbox.control("stats")
            report.figures["sandbox_stats"] = stats
            sandbox.stop()

    def _phases(self, records: list[DemoRecord], env: dict[str, str]) -> None:
        s, report, sandbox = self.s, self.report, self.sandbox
        events = schedule(self.rng, s)
        split = int(len(records) * s.broken_share)
        p1 = s.chaos_seconds * s.broken_share
        producer = _PacedProducer(self.broker.bootstrap, self.topic)
        sandbox.set_faults(error_rate=s.error_rate, drop_rate=s.drop_rate)
        report.note(
            f"phase broken: {split} records over {p1:.0f} s, connector {BROKEN}'s password "
            f"{'wrong' if s.broken_account else 'right (control run)'}, "
            f"{s.error_rate:.0%} 5xx, {s.drop_rate:.0%} dropped connections"
        )
        producer.start(records[:split], p1)
        self._chaos([e for e in events if e.at < p1], 0.0)
        producer.join()
        self.produce_errors += producer.errors
        phase_end = time.monotonic()
        ends = self._ends()
        state = "still broken" if s.broken_account else "control run"
        report.note(f"waiting until the {sum(ends)} records so far are committed ({state})")
        if not self._wait_committed(ends, s.isolation_timeout):
            committed = self._committed()
            left = sum(e - max(c, 0) for c, e in zip(committed, ends, strict=True))
            report.fail(
                f"isolation: with connector {BROKEN}'s password wrong, {left} of {sum(ends)} "
                f"records were still uncommitted {s.isolation_timeout:g} s after they were "
                f"produced: the broken connector holds connector {GOOD}'s commits (issue 12: one "
                f"broken account must not stop the others; expected {BROKEN}'s records "
                f"dead-lettered as auth_failed/connector_suspended and {GOOD} syncing on)"
            )
        else:
            report.note(f"isolation held: all committed {time.monotonic() - phase_end:.0f} s after")
        # The operator fixes the secret and restarts the instances.
        env[password_env(BROKEN)] = self.accounts[BROKEN].password
        took = self.instances.terminate_all(report)
        self.sigterm_seconds += took
        report.note(f"password of {BROKEN} fixed; instances restarted (SIGTERM took {took} s)")
        for slot in range(s.instances):
            self.instances.start(slot)
        report.note(
            f"phase fixed: {len(records) - split} records over {s.chaos_seconds - p1:.0f} s"
        )
        producer = _PacedProducer(self.broker.bootstrap, self.topic)
        producer.start(records[split:], s.chaos_seconds - p1)
        self._chaos([e for e in events if e.at >= p1], p1)
        producer.join()
        self.produce_errors += producer.errors
        sandbox.set_faults(**FAULTS_OFF)
        report.note("traffic and faults over; waiting for the group to catch up")
        self.ends_before_replay = self._ends()
        self._converge("before the replay")
        self._replay()
        self._converge("after the replay")
        took = self.instances.terminate_all(report)
        self.sigterm_seconds += took
        self.report.figures.update(
            kills=self.kills,
            broker_restarts=self.broker_restarts,
            sigterm_seconds=self.sigterm_seconds,
            sigterm_worst_seconds=max(self.sigterm_seconds, default=None),
        )

    def _chaos(self, events: list[Event], offset: float) -> None:
        start = time.monotonic() - offset
        dead: set[int] = set()
        for event in events:
            while time.monotonic() - start < event.at:
                self.instances.check(self.report, dead)
                time.sleep(0.2)
            self.instances.check(self.report, dead)
            if event.kind == "kill":
                self.instances.kill(event.slot)
                self.kills += 1
                self.report.note(
                    f"SIGKILL instance {event.slot} (kill {self.kills}), "
                    f"back in {event.pause:.1f} s"
                )
                time.sleep(event.pause)
                self.instances.start(event.slot)
            elif event.kind == "broker":
                self.report.note(f"broker restart, down {event.pause:.1f} s")
                began = time.monotonic()
                self.broker.restart(event.pause)
                self.broker_restarts += 1
                self.report.note(f"broker back after {time.monotonic() - began:.0f} s")
            else:
                name = "latency_seconds" if event.kind == "latency" else "throttle_rate"
                self.sandbox.set_faults(**{name: event.value})
                self.report.note(
                    f"sandbox {event.kind} {name}={event.value:.2f} for {event.pause:.0f} s"
                )
                time.sleep(event.pause)
                self.sandbox.set_faults(**{name: 0.0})

    def _replay(self) -> None:
        known = {r.value for r in Reason}
        reasons = [r for r in self.s.replay_reasons if r in known]
        skipped = [r for r in self.s.replay_reasons if r not in known]
        if skipped:
            self.report.note(f"this ddsync has no reason {skipped}: not replayed")
        command = [sys.executable, "-m", "stream", "replay", "--config", str(self.config),
                   "--connector", BROKEN, "--json"]  # fmt: skip
        for reason in reasons:
            command += ["--reason", reason]
        env = {**os.environ, password_env(GOOD): "x", password_env(BROKEN): "x"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        (self.workdir / "replay.log").write_text(done.stderr + "\n" + done.stdout)
        try:
            summary = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.report.fail(f"replay exited with {done.returncode}: {done.stderr[-500:]}")
            return
        keep = ("replayed", "refused", "filtered", "malformed", "superseded", "stopped")
        self.report.figures["replay"] = {k: summary[k] for k in keep if k in summary}
        self.report.note(f"replay: {self.report.figures['replay']}")
        if done.returncode != 0:
            self.report.fail(f"replay exited with {done.returncode}: {summary.get('error')}")

    # -- Kafka ---------------------------------------------------------------------------

    def _consumer(self) -> Consumer:
        return Consumer({
            "bootstrap.servers": self.broker.bootstrap,
            "group.id": f"chaos-reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "logger": QUIET,
        })  # fmt: skip

    def _committed_and_end(self) -> tuple[list[int], list[int]]:
        return committed_and_end(
            self.broker.bootstrap, self.group, self.topic, self.s.partitions, {"logger": QUIET}
        )

    def _ends(self) -> list[int]:
        return self._committed_and_end()[1]

    def _committed(self) -> list[int]:
        return self._committed_and_end()[0]

    def _wait_committed(self, ends: list[int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.instances.check(self.report, set())
            try:
                if all(c >= e for c, e in zip(self._committed(), ends, strict=True)):
                    return True
            except KafkaException:
                pass
            time.sleep(1)
        return False

    def _converge(self, when: str) -> None:
        began = time.monotonic()
        ends = self._ends()
        if self._wait_committed(ends, self.s.converge_timeout):
            self.report.note(f"caught up {when} in {time.monotonic() - began:.0f} s")
            self.report.figures[f"catch_up_seconds_{when.replace(' ', '_')}"] = round(
                time.monotonic() - began, 1
            )
            return
        committed = self._committed()
        lag = {p: e - max(c, 0) for p, (c, e) in enumerate(zip(committed, ends, strict=True))}
        alive = [p.alive() for p in self.instances.slots]
        raise AssertionError(
            f"not caught up {when} within {self.s.converge_timeout:g} s: lag per partition "
            f"{lag}, committed {committed}, ends {ends}, instances alive {alive}; "
            f"see the ddsync logs in {self.workdir}"
        )

    def _read(self, topic: str, ends: list[int] | None = None) -> list[Any]:
        """Every record of ``topic`` (up to ``ends``), in partition order."""
        consumer = self._consumer()
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        parts = sorted(meta.partitions)
        if ends is None:
            ends = [
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in parts
            ]
        out: list[Any] = []
        try:
            for p, end in zip(parts, ends, strict=True):
                if end <= 0:
                    continue
                consumer.assign([TopicPartition(topic, p, 0)])
                while True:
                    message = consumer.poll(5)
                    if message is None:
                        raise AssertionError(f"{topic}[{p}] stopped before offset {end}")
                    if message.error() is not None:
                        continue
                    out.append(message)
                    offset = message.offset()
                    assert offset is not None, message
                    if offset >= end - 1:
                        break
        finally:
            consumer.close()
        return out

    # -- the verdict -------------------------------------------------------------------------

    def _verdict(self, records: list[DemoRecord]) -> None:
        report = self.report
        written = self._read(self.topic, self.ends_before_replay)
        report.figures["records_produced"] = len(records)
        report.figures["records_read_back"] = len(written)
        produced = Counter(r.value for r in records)
        read_back = Counter(m.value() for m in written)
        if produced != read_back:
            report.fail(
                f"the topic holds {sum((read_back - produced).values())} records not produced "
                f"and lacks {sum((produced - read_back).values())} (producer errors: "
                f"{self.produce_errors[:3]})"
            )
        last: dict[tuple[str, int, str], tuple[str, bool, bytes]] = {}
        for message in written:
            kind = self.kind_of.get(message.value())
            if kind in INVALID_KINDS:
                continue
            event = orjson.loads(message.value())
            email = normalize_email(event["profile"]["partner_ids"]["34"])
            key = (event["connector_id"], event["address_book_id"], email)
            last[key] = (event["action"], kind == REJECTED, message.key())
        expected: dict[tuple[str, int], set[str]] = defaultdict(set)
        for (connector, book, email), (action, rejected, _) in last.items():
            if action == "add" and not rejected:
                expected[(connector, book)].add(email)
        letters = self._dead_letters(records, last)
        missing: list[str] = []
        extra: list[str] = []
        for name, account in self.accounts.items():
            for book in account.address_books:
                actual = self.sandbox.members(account.username, book)
                want = expected.get((name, book), set())
                missing += [f"{name}/{book}/{e}" for e in sorted(want - actual)]
                extra += [f"{name}/{book}/{e}" for e in sorted(actual - want)]
        report.figures.update(
            expected_members=sum(len(v) for v in expected.values()),
            records_lost=len(missing),
            wrong_memberships=len(missing) + len(extra),
            missing_members=missing[:20],
            extra_members=extra[:20],
        )
        report.figures["wrong_memberships_by_letter_reason"] = {
            "missing": dict(Counter(letters.get(m, "no letter") for m in missing)),
            "extra": dict(Counter(letters.get(e, "no letter") for e in extra)),
        }
        if missing or extra:
            report.fail(
                f"{len(missing)} expected members missing, {len(extra)} members that should "
                f"not be there (first: {(missing + extra)[:5]})"
            )
        self._outcomes(last)
        self._duplicates()

    def _outcomes(self, last: dict[tuple[str, int, str], tuple[str, bool, bytes]]) -> None:
        """The outcomes topic, through the kills: each contact and book's latest outcome is the
        state its last transition left (a rejected add: dead-lettered as contact_rejected)."""
        latest: dict[bytes, Outcome] = {}
        records = 0
        for message in self._read(OUTCOMES_TOPIC):
            records += 1
            latest[message.key()] = decode(message.value())
        wrong: list[str] = []
        for (connector, book, email), (action, rejected, _) in last.items():
            outcome = latest.get(key_of(connector, book, email))
            if rejected and action == "add":
                want: tuple[str, str | None] = ("dead_lettered", Reason.CONTACT_REJECTED.value)
            else:
                want = ("member" if action == "add" else "not_member", None)
            got = None if outcome is None else (outcome.state.value, outcome.reason)
            if got != want:
                wrong.append(f"{connector}/{book}/{email}: {got} (expected {want})")
        self.report.figures.update(
            outcome_records=records, outcome_keys=len(latest), wrong_outcomes=len(wrong)
        )
        if wrong:
            self.report.fail(f"{len(wrong)} contacts' latest outcome is wrong (first: {wrong[:5]})")

    def _dead_letters(
        self, records: list[DemoRecord], last: dict[tuple[str, int, str], tuple[str, bool, bytes]]
    ) -> dict[str, str]:
        """Check the dead-letter topic; the last letter's reason of each connector/book/email
        (to tell what the wrong memberships have in common)."""
        report = self.report
        letters = self._read(self.dlq)
        last_reason: dict[str, str] = {}
        reasons: Counter[str] = Counter()
        by_value: dict[bytes, set[str]] = defaultdict(set)
        rejected_letters: set[tuple[bytes, str]] = set()
        unexpected: Counter[str] = Counter()
        allowed = {Reason.INVALID_EVENT, Reason.MISSING_IDENTIFIER, Reason.UNKNOWN_CONNECTOR,
                   Reason.CONTACT_REJECTED}  # fmt: skip
        dump = open(self.workdir / "dead-letters.jsonl", "wb")  # noqa: SIM115
        for message in letters:
            headers = {k: (v or b"").decode(errors="replace") for k, v in message.headers() or []}
            # The evidence for a failure once the broker is gone; error messages stay out.
            headers.pop("ddsync.error_message", None)
            dump.write(
                orjson.dumps(
                    {
                        "offset": message.offset(),
                        "key": (message.key() or b"").decode(errors="replace"),
                        "value": (message.value() or b"").decode(errors="replace"),
                        "headers": headers,
                    }
                )
                + b"\n"
            )
            reason = headers.get(H_REASON, "?")
            reasons[reason] += 1
            by_value[message.value()].add(reason)
            where = _letter_contact(message.value())
            if where is not None:
                # The last letter of a contact and book tells what became of it.
                last_reason[where] = reason
            if reason == Reason.CONTACT_REJECTED:
                rejected_letters.add((message.key(), headers.get(H_ADDRESS_BOOK_ID, "")))
            elif reason in self.s.replay_reasons:
                if headers.get(H_CONNECTOR_ID) != BROKEN:
                    unexpected[f"{reason} of connector {headers.get(H_CONNECTOR_ID)}"] += 1
            elif reason not in allowed:
                unexpected[f"{reason} ({headers.get('ddsync.error_code', '')})"] += 1
        dump.close()
        report.figures["dead_letters_by_reason"] = dict(reasons)
        invalid_missing = [
            r.bad
            for r in records
            if r.bad in INVALID_KINDS
            and INVALID_KINDS[r.bad].value not in by_value.get(r.value, set())
        ]
        rejected_missing = [
            f"{c}/{b}/{e}"
            for (c, b, e), (action, rejected, key) in last.items()
            if rejected and action == "add" and (key, str(b)) not in rejected_letters
        ]
        report.figures["invalid_records"] = sum(1 for r in records if r.bad in INVALID_KINDS)
        report.figures["invalid_not_dead_lettered"] = len(invalid_missing)
        report.figures["rejected_not_dead_lettered"] = len(rejected_missing)
        report.figures["unexpected_dead_letters"] = dict(unexpected)
        if invalid_missing:
            report.fail(
                f"{len(invalid_missing)} invalid records are not on the dead-letter topic with "
                f"their reason (kinds {Counter(invalid_missing)})"
            )
        if rejected_missing:
            report.fail(
                f"{len(rejected_missing)} rejected addresses whose last transition adds them "
                f"have no contact_rejected letter (first {rejected_missing[:3]})"
            )
        if unexpected:
            report.fail(f"dead letters for reasons the run does not cause: {dict(unexpected)}")
        return last_reason

    def _duplicates(self) -> None:
        """The sandbox's count of sends that changed nothing (an import of a member, a removal
        of a non-member): re-sends after kills, lost responses and replays show there, and so
        does coalescing that ends on a book's current state, so it bounds duplicates from above;
        compare runs, not against zero. With its calls, refusals and faults served."""
        stats = self.sandbox.control("stats")
        no_ops = stats.get("no_op_sends", {})
        self.report.figures["duplicate_sends"] = {
            "no_op_adds": sum(v.get("adds", 0) for v in no_ops.values()),
            "no_op_removals": sum(v.get("removals", 0) for v in no_ops.values()),
        }
        self.report.figures["sandbox_calls"] = {
            "calls": stats.get("calls"),
            "rate_limited_total": stats.get("rate_limited_total"),
            "faults_served": stats.get("faults"),
            "unauthorized": stats.get("unauthorized"),
        }


class _PacedProducer:
    """An idempotent producer writing records at a steady pace in a thread of its own; it rides
    out broker restarts (long message timeout) and keeps the order within each partition."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.errors: list[str] = []
        self.producer = Producer({
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            # Its connection errors during broker restarts are expected: not on the console.
            "logger": QUIET,
            "linger.ms": 20,
            "message.timeout.ms": 600_000,
        })  # fmt: skip
        self.thread: threading.Thread | None = None

    def start(self, records: list[DemoRecord], seconds: float) -> None:
        self.thread = threading.Thread(target=self._run, args=(records, seconds), daemon=True)
        self.thread.start()

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.errors.append(str(error))

    def _run(self, records: list[DemoRecord], seconds: float) -> None:
        began = time.monotonic()
        per_record = seconds / max(1, len(records))
        for i, record in enumerate(records):
            delay = began + i * per_record - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            while True:
                try:
                    self.producer.produce(
                        self.topic, key=record.key, value=record.value, on_delivery=self._delivered
                    )
                    break
                except BufferError:
                    self.producer.poll(0.1)
            self.producer.poll(0)
        left = self.producer.flush(600)
        if left:
            self.errors.append(f"{left} records still unsent after 600 s")
        # Let go of the client now, not at a later garbage collection: a finished producer
        # would go on reconnecting to a broker that restarts or is gone.
        del self.producer

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join()


def _letter_contact(value: bytes | None) -> str | None:
    try:
        event = orjson.loads(value or b"")
        email = normalize_email(event["profile"]["partner_ids"]["34"])
        return f"{event['connector_id']}/{event['address_book_id']}/{email}"
    except Exception:
        return None


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
