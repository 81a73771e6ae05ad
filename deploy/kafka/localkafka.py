"""A single-node Apache Kafka broker (KRaft) for tests and local runs, without Docker.

Apache Kafka's own jars come from Maven Central (``pom.xml`` beside this file) into a cache
outside the repository (``$DDSYNC_CACHE`` or ``~/.cache/ddsync``); later runs reuse them. Each
start formats a fresh data directory, binds free loopback ports (so a leftover broker or a taken
port does not collide), waits until the client port accepts connections, and records the pid and
bootstrap address in a state file. ``stop`` ends the broker by that pid.

``start(state_dir, sasl_users={"ddsync": "secret"})`` also opens a ``SASL_PLAINTEXT`` listener
(mechanism PLAIN, those users and passwords) on another free loopback port, recorded as
``BrokerState.sasl_bootstrap_servers``. The PLAINTEXT listener stays the inter-broker one and the
controller keeps its own, so the broker itself needs no credentials; there is no authorizer:
the SASL listener proves authentication, not permissions.

Standard library only, so the Makefile and the test fixture can use it before anything else is
installed::

    python deploy/kafka/localkafka.py fetch
    python deploy/kafka/localkafka.py up   [--state-dir DIR]   # prints the bootstrap address
    python deploy/kafka/localkafka.py down [--state-dir DIR]
    python deploy/kafka/localkafka.py run -- COMMAND ...  # a broker for one command's lifetime

``run`` leaves ``KAFKA_BOOTSTRAP_SERVERS`` alone when it is already set (an existing cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

KAFKA_VERSION = "4.1.1"
HERE = Path(__file__).resolve().parent
DEFAULT_STATE_DIR = HERE.parents[1] / ".ddsync" / "kafka"
READY_TIMEOUT_SECONDS = 180.0
HEAP = ("-Xms256m", "-Xmx512m")
CHILD_GRACE_SECONDS = 60.0


class LocalKafkaError(RuntimeError):
    """The local broker could not be fetched, started or stopped."""


@dataclass(frozen=True)
class BrokerState:
    pid: int
    bootstrap_servers: str
    data_dir: str
    log_file: str
    # The SASL_PLAINTEXT listener's address, when the broker was started with SASL users.
    sasl_bootstrap_servers: str | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("DDSYNC_CACHE", Path.home() / ".cache" / "ddsync"))


def lib_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_dir() / f"kafka-{version}" / "lib"


def fetch_jars(version: str = KAFKA_VERSION) -> Path:
    """Resolve the broker's runtime classpath with Maven, once; return the folder of jars."""
    target = lib_dir(version)
    marker = target / ".complete"
    if marker.exists():
        return target
    if shutil.which("mvn") is None:
        raise LocalKafkaError("Maven (mvn) is needed to fetch Apache Kafka's jars; install it")
    if target.exists():
        shutil.rmtree(target)
    command = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(HERE / "pom.xml"),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={target}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LocalKafkaError(
            f"mvn could not fetch Kafka {version}:\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
    marker.write_text(version)
    return target


def can_run_locally(version: str = KAFKA_VERSION) -> bool:
    """A JDK, and the jars already cached or Maven to fetch them."""
    has_jars = (lib_dir(version) / ".complete").exists()
    return shutil.which("java") is not None and (has_jars or shutil.which("mvn") is not None)


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_properties(
    data_dir: Path,
    port: int,
    controller_port: int,
    sasl_port: int | None = None,
    sasl_users: Mapping[str, str] | None = None,
) -> str:
    """The broker's settings; with ``sasl_port``, a SASL_PLAINTEXT listener there whose PLAIN
    mechanism accepts ``sasl_users`` (name -> password)."""
    listeners = [f"PLAINTEXT://127.0.0.1:{port}"]
    protocols = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
    if sasl_port is not None:
        listeners.append(f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}")
        protocols.append("SASL_PLAINTEXT:SASL_PLAINTEXT")
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{controller_port}"]),
        "advertised.listeners": ",".join(listeners),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": ",".join(protocols),
        "log.dirs": str(data_dir / "log"),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "2",
        # The default dedupe buffer takes 128 MiB of a 512 MiB heap.
        "log.cleaner.dedupe.buffer.size": "2097152",
        "auto.create.topics.enable": "false",
    }
    if sasl_port is not None:
        settings["sasl.enabled.mechanisms"] = "PLAIN"
        settings["listener.name.sasl_plaintext.plain.sasl.jaas.config"] = plain_jaas(
            sasl_users or {}
        )
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def plain_jaas(users: Mapping[str, str]) -> str:
    """The PLAIN login module of a listener: one ``user_NAME="PASSWORD"`` option per user."""
    if not users:
        raise LocalKafkaError("a SASL listener needs at least one user")
    options = []
    for name, password in users.items():
        # JAAS options are name="value" in double quotes, and a .properties value ends at a
        # newline and treats backslashes as escapes: refuse what would not survive both.
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise LocalKafkaError(f"SASL user name {name!r}: use letters, digits, '-', '_', '.'")
        if not password or any(c in password for c in '"\\\n\r'):
            raise LocalKafkaError(
                f"the SASL password of {name} must be non-empty, without quotes, backslashes "
                "or line breaks"
            )
        options.append(f'user_{name}="{password}"')
    return f"org.apache.kafka.common.security.plain.PlainLoginModule required {' '.join(options)};"


LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka.server.KafkaRaftServer
logger.kafka.level = INFO
"""


def _java(classpath: Path, log_config: Path) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError("a JDK 17+ (java) is needed to run the local broker")
    return [
        java,
        *HEAP,
        "-XX:+UseSerialGC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log_config}",
        "-cp",
        f"{classpath}/*",
    ]


def start(
    state_dir: Path = DEFAULT_STATE_DIR,
    version: str = KAFKA_VERSION,
    *,
    sasl_users: Mapping[str, str] | None = None,
) -> BrokerState:
    """Start a fresh broker and wait until it accepts connections (on every listener); with
    ``sasl_users`` (name -> password) it has a SASL_PLAINTEXT listener too (PLAIN)."""
    if sasl_users is not None:
        plain_jaas(sasl_users)  # refuse bad users before fetching or starting anything
    existing = read_state(state_dir)
    if existing is not None and _alive(existing.pid):
        raise LocalKafkaError(
            f"a local broker already runs (pid {existing.pid}, {existing.bootstrap_servers}); "
            "stop it first"
        )
    classpath = fetch_jars(version)
    state_dir.mkdir(parents=True, exist_ok=True)
    # One retry covers the rare race where another process takes a port we just found free.
    last_error: LocalKafkaError | None = None
    for _ in range(3):
        try:
            return _start_once(state_dir, classpath, sasl_users)
        except LocalKafkaError as exc:
            last_error = exc
    assert last_error is not None
    raise last_error


def _start_once(
    state_dir: Path, classpath: Path, sasl_users: Mapping[str, str] | None
) -> BrokerState:
    data_dir = state_dir / f"data-{uuid.uuid4().hex[:8]}"
    data_dir.mkdir(parents=True)
    port, controller_port = free_port(), free_port()
    sasl_port = None if sasl_users is None else free_port()
    properties = data_dir / "server.properties"
    properties.write_text(server_properties(data_dir, port, controller_port, sasl_port, sasl_users))
    # It holds the SASL passwords: readable by its owner only.
    properties.chmod(0o600)
    log_file = data_dir / "broker.log"
    log_config = data_dir / "log4j2.properties"
    log_config.write_text(LOG4J2.format(log=log_file))
    java = _java(classpath, log_config)

    cluster_id = subprocess.run(
        [*java, "kafka.tools.StorageTool", "random-uuid"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    formatted = subprocess.run(
        [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties)],
        capture_output=True,
        text=True,
        check=False,
    )
    if formatted.returncode != 0:
        raise LocalKafkaError(f"formatting the data directory failed: {formatted.stderr[-2000:]}")

    with open(data_dir / "stdout.log", "wb") as out:
        process = subprocess.Popen(
            [*java, "kafka.Kafka", str(properties)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own session, so a Ctrl-C meant for `make` reaches it only through `stop`.
            start_new_session=True,
        )
    state = BrokerState(
        process.pid,
        f"127.0.0.1:{port}",
        str(data_dir),
        str(log_file),
        None if sasl_port is None else f"127.0.0.1:{sasl_port}",
    )
    ports = [port] if sasl_port is None else [port, sasl_port]
    write_state(state_dir, state)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            clear_state(state_dir)
            tail = _tail(log_file) or _tail(data_dir / "stdout.log")
            shutil.rmtree(data_dir, ignore_errors=True)
            raise LocalKafkaError(f"the broker exited with {process.returncode}:\n{tail}")
        if all(_accepts(p) for p in ports):
            return state
        time.sleep(0.2)
    tail = _tail(log_file)  # before stop, which removes the data directory and its log
    stop(state_dir)
    addresses = ", ".join(filter(None, [state.bootstrap_servers, state.sasl_bootstrap_servers]))
    raise LocalKafkaError(
        f"the broker did not open {addresses} within {READY_TIMEOUT_SECONDS:g} s:\n{tail}"
    )


def stop(state_dir: Path = DEFAULT_STATE_DIR, *, keep_data: bool = False) -> bool:
    """Stop the broker recorded in ``state_dir``; True when one was running."""
    state = read_state(state_dir)
    if state is None:
        return False
    was_running = _alive(state.pid)
    if was_running:
        _terminate(state.pid)
    clear_state(state_dir)
    if not keep_data:
        shutil.rmtree(state.data_dir, ignore_errors=True)
    return was_running


def resume(state_dir: Path, state: BrokerState, version: str = KAFKA_VERSION) -> BrokerState:
    """Start the broker of ``state`` again after ``stop(state_dir, keep_data=True)``: the same
    data directory, ports and cluster, so topics, offsets and committed group offsets survive,
    as when a broker pod restarts on its volume. Waits until every listener accepts again."""
    data_dir = Path(state.data_dir)
    java = _java(fetch_jars(version), data_dir / "log4j2.properties")
    with open(data_dir / "stdout.log", "ab") as out:
        process = subprocess.Popen(
            [*java, "kafka.Kafka", str(data_dir / "server.properties")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    resumed = BrokerState(
        process.pid,
        state.bootstrap_servers,
        state.data_dir,
        state.log_file,
        state.sasl_bootstrap_servers,
    )
    write_state(state_dir, resumed)
    addresses = [a for a in (state.bootstrap_servers, state.sasl_bootstrap_servers) if a]
    ports = [int(a.rsplit(":", 1)[1]) for a in addresses]
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            clear_state(state_dir)
            tail = _tail(Path(state.log_file))
            raise LocalKafkaError(f"the resumed broker exited with {process.returncode}:\n{tail}")
        if all(_accepts(p) for p in ports):
            return resumed
        time.sleep(0.2)
    raise LocalKafkaError(f"the resumed broker did not open {', '.join(addresses)} in time")


def _terminate(pid: int, grace_seconds: float = 20.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while _alive(pid):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    # Reap it if it is our child, so a finished broker does not linger as a zombie.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()[0]
        return status != "Z"
    except OSError:
        return True


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def state_file(state_dir: Path) -> Path:
    return state_dir / "broker.json"


def read_state(state_dir: Path) -> BrokerState | None:
    try:
        return BrokerState(**json.loads(state_file(state_dir).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_state(state_dir: Path, state: BrokerState) -> None:
    state_file(state_dir).write_text(json.dumps(asdict(state)))


def clear_state(state_dir: Path) -> None:
    state_file(state_dir).unlink(missing_ok=True)


def run_with_broker(command: list[str], state_dir: Path) -> int:
    """Run ``command`` with a broker started for it (unless one is given), then stop it."""
    if not command:
        raise LocalKafkaError("run needs a command: localkafka.py run -- COMMAND ...")
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return subprocess.call(command)
    if not can_run_locally() and docker_answers():
        # No JDK or Maven here, but a Docker engine: the test fixture starts Kafka itself
        # with testcontainers, so the command runs without a broker of ours.
        print(
            "no JDK/Maven for a local broker; Kafka comes from Docker (testcontainers)",
            file=sys.stderr,
        )
        return subprocess.call(command)
    # A state directory of its own, so `make test` never stops a broker of `make kafka-up`.
    own_dir = state_dir / f"run-{os.getpid()}"
    began = time.monotonic()
    state = start(own_dir)
    print(
        f"Kafka {KAFKA_VERSION} ready at {state.bootstrap_servers} in "
        f"{time.monotonic() - began:.1f} s",
        file=sys.stderr,
    )
    # SIGTERM becomes an exception, so the finally below stops the broker on it too.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    child: subprocess.Popen[bytes] | None = None
    try:
        child = subprocess.Popen(
            command, env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": state.bootstrap_servers}
        )
        return child.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the command too (one process group): let it finish its shutdown,
        # which may still need the broker (a final offset commit), before stopping the broker.
        if child is not None:
            try:
                child.send_signal(signal.SIGINT)
                child.wait(CHILD_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        return 130
    finally:
        stop(own_dir)
        shutil.rmtree(own_dir, ignore_errors=True)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A local single-node Kafka broker.")
    parser.add_argument("action", choices=["fetch", "up", "down", "status", "run"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" is run's command; options before it are ours, in any order.
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    try:
        if args.action == "run":
            return run_with_broker(command, args.state_dir)
        if args.action == "fetch":
            print(fetch_jars())
        elif args.action == "up":
            began = time.monotonic()
            state = start(args.state_dir)
            print(
                f"Kafka {KAFKA_VERSION} ready at {state.bootstrap_servers} "
                f"(pid {state.pid}, {time.monotonic() - began:.1f} s)",
                file=sys.stderr,
            )
            print(state.bootstrap_servers)
        elif args.action == "down":
            print("stopped" if stop(args.state_dir) else "no local broker was running")
        else:
            found = read_state(args.state_dir)
            if found is None or not _alive(found.pid):
                print("not running")
                return 1
            sasl = found.sasl_bootstrap_servers
            print(
                f"running: pid {found.pid} at {found.bootstrap_servers}"
                + (f" (SASL_PLAINTEXT at {sasl})" if sasl else "")
            )
    except LocalKafkaError as exc:
        print(f"localkafka: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
