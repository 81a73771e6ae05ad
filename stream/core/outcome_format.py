"""The outcomes topic's records: the final outcome of one contact of one address book.

ddsync knows each contact's outcome before it commits the records behind it; the outcomes topic
keeps the latest one per contact and book (a compacted topic), for ``ddsync reconcile`` and for
anyone asking what became of a contact. The JSON Schema, for readers, is
``stream/schemas/outcome-v1.schema.json``.

Contract:

* Key: the UTF-8 JSON array ``[connector, address_book_id, email]``, email normalised as the
  event contract normalises it, so compaction keeps one record per contact and book. Value:
  a JSON object (:meth:`Outcome.to_json`), ``"schema": "ddsync.outcome/1"``.
* ``state`` says where the contact stands in the book after this outcome: ``member``,
  ``not_member``, ``dead_lettered`` (with ``reason``: the transition did not reach DotDigital),
  or, for a connector in shadow mode, ``would_add`` / ``would_remove`` (nothing was sent).
* :meth:`Outcome.expected_member` is what the stream says the book should hold: True for
  ``member`` and ``would_add``, False for ``not_member`` and ``would_remove``, None for a
  dead-lettered contact (its transition waits in the dead-letter topic; replaying it decides).
* :func:`decode` reads what :meth:`Outcome.encode` wrote (the round trip is exact) and raises
  :class:`MalformedOutcome` for anything else; a reader skips such a record and says so.
* Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import orjson

__all__ = ["SCHEMA", "MalformedOutcome", "Outcome", "Reported", "State", "decode", "key_of"]

SCHEMA: Final = "ddsync.outcome/1"


class State(StrEnum):
    MEMBER = "member"
    NOT_MEMBER = "not_member"
    DEAD_LETTERED = "dead_lettered"
    WOULD_ADD = "would_add"
    WOULD_REMOVE = "would_remove"


class Reported(StrEnum):
    """What DotDigital reported for the contact."""

    CREATED = "created"  # the import created the contact
    UPDATED = "updated"  # the import found it and put it in the book
    REMOVED = "removed"
    NOT_FOUND = "not_found"  # not in the book (or unknown): its membership was gone already
    REJECTED = "rejected"  # DotDigital refused the contact
    NOT_SENT = "not_sent"  # nothing reached DotDigital (a failure, shadow mode)


class MalformedOutcome(ValueError):
    """A record of the outcomes topic that ddsync did not write (or a future schema)."""


@dataclass(frozen=True)
class Outcome:
    connector: str
    address_book_id: int
    email: str
    action: str  # "add" or "remove": the transition's
    state: State
    reported: Reported
    decided_at: datetime
    origin: str = "stream"  # "stream" (ddsync run) or "reconcile" (a repair)
    reason: str | None = None
    contact_id: int | None = None
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    event_id: str | None = None
    occurred_at: datetime | None = None

    @property
    def key(self) -> bytes:
        return key_of(self.connector, self.address_book_id, self.email)

    @property
    def expected_member(self) -> bool | None:
        if self.state in (State.MEMBER, State.WOULD_ADD):
            return True
        if self.state in (State.NOT_MEMBER, State.WOULD_REMOVE):
            return False
        return None

    def to_json(self) -> dict[str, Any]:
        source = (
            None
            if self.source_topic is None
            else {
                "topic": self.source_topic,
                "partition": self.source_partition,
                "offset": self.source_offset,
            }
        )
        return {
            "schema": SCHEMA,
            "connector": self.connector,
            "address_book_id": self.address_book_id,
            "email": self.email,
            "action": self.action,
            "state": self.state.value,
            "reason": self.reason,
            "contact_id": self.contact_id,
            "reported": self.reported.value,
            "origin": self.origin,
            "source": source,
            "event_id": self.event_id,
            "occurred_at": None if self.occurred_at is None else _time(self.occurred_at),
            "decided_at": _time(self.decided_at),
        }

    def encode(self) -> bytes:
        return orjson.dumps(self.to_json())


def key_of(connector: str, address_book_id: int, email: str) -> bytes:
    return orjson.dumps([connector, address_book_id, email])


def decode(value: bytes | None) -> Outcome:
    """The outcome a record's value holds; :class:`MalformedOutcome` if it is not one."""
    if value is None:
        raise MalformedOutcome("no value (a tombstone)")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise MalformedOutcome(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise MalformedOutcome(f"not a {SCHEMA} record")
    try:
        source = data["source"]
        occurred = data["occurred_at"]
        outcome = Outcome(
            connector=_typed(data["connector"], str),
            address_book_id=_typed(data["address_book_id"], int),
            email=_typed(data["email"], str),
            action=_typed(data["action"], str),
            state=State(data["state"]),
            reported=Reported(data["reported"]),
            decided_at=_parse_time(data["decided_at"]),
            origin=_typed(data["origin"], str),
            reason=_optional(data["reason"], str),
            contact_id=_optional(data["contact_id"], int),
            source_topic=None if source is None else _typed(source["topic"], str),
            source_partition=None if source is None else _typed(source["partition"], int),
            source_offset=None if source is None else _typed(source["offset"], int),
            event_id=_optional(data["event_id"], str),
            occurred_at=None if occurred is None else _parse_time(occurred),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedOutcome(f"{type(exc).__name__}: {exc}") from None
    return outcome


def _typed(value: Any, kind: type) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    return value


def _optional(value: Any, kind: type) -> Any:
    return None if value is None else _typed(value, kind)


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_time(text: Any) -> datetime:
    moment = datetime.fromisoformat(_typed(text, str))
    if moment.tzinfo is None:
        raise ValueError(f"time without a zone: {text!r}")
    return moment
