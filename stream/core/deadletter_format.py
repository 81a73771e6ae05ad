"""The headers of a dead-letter record.

A dead-letter record is the original record's key and value, unchanged, plus the headers built
here. This module only builds and reads those headers; producing them is the Kafka edge's job.

Contract:

* ``ddsync.reason`` holds a :class:`stream.core.reasons.Reason` value.
* :meth:`DeadLetter.to_headers` writes every header under a stable name prefixed ``ddsync.``
  (see :data:`HEADER_NAMES`); values are UTF-8. Integers are decimal, times RFC 3339 in UTC.
  Optional fields that are ``None`` are left out rather than written empty.
* :meth:`DeadLetter.from_headers` reads what :meth:`to_headers` wrote (round trip is exact) and
  ignores headers it does not know, so the original record's own headers may travel alongside.
  A missing or malformed ``ddsync.*`` header raises :class:`MalformedDeadLetter` naming it.
* ``error_message`` and ``error_code`` never hold secrets and never exceed their bound: a
  :class:`DeadLetter` passes them through :func:`stream.redaction.redact` and truncates them (to
  :data:`MAX_MESSAGE_BYTES` / :data:`MAX_CODE_BYTES` of UTF-8) when it is built, so no caller can
  put an ``Authorization`` header or a password on the DLQ by accident.
* Replays: the replay tool re-produces a record to its source topic with
  :func:`replay_headers` (``ddsync.replay_count`` = previous count + 1, and
  ``ddsync.replayed_reason`` = the reason it was dead-lettered for, read back by
  :func:`replayed_reason_of`); when that record is
  dead-lettered again, :func:`replay_count_of` reads the count back off it, so the count survives
  the round trip and the replay tool can refuse records replayed too often.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from stream.core.reasons import Reason
from stream.redaction import redact

HEADER_PREFIX: Final = "ddsync."
H_REASON: Final = "ddsync.reason"
H_ERROR_CODE: Final = "ddsync.error_code"
H_ERROR_MESSAGE: Final = "ddsync.error_message"
H_SOURCE_TOPIC: Final = "ddsync.source_topic"
H_SOURCE_PARTITION: Final = "ddsync.source_partition"
H_SOURCE_OFFSET: Final = "ddsync.source_offset"
H_CONNECTOR_ID: Final = "ddsync.connector_id"
H_ADDRESS_BOOK_ID: Final = "ddsync.address_book_id"
H_EVENT_ID: Final = "ddsync.event_id"
H_ATTEMPTS: Final = "ddsync.attempts"
H_FAILED_AT: Final = "ddsync.failed_at"
H_REPLAY_COUNT: Final = "ddsync.replay_count"
# Only on a record too large for the dead-letter topic, written without its value: says what was
# left out. Not a DeadLetter field: the replay tool refuses such a record (nothing to replay).
H_VALUE_OMITTED: Final = "ddsync.value_omitted"
# On a replayed source record (not a dead letter): the reason it was dead-lettered for, so that
# what an operator released is not held again for the same reason (the mass-removal guard).
H_REPLAYED_REASON: Final = "ddsync.replayed_reason"

HEADER_NAMES: Final = (
    H_REASON,
    H_ERROR_CODE,
    H_ERROR_MESSAGE,
    H_SOURCE_TOPIC,
    H_SOURCE_PARTITION,
    H_SOURCE_OFFSET,
    H_CONNECTOR_ID,
    H_ADDRESS_BOOK_ID,
    H_EVENT_ID,
    H_ATTEMPTS,
    H_FAILED_AT,
    H_REPLAY_COUNT,
)

MAX_MESSAGE_BYTES: Final = 1024
MAX_CODE_BYTES: Final = 128
_ELLIPSIS: Final = "…"


def truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut so that its UTF-8 encoding fits in ``max_bytes``, marked with an ellipsis."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    room = max_bytes - len(_ELLIPSIS.encode("utf-8"))
    # errors="ignore" drops a multi-byte character split by the cut instead of failing.
    return encoded[: max(room, 0)].decode("utf-8", errors="ignore") + _ELLIPSIS


class MalformedDeadLetter(ValueError):
    """The headers are not those of a ddsync dead-letter record; the message names the header."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why and where from a record was dead-lettered: the content of its ``ddsync.*`` headers.

    ``connector_id``/``address_book_id``/``event_id`` are ``None`` when unknown (e.g. the value was
    not JSON). ``failed_at`` must be timezone-aware. ``error_message`` and ``error_code`` are
    redacted and truncated on construction.
    """

    reason: Reason
    error_code: str
    error_message: str
    source_topic: str
    source_partition: int
    source_offset: int
    failed_at: datetime
    attempts: int = 1
    replay_count: int = 0
    connector_id: str | None = None
    address_book_id: int | None = None
    event_id: str | None = None

    def __post_init__(self) -> None:
        if self.failed_at.tzinfo is None:
            raise ValueError("failed_at must be timezone-aware")
        if self.attempts < 0 or self.replay_count < 0:
            raise ValueError("attempts and replay_count must not be negative")
        # Frozen: normalise through object.__setattr__ so no instance can hold a raw message.
        object.__setattr__(self, "reason", Reason(self.reason))
        object.__setattr__(
            self, "error_message", truncate_utf8(redact(self.error_message), MAX_MESSAGE_BYTES)
        )
        object.__setattr__(
            self, "error_code", truncate_utf8(redact(self.error_code), MAX_CODE_BYTES)
        )

    def to_headers(self) -> list[tuple[str, bytes]]:
        """The ``ddsync.*`` headers, in a stable order."""
        pairs: list[tuple[str, str | None]] = [
            (H_REASON, self.reason.value),
            (H_ERROR_CODE, self.error_code),
            (H_ERROR_MESSAGE, self.error_message),
            (H_SOURCE_TOPIC, self.source_topic),
            (H_SOURCE_PARTITION, str(self.source_partition)),
            (H_SOURCE_OFFSET, str(self.source_offset)),
            (H_CONNECTOR_ID, self.connector_id),
            (
                H_ADDRESS_BOOK_ID,
                None if self.address_book_id is None else str(self.address_book_id),
            ),
            (H_EVENT_ID, self.event_id),
            (H_ATTEMPTS, str(self.attempts)),
            (H_FAILED_AT, _format_time(self.failed_at)),
            (H_REPLAY_COUNT, str(self.replay_count)),
        ]
        return [(name, value.encode("utf-8")) for name, value in pairs if value is not None]

    @classmethod
    def from_headers(
        cls, headers: Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None]
    ) -> DeadLetter:
        """Read a dead-letter record's headers (as confluent-kafka returns them, or a mapping).

        Headers other than ``ddsync.*`` are ignored; when a name repeats, the last one wins.
        """
        values = _header_map(headers)

        def required(name: str) -> str:
            value = values.get(name)
            if value is None:
                raise MalformedDeadLetter(f"header {name} is missing")
            return value

        reason_text = required(H_REASON)
        try:
            reason = Reason(reason_text)
        except ValueError:
            raise MalformedDeadLetter(f"header {H_REASON} is unknown: {reason_text!r}") from None
        address_book = values.get(H_ADDRESS_BOOK_ID)
        return cls(
            reason=reason,
            error_code=values.get(H_ERROR_CODE) or "",
            error_message=values.get(H_ERROR_MESSAGE) or "",
            source_topic=required(H_SOURCE_TOPIC),
            source_partition=_int(H_SOURCE_PARTITION, required(H_SOURCE_PARTITION)),
            source_offset=_int(H_SOURCE_OFFSET, required(H_SOURCE_OFFSET)),
            failed_at=_parse_time(required(H_FAILED_AT)),
            attempts=_int(H_ATTEMPTS, values.get(H_ATTEMPTS) or "0"),
            replay_count=_int(H_REPLAY_COUNT, values.get(H_REPLAY_COUNT) or "0"),
            connector_id=values.get(H_CONNECTOR_ID),
            address_book_id=None if address_book is None else _int(H_ADDRESS_BOOK_ID, address_book),
            event_id=values.get(H_EVENT_ID),
        )


def replay_count_of(
    headers: Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None,
) -> int:
    """How often a consumed source record was replayed (0 for an original; never raises)."""
    if not headers:
        return 0
    try:
        value = _header_map(headers).get(H_REPLAY_COUNT)
    except MalformedDeadLetter:  # a producer's stray non-UTF-8 ddsync.* header
        return 0
    try:
        count = int(value) if value is not None else 0
    except ValueError:
        return 0
    return max(count, 0)


def replay_headers(
    dead_letter: DeadLetter,
    original: Iterable[tuple[str, bytes | None]] = (),
) -> list[tuple[str, bytes]]:
    """Headers for re-producing a dead-lettered record to its source topic.

    Keeps ``original`` headers that are not ``ddsync.*`` and adds ``ddsync.replay_count`` =
    ``dead_letter.replay_count + 1`` and ``ddsync.replayed_reason`` = ``dead_letter.reason``.
    Deciding whether to refuse (too many replays) is the replay tool's: refuse when
    ``dead_letter.replay_count`` has reached the setting
    ``dead_letter.max_replays`` (:class:`stream.settings.DeadLetterSettings`).
    """
    kept = [
        (name, value)
        for name, value in original
        if not name.startswith(HEADER_PREFIX) and value is not None
    ]
    kept.append((H_REPLAY_COUNT, str(dead_letter.replay_count + 1).encode("ascii")))
    kept.append((H_REPLAYED_REASON, dead_letter.reason.value.encode("ascii")))
    return kept


def replayed_reason_of(
    headers: Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None,
) -> Reason | None:
    """The reason a consumed record was dead-lettered for before it was replayed; None for an
    original record or an unknown reason (never raises)."""
    if not headers:
        return None
    try:
        value = _header_map(headers).get(H_REPLAYED_REASON)
    except MalformedDeadLetter:
        return None
    try:
        return None if value is None else Reason(value)
    except ValueError:
        return None


def _header_map(
    headers: Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None],
) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    values: dict[str, str] = {}
    for name, raw in items:
        if not name.startswith(HEADER_PREFIX) or raw is None:
            continue
        if isinstance(raw, bytes):
            try:
                values[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedDeadLetter(f"header {name} is not UTF-8") from None
        else:
            values[name] = raw
    return values


def _int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise MalformedDeadLetter(f"header {name} must be an integer, got {text!r}") from None
    if value < 0:
        raise MalformedDeadLetter(f"header {name} must not be negative, got {value}")
    return value


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MalformedDeadLetter(f"header {H_FAILED_AT} is not a timestamp: {text!r}") from None
    if moment.tzinfo is None:
        raise MalformedDeadLetter(f"header {H_FAILED_AT} has no time zone: {text!r}")
    return moment
