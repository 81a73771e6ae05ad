"""A pipeline's world with neither a broker nor a socket: a :class:`MemoryBroker` holding the
source, dead-letter and outcomes topics, the sandbox in process (its ``SandboxTransport``), and
the settings ddsync would load for them (``write_config``'s file, read by ``load_settings``).

``async with memory_world(tmp_path, user=..., books=..., clock=...) as (sandbox, transport,
broker, settings)``; ``Pipeline(settings, kafka=broker, transport=transport)`` then runs on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import NamedTuple, Unpack

from stream.clock import FakeClock
from stream.config import load_settings
from stream.kafka.memory import MemoryBroker
from stream.sandbox import Sandbox, SandboxAccount, SandboxAddressBook, SandboxSettings
from stream.sandbox.transport import SandboxTransport, in_process_sandbox
from stream.settings import KafkaSettings, Settings
from tests.support.processes import PASSWORD, ConfigOptions, password_env, write_config

TOPIC = "transitions"
DLQ = "dlq"
OUTCOMES = KafkaSettings.outcomes_topic
NEVER = 1_000_000_000  # windows that do not close during a test (epoch-aligned: 2033)


class MemoryWorld(NamedTuple):
    sandbox: Sandbox
    transport: SandboxTransport
    broker: MemoryBroker
    settings: Settings


@contextlib.asynccontextmanager
async def memory_world(
    tmp_path: Path,
    *,
    user: str,
    books: Sequence[SandboxAddressBook],
    clock: FakeClock,
    partitions: int = 1,
    group: str = "ddsync",
    import_delay_seconds: float = 0.0,
    outcomes_topic: bool = True,
    **config: Unpack[ConfigOptions],
) -> AsyncIterator[MemoryWorld]:
    """One connector ``main`` for ``user``, whose books are ``books``; ``config`` goes to
    ``write_config`` (windows never close unless it says otherwise). Without
    ``outcomes_topic`` the broker lacks it (its records are refused)."""
    account = SandboxAccount(
        username=user,
        password=PASSWORD,
        region="r1",
        import_delay_seconds=import_delay_seconds,
        address_books=tuple(books),
    )
    sandbox, transport = in_process_sandbox(SandboxSettings(accounts=(account,), clock=clock))
    options: ConfigOptions = {"window_seconds": NEVER, "requests_per_minute": 10_000}
    options.update(config)
    try:
        path = write_config(
            tmp_path / "ddsync.toml",
            bootstrap="memory:9092",
            topics=[TOPIC],
            dead_letter_topic=DLQ,
            group=group,
            connectors={"main": (user, sandbox.discovery_url)},
            **options,
        )
        settings = load_settings(path, {password_env("main"): PASSWORD})
        broker = MemoryBroker()
        broker.create_topic(TOPIC, partitions=partitions)
        broker.create_topic(DLQ)
        if outcomes_topic:
            broker.create_topic(OUTCOMES)
        yield MemoryWorld(sandbox, transport, broker, settings)
    finally:
        await transport.close()
