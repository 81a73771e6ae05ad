"""Log lines: the JSON shape, the context fields, email redaction (stream/logs.py)."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime

import orjson
import pytest

from stream.clock import FakeClock
from stream.core.suspensions import Suspensions
from stream.core.windowing import Batch, Contact, Trigger
from stream.dotdigital import Operation
from stream.logs import LogFormat, configure_logging, log_context
from stream.observability.metrics import Metrics
from stream.pipeline.clients import ClientPool
from stream.pipeline.dispatch import Dispatcher, Failure, Sent
from stream.redaction import redact_emails


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.usefixtures("root_logging")
def test_json_lines_have_time_level_logger_message_and_the_exception() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", out)
    log = logging.getLogger("stream.test")
    log.debug("not at INFO")
    log.info("flushed %s/%d", "eu", 7)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("it failed")
    first, second = lines(out)
    assert set(first) == {"time", "level", "logger", "message"}
    assert (first["level"], first["logger"], first["message"]) == (
        "INFO",
        "stream.test",
        "flushed eu/7",
    )
    assert isinstance(first["time"], str)
    assert first["time"].endswith("Z")
    offset = datetime.fromisoformat(first["time"]).utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0
    assert second["level"] == "ERROR"
    assert "RuntimeError: boom" in str(second["exception"])
    assert "Traceback" in str(second["exception"])


@pytest.mark.usefixtures("root_logging")
def test_context_fields_reach_tasks_started_inside_and_extra_wins() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", out)
    log = logging.getLogger("stream.test")

    async def main() -> None:
        with log_context(connector="eu", address_book=12):
            with log_context(batch=3):
                await asyncio.create_task(_log_later(log))
            log.info("book only", extra={"partition": 4, "address_book": 99})
        log.info("outside")

    asyncio.run(main())
    task_line, extra_line, outside = lines(out)
    assert (task_line["connector"], task_line["address_book"], task_line["batch"]) == ("eu", 12, 3)
    assert "partition" not in task_line
    assert (extra_line["address_book"], extra_line["partition"]) == (99, 4)
    assert "batch" not in extra_line
    assert not {"connector", "address_book", "batch", "partition"} & set(outside)


async def _log_later(log: logging.Logger) -> None:
    await asyncio.sleep(0)
    log.info("in a task")


def test_unknown_context_field_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log context fields"), log_context(account="x"):
        pass


@pytest.mark.usefixtures("root_logging")
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_email_addresses_never_reach_a_line(log_format: LogFormat) -> None:
    out = io.StringIO()
    configure_logging("INFO", log_format, out)
    log = logging.getLogger("stream.test")
    log.warning("rejected %s", "Jane.Doe+vip@Example.co.uk")
    try:
        raise ValueError("lookup of bob@example.com failed")
    except ValueError:
        log.exception("lookup failed")
    text = out.getvalue()
    assert "Jane.Doe" not in text
    assert "bob@example.com" not in text
    assert "rejected {email}" in text
    assert "ValueError: lookup of {email} failed" in text


def test_redact_leaves_text_without_an_address_alone() -> None:
    assert (
        redact_emails("PUT /contacts/v3/import -> 202 @ 0.5 s")
        == "PUT /contacts/v3/import -> 202 @ 0.5 s"
    )
    assert redact_emails("a@b.io and c.d@e-f.example.org") == "{email} and {email}"


class _Listener:
    """A DispatchListener for a batch without contacts: nothing may reach it."""

    def synced(
        self,
        batch: Batch,
        operation: Operation,
        contacts: Sequence[Contact],
        sent: Mapping[str, Sent],
    ) -> None:
        raise AssertionError("an empty batch syncs nothing")

    def failed(self, batch: Batch, contact: Contact, failure: Failure) -> None:
        raise AssertionError("an empty batch fails nothing")

    def holds(self, contact: Contact) -> bool:
        raise AssertionError("an empty batch asks about no contact")

    def released(self, contact: Contact) -> bool:
        return False

    def dropped(self, batch: Batch, contact: Contact) -> None:
        raise AssertionError("an empty batch drops nothing")


@pytest.mark.usefixtures("root_logging")
def test_a_flush_logs_its_connector_address_book_and_batch() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", out)
    clock = FakeClock()

    async def main() -> None:
        dispatcher = Dispatcher(
            ClientPool({}, clock=clock),
            _Listener(),
            retry_timeout=10,
            clock=clock,
            metrics=Metrics(),
            suspensions=Suspensions((), clock, 60.0),
        )
        batch = Batch("eu-main", 1234, 0.0, 7, (), (), Trigger.WINDOW)
        await dispatcher.submit(batch)
        logging.getLogger("stream.test").info("after the flush")

    asyncio.run(main())
    flushed, after = lines(out)
    assert str(flushed["message"]).startswith("flushed eu-main/1234 #7 (window)")
    assert (flushed["connector"], flushed["address_book"], flushed["batch"]) == ("eu-main", 1234, 7)
    assert "connector" not in after


@pytest.mark.parametrize(
    "address",
    [
        "josé.müller.5@example.com",
        "user@exämple.com",
        "Ünal@bücher.de",
        "用户7@example.com",
        "o'brien.4@example.co.uk",
        "first.last+news3@Example.COM",
    ],
)
def test_internationalised_addresses_are_redacted_whole(address: str) -> None:
    assert redact_emails(f"removal of {address} failed") == "removal of {email} failed"
