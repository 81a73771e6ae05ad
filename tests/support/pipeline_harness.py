"""An in-process :class:`Pipeline` on the test's event loop, against the real broker and an
in-process sandbox over real HTTP (one account, one address book).

``async with harness(kafka, tmp_path, max_contacts=..., window_seconds=...) as h`` gives a
:class:`Harness`: a two-partition topic, a dead-letter topic, the settings ddsync would load,
``h.produce(record(...))`` and ``async with h.pipeline()`` to run the pipeline; the sandbox's
journal (``h.sandbox.journal``) is the witness of what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from stream.config import load_settings
from stream.demo.generator import DemoRecord, Target, transition
from stream.kafka.topics import ensure_topics
from stream.pipeline.processor import Pipeline
from stream.sandbox import (
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    run_sandbox,
)
from stream.sandbox.server import Sandbox
from stream.settings import Settings
from tests.support.kafka import KafkaCluster
from tests.support.processes import PASSWORD, password_env, produce, write_config
from tests.support.waiting import eventually

USER = "behaviour@apiconnector.com"
BOOK = 501
# Windows are epoch-aligned: an hour-long one still closes at the top of the hour, which a run
# at hh:59:59 would meet. This one's next boundary is in 2033.
NEVER = 1_000_000_000


def record(profile: str, action: str, book: int = BOOK) -> DemoRecord:
    value = transition(
        event_id=uuid.uuid4().hex,
        profile_id=profile,
        email=f"{profile}@example.com",
        target=Target("main", book),
        action=action,
        occurred_at=datetime.now(UTC),
    )
    return DemoRecord(profile.encode(), orjson.dumps(value))


class Harness:
    def __init__(self, kafka: KafkaCluster, sandbox: Sandbox, settings: Settings, topic: str):
        self.kafka = kafka
        self.sandbox = sandbox
        self.settings = settings
        self.topic = topic

    def produce(self, *records: DemoRecord) -> None:
        produce(self.kafka.bootstrap_servers, self.topic, records)

    def members(self) -> set[str]:
        return self.sandbox.members(USER, BOOK)

    @contextlib.asynccontextmanager
    async def pipeline(self) -> AsyncIterator[Pipeline]:
        pipeline = Pipeline(self.settings)
        task = asyncio.create_task(pipeline.run())
        await eventually(lambda: bool(pipeline.ledger.owned) or task.done(), 30, "no assignment")
        try:
            yield pipeline
        finally:
            pipeline.stop()
            await asyncio.wait_for(task, 60)


@contextlib.asynccontextmanager
async def harness(
    kafka: KafkaCluster,
    tmp_path: Path,
    *,
    max_contacts: int,
    window_seconds: float,
    import_delay: float = 0.0,
    max_buffered_records: int = 50_000,
    overrides: dict[str, str] | None = None,
    **account: Any,
) -> AsyncIterator[Harness]:
    """``overrides``: ``DDSYNC__...`` settings the config file of :func:`write_config` fixes."""
    sandbox_account = SandboxAccount(
        username=USER,
        password=PASSWORD,
        region="r1",
        import_delay_seconds=import_delay,
        address_books=(SandboxAddressBook(BOOK, "behaviour"),),
        **account,
    )
    async with run_sandbox(SandboxSettings(accounts=(sandbox_account,), port=0)) as sandbox:
        topic = kafka.create_topic(partitions=2)
        config = write_config(
            tmp_path / "ddsync.toml",
            bootstrap=kafka.bootstrap_servers,
            topics=[topic],
            dead_letter_topic=kafka.unique_topic("dlq"),
            group=f"behaviour-{uuid.uuid4().hex[:8]}",
            connectors={"main": (USER, sandbox.discovery_url)},
            max_contacts=max_contacts,
            window_seconds=window_seconds,
            max_buffered_records=max_buffered_records,
        )
        settings = load_settings(config, {password_env("main"): PASSWORD, **(overrides or {})})
        ensure_topics(settings.kafka)  # what `ddsync run` does first: creates the dead-letter topic
        yield Harness(kafka, sandbox, settings, topic)
