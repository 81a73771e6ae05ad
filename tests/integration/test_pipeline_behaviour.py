"""Batching semantics, observed from DotDigital's side.

The pipeline runs in-process on the test's event loop against the real broker and an in-process
sandbox over real HTTP; the sandbox's journal of received requests is the witness of what was
sent, when, and in which order.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from stream.sandbox.server import Sandbox
from tests.support.kafka import KafkaCluster
from tests.support.pipeline_harness import NEVER, harness, record
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.sandbox]


def imports(sandbox: Sandbox) -> list[list[str]]:
    """The emails of each import DotDigital accepted, in order."""
    return [
        [c["identifiers"]["email"] for c in entry.body["contacts"]]
        for entry in sandbox.journal
        if entry.method == "PUT" and entry.path == "/contacts/v3/import" and entry.status == 202
    ]


def removals(sandbox: Sandbox) -> list[list[int]]:
    return [
        list(entry.body)
        for entry in sandbox.journal
        if entry.method == "POST" and entry.path.endswith("/contacts/delete")
    ]


def lookups(sandbox: Sandbox, email: str) -> int:
    return sum(1 for e in sandbox.journal if e.path == f"/contacts/v3/email/{email}")


async def window_just_opened(window_seconds: float) -> None:
    """Sleep until just after an epoch-aligned window boundary, so that what the test produces
    next lands in one window."""
    await asyncio.sleep(window_seconds - time.time() % window_seconds + 0.05)


async def test_a_full_batch_flushes_at_once_and_the_rest_on_shutdown(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    async with harness(kafka, tmp_path, max_contacts=5, window_seconds=NEVER) as h:
        profiles = [f"count-{n}" for n in range(12)]
        h.produce(*(record(p, "add") for p in profiles))
        async with h.pipeline():
            await eventually(lambda: len(imports(h.sandbox)) >= 2, 30, "two full batches")
            await asyncio.sleep(1.0)  # nothing else may flush before the window closes
            assert [len(batch) for batch in imports(h.sandbox)] == [5, 5]
        # Shutdown flushes what is buffered.
        assert sorted(len(batch) for batch in imports(h.sandbox)) == [2, 5, 5]
        assert h.members() == {f"{p}@example.com" for p in profiles}


async def test_a_closing_window_flushes_a_small_batch(kafka: KafkaCluster, tmp_path: Path) -> None:
    async with harness(kafka, tmp_path, max_contacts=1000, window_seconds=1) as h, h.pipeline():
        await window_just_opened(1)
        h.produce(*(record(f"window-{n}", "add") for n in range(3)))
        await eventually(lambda: len(h.members()) == 3, 15, "the window did not flush")
        assert [len(batch) for batch in imports(h.sandbox)] == [3]


async def test_entering_and_leaving_within_one_window_is_one_removal(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    async with harness(kafka, tmp_path, max_contacts=1000, window_seconds=2) as h:
        async with h.pipeline():
            h.produce(record("stays", "add"), record("member", "add"))
            await eventually(lambda: len(h.members()) == 2, 15, "first window did not flush")
            first_imports = len(imports(h.sandbox))
            await window_just_opened(2)
            # One window: a new contact enters and leaves; a member leaves, re-enters, leaves.
            h.produce(
                record("passing", "add"),
                record("member", "remove"),
                record("member", "add"),
                record("passing", "remove"),
                record("member", "remove"),
            )
            await eventually(
                lambda: h.members() == {"stays@example.com"}, 15, "second window did not flush"
            )
            await asyncio.sleep(2.5)  # a further window: nothing more may be sent
        assert len(imports(h.sandbox)) == first_imports, "a coalesced contact was imported"
        assert len(removals(h.sandbox)) == 1
        assert len(removals(h.sandbox)[0]) == 1  # the member's id, once
        # The contact DotDigital never knew is looked up once, found absent: already removed.
        assert lookups(h.sandbox, "passing@example.com") == 1


async def test_flushes_of_one_address_book_keep_their_order(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    # One contact per batch and slow imports: a removal overtaking the add before it would
    # leave the contact in (or out) wrongly.
    async with harness(
        kafka, tmp_path, max_contacts=1, window_seconds=NEVER, import_delay=0.3
    ) as h:
        actions = ["add", "remove", "add", "remove", "add", "remove", "add"]
        h.produce(*(record("flipper", a) for a in actions))
        async with h.pipeline():
            await eventually(lambda: len(imports(h.sandbox)) == 4, 30, "four imports")
            await eventually(lambda: len(removals(h.sandbox)) == 3, 30, "three removals")
            await eventually(lambda: h.members() == {"flipper@example.com"}, 10, "final state")
        sent = [
            "add" if e.method == "PUT" else "remove"
            for e in h.sandbox.journal
            if (e.method == "PUT" and e.status == 202) or e.path.endswith("/contacts/delete")
        ]
        assert sent == actions
