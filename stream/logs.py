"""Log lines: text for people, JSON for log pipelines, both with what a line is about.

Contract:

* :func:`configure_logging` sends every log record to one stream (stderr) as text
  (``time LEVEL logger: message``) or as JSON: one object per line with ``time`` (RFC 3339,
  UTC, milliseconds), ``level``, ``logger``, ``message``, ``exception`` (the traceback text,
  when there is one), and whichever of ``connector``, ``address_book``, ``batch`` and
  ``partition`` are known.
* Those fields come from :func:`log_context` (a ``contextvars`` block: it covers the asyncio
  tasks started inside it) or from ``extra={...}`` on the log call, which wins.
* Email addresses are replaced by ``{email}`` in every line, message and traceback alike:
  contacts' emails are personal data and have no place in logs. Secrets are kept out where
  they are known (the DotDigital client scrubs them from what it puts in errors); this module
  cannot know them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final, Literal, TextIO

import orjson

from stream.redaction import redact_emails

__all__ = [
    "CONTEXT_FIELDS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "log_context",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("text", "json")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
CONTEXT_FIELDS: Final = ("connector", "address_book", "batch", "partition")

_context: ContextVar[Mapping[str, str | int]] = ContextVar(
    "ddsync_log_context", default=MappingProxyType({})
)


@contextmanager
def log_context(**fields: str | int | None) -> Iterator[None]:
    """Add ``fields`` (names from :data:`CONTEXT_FIELDS`; None values are left out) to every
    record logged inside the block, and in the tasks started inside it."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context fields: {sorted(unknown)}")
    known = {name: value for name, value in fields.items() if value is not None}
    token = _context.set({**_context.get(), **known})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the :func:`log_context` fields onto each record, unless ``extra=`` set them.

    On the handler, so it runs in the logging call's own context (its task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, emails redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact_emails(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's contract), emails redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_emails(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = redact_emails(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact_emails(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact_emails(self.formatStack(record.stack_info))
        # default=str: a value passed with extra= that JSON cannot hold is still shown.
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, log_format: LogFormat, stream: TextIO) -> logging.Handler:
    """Log records of ``level`` and above to ``stream`` in ``log_format``, replacing the root
    logger's handlers; returns the handler."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
