"""The event contract, version 1: decoding a Kafka record value into a :class:`Transition`.

The contract is documented for producers in ``stream/schemas/transition-v1.schema.json``; this
module is its fast runtime check (hand-written, no JSON Schema engine on the hot path).

Contract:

* :func:`decode_transition` either returns a :class:`Transition` whose every field is valid, or
  raises :class:`InvalidRecord`; it never raises anything else, whatever the bytes.
* ``InvalidRecord.reason`` is one of :data:`DECODE_REASONS`, checked in this order:

  1. :attr:`Reason.INVALID_EVENT` -- no value (a tombstone), not JSON, not an object, a field
     missing or of the wrong type, an unknown ``kind``/``action``, an ``occurred_at`` that is not
     an RFC 3339 date-time with an offset (or one that is out of range in UTC), an
     ``address_book_id`` that is not an integer from 1 to 2^31-1 (DotDigital's list ids are
     int32; ``true`` is not an integer; ``12.0`` is, as in JSON Schema).
  2. :attr:`Reason.MISSING_IDENTIFIER` -- ``profile.partner_ids."34"`` missing, not a string,
     blank, longer than 254 characters (SMTP's limit on an address), or not shaped like an email
     address (``local@domain``, no whitespace inside).
  3. :attr:`Reason.UNKNOWN_CONNECTOR` -- ``connector_id`` is not in the configured connectors.

  ``InvalidRecord.detail`` is one human-readable sentence naming the field. ``event_id``,
  ``connector_id`` and ``address_book_id`` on the exception carry whatever of them was readable,
  for the dead-letter headers.
* :attr:`Transition.email` is normalised (surrounding whitespace stripped, lower-cased): DotDigital
  treats email addresses case-insensitively, so coalescing by email is coalescing by contact.
* :attr:`Transition.occurred_at` is timezone-aware (the offset given in the record is kept).
* Unknown fields anywhere are ignored (forward compatibility).

Where the JSON Schema and this decoder differ, by necessity: the schema cannot know which
connectors are configured; it cannot say *which* reason a rejection gets; and its ``pattern``
keywords follow ECMA-262 regular expressions, whose ``\\s`` differs from Python's ``str.strip``
in a few exotic code points. Day-of-month validity is checked by the schema only when a
validator asserts ``format: date-time`` (the ``pattern`` alone accepts ``2024-02-30``), and
the schema cannot say that a date-time at the edge of year 1 or 9999 must still be one in UTC.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, TypeVar

import orjson

from stream.core.reasons import Reason

__all__ = [
    "DECODE_REASONS",
    "DOTDIGITAL_PARTNER_ID",
    "Action",
    "InvalidRecord",
    "Kind",
    "Reason",
    "Transition",
    "decode_transition",
]

# DotDigital's slot among the platform's partner ids; its value is the contact's email address.
DOTDIGITAL_PARTNER_ID: Final = "34"

DECODE_REASONS: Final = frozenset(
    {Reason.INVALID_EVENT, Reason.MISSING_IDENTIFIER, Reason.UNKNOWN_CONNECTOR}
)

# Same expression as the schema's "pattern" (ASCII digits: Python's \d would take any script's).
# Leap seconds are refused, as JSON Schema's date-time format checkers do.
_RFC3339: Final = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[Tt]"
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
# Deliberately loose: DotDigital is the authority on addresses and rejects per contact; this only
# keeps values that cannot be an address (blank, no "@", inner spaces) out of a batch.
_EMAIL: Final = re.compile(r"\S+@[^\s@]+")
# SMTP's limit on a path (RFC 5321 4.5.3.1.3); counted on the value as written, as the schema's
# maxLength does.
MAX_EMAIL_LENGTH: Final = 254
# DotDigital's list (address book) ids are int32 in its API ("Immutable unique list ID").
MAX_ADDRESS_BOOK_ID: Final = 2**31 - 1


class Action(StrEnum):
    ADD = "add"
    REMOVE = "remove"


class Kind(StrEnum):
    AUDIENCE = "audience"
    JOURNEY = "journey"


@dataclass(frozen=True, slots=True)
class Transition:
    """One profile entering (``ADD``) or leaving (``REMOVE``) an audience or journey step."""

    event_id: str
    kind: Kind
    source_id: str
    action: Action
    occurred_at: datetime
    connector_id: str
    address_book_id: int
    profile_id: str
    email: str


class InvalidRecord(Exception):
    """A record that can never be synced; it goes to the DLQ with :attr:`reason`."""

    def __init__(
        self,
        reason: Reason,
        detail: str,
        *,
        event_id: str | None = None,
        connector_id: str | None = None,
        address_book_id: int | None = None,
    ) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.event_id = event_id
        self.connector_id = connector_id
        self.address_book_id = address_book_id


class _Reject(Exception):
    """Internal: carries a rejection up to decode_transition, which adds the readable fields."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def decode_transition(value: bytes | None, connectors: Container[str]) -> Transition:
    """Decode and validate one record value; raise :class:`InvalidRecord` if it is unusable."""
    if value is None:
        raise InvalidRecord(Reason.INVALID_EVENT, "the record has no value (a tombstone)")
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(Reason.INVALID_EVENT, f"the value is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRecord(
            Reason.INVALID_EVENT, f"the value must be a JSON object, got {_json_type(document)}"
        )
    transition = _parse_valid(document)
    if transition is None:
        # Something is off: the field-by-field parse finds what, and says so.
        try:
            transition = _parse(document)
        except _Reject as rejected:
            raise InvalidRecord(rejected.reason, rejected.detail, **_readable(document)) from None
    if transition.connector_id not in connectors:
        raise InvalidRecord(
            Reason.UNKNOWN_CONNECTOR,
            f"connector_id {transition.connector_id!r} is not a configured connector",
            event_id=transition.event_id,
            connector_id=transition.connector_id,
            address_book_id=transition.address_book_id,
        )
    return transition


_KINDS: Final = {member.value: member for member in Kind}
_ACTIONS: Final = {member.value: member for member in Action}


def _parse_valid(document: dict[str, Any]) -> Transition | None:
    """The common case in one pass: the :class:`Transition` when every field is valid in its
    usual JSON form, else ``None``, and :func:`_parse` decides (it also accepts the rarer forms,
    such as an ``address_book_id`` of ``12.0``, and names what is wrong).

    Accepts nothing :func:`_parse` rejects and returns what it would: the checks are the same,
    written with exact types (orjson only makes plain ``str``, ``int``, ``dict``; ``bool`` is
    not ``int`` here), enum look-ups in dicts instead of calls, and no exception on the way.
    """
    get = document.get
    event_id = get("event_id")
    source_id = get("source_id")
    connector_id = get("connector_id")
    address_book_id = get("address_book_id")
    occurred = get("occurred_at")
    kind = get("kind")
    action = get("action")
    profile = get("profile")
    if not (
        type(event_id) is str
        and event_id
        and type(source_id) is str
        and source_id
        and type(connector_id) is str
        and connector_id
        and type(address_book_id) is int
        and 0 < address_book_id <= MAX_ADDRESS_BOOK_ID
        and type(kind) is str
        and type(action) is str
        and type(occurred) is str
        and type(profile) is dict
    ):
        return None
    kind_member = _KINDS.get(kind)
    action_member = _ACTIONS.get(action)
    profile_id = profile.get("id")
    partner_ids = profile.get("partner_ids")
    if (
        kind_member is None
        or action_member is None
        or type(profile_id) is not str
        or not profile_id
        or type(partner_ids) is not dict
    ):
        return None
    raw_email = partner_ids.get(DOTDIGITAL_PARTNER_ID)
    if type(raw_email) is not str or len(raw_email) > MAX_EMAIL_LENGTH:
        return None
    email = raw_email.strip()
    if not email or not _EMAIL.fullmatch(email) or not _RFC3339.fullmatch(occurred):
        return None
    try:
        occurred_at = datetime.fromisoformat(occurred.upper())
    except ValueError:
        return None
    if occurred_at.year in _EDGE_YEARS:
        return None
    return Transition(
        event_id=event_id,
        kind=kind_member,
        source_id=source_id,
        action=action_member,
        occurred_at=occurred_at,
        connector_id=connector_id,
        address_book_id=address_book_id,
        profile_id=profile_id,
        email=email.lower(),
    )


def _parse(document: Mapping[str, Any]) -> Transition:
    event_id = _string(document, "event_id", "event_id")
    kind = _enum(document, "kind", Kind)
    source_id = _string(document, "source_id", "source_id")
    action = _enum(document, "action", Action)
    occurred_at = _timestamp(document.get("occurred_at", _MISSING))
    connector_id = _string(document, "connector_id", "connector_id")
    address_book_id = _address_book_id(document.get("address_book_id", _MISSING))
    profile = document.get("profile", _MISSING)
    if profile is _MISSING:
        raise _Reject(Reason.INVALID_EVENT, "profile is missing")
    if not isinstance(profile, dict):
        raise _Reject(Reason.INVALID_EVENT, f"profile must be an object, got {_json_type(profile)}")
    profile_id = _string(profile, "id", "profile.id")
    # Only after the whole shape is valid: a bad record is invalid_event whatever its identifier.
    email = _email(profile.get("partner_ids", _MISSING))
    return Transition(
        event_id=event_id,
        kind=kind,
        source_id=source_id,
        action=action,
        occurred_at=occurred_at,
        connector_id=connector_id,
        address_book_id=address_book_id,
        profile_id=profile_id,
        email=email,
    )


_MISSING: Final[Any] = object()
# A date-time in these years may not exist in UTC (9999-12-31T23:59-01:00): checked slowly.
_EDGE_YEARS: Final = frozenset({1, 9999})
E = TypeVar("E", bound=StrEnum)


def _string(document: Mapping[str, Any], key: str, name: str) -> str:
    value = document.get(key, _MISSING)
    if value is _MISSING:
        raise _Reject(Reason.INVALID_EVENT, f"{name} is missing")
    if not isinstance(value, str) or not value:
        raise _Reject(
            Reason.INVALID_EVENT, f"{name} must be a non-empty string, got {_show(value)}"
        )
    return value


def _enum(document: Mapping[str, Any], key: str, kind: type[E]) -> E:
    value = document.get(key, _MISSING)
    if value is _MISSING:
        raise _Reject(Reason.INVALID_EVENT, f"{key} is missing")
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    allowed = " or ".join(repr(member.value) for member in kind)
    raise _Reject(Reason.INVALID_EVENT, f"{key} must be {allowed}, got {_show(value)}")


def _timestamp(value: Any) -> datetime:
    if value is _MISSING:
        raise _Reject(Reason.INVALID_EVENT, "occurred_at is missing")
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        try:
            # fromisoformat takes "Z" but not a lower-case "t"/"z", which RFC 3339 allows.
            parsed = datetime.fromisoformat(value.upper())
            if parsed.year in _EDGE_YEARS:
                parsed.astimezone(UTC)  # any comparison or conversion would overflow later
            return parsed
        except (ValueError, OverflowError):
            pass  # e.g. 2024-02-30 or year 0: the pattern cannot know
    raise _Reject(
        Reason.INVALID_EVENT,
        f"occurred_at must be an RFC 3339 date-time with an offset, got {_show(value)}",
    )


def _address_book_id(value: Any) -> int:
    if value is _MISSING:
        raise _Reject(Reason.INVALID_EVENT, "address_book_id is missing")
    # bool is an int subclass in Python but not an integer in JSON.
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ADDRESS_BOOK_ID:
        return value
    # JSON Schema counts 12.0 as an integer; so do we, to agree with the published schema.
    if isinstance(value, float) and value.is_integer() and 0 < value <= MAX_ADDRESS_BOOK_ID:
        return int(value)
    raise _Reject(
        Reason.INVALID_EVENT,
        f"address_book_id must be an integer from 1 to {MAX_ADDRESS_BOOK_ID} (a DotDigital "
        f"list id), got {_show(value)}",
    )


def _email(partner_ids: Any) -> str:
    name = f'profile.partner_ids."{DOTDIGITAL_PARTNER_ID}"'
    if partner_ids is _MISSING or partner_ids is None:
        raise _Reject(Reason.MISSING_IDENTIFIER, f"{name} is missing: profile has no partner_ids")
    if not isinstance(partner_ids, dict):
        raise _Reject(
            Reason.MISSING_IDENTIFIER,
            f"{name} is missing: profile.partner_ids must be an object, "
            f"got {_json_type(partner_ids)}",
        )
    value = partner_ids.get(DOTDIGITAL_PARTNER_ID, _MISSING)
    if value is _MISSING or value is None:
        raise _Reject(Reason.MISSING_IDENTIFIER, f"{name} (the DotDigital email) is missing")
    if not isinstance(value, str):
        raise _Reject(
            Reason.MISSING_IDENTIFIER, f"{name} must be an email string, got {_show(value)}"
        )
    if len(value) > MAX_EMAIL_LENGTH:
        raise _Reject(
            Reason.MISSING_IDENTIFIER,
            f"{name} is not an email address: longer than {MAX_EMAIL_LENGTH} characters",
        )
    email = value.strip()
    if not email:
        raise _Reject(Reason.MISSING_IDENTIFIER, f"{name} (the DotDigital email) is empty")
    if not _EMAIL.fullmatch(email):
        raise _Reject(
            Reason.MISSING_IDENTIFIER, f"{name} is not an email address, got {_show(value)}"
        )
    return email.lower()


def _readable(document: Mapping[str, Any]) -> dict[str, Any]:
    """Whatever of the routing fields is usable, for the dead-letter headers of a rejection."""
    readable: dict[str, Any] = {}
    event_id = document.get("event_id")
    if isinstance(event_id, str) and event_id:
        readable["event_id"] = event_id
    connector_id = document.get("connector_id")
    if isinstance(connector_id, str) and connector_id:
        readable["connector_id"] = connector_id
    address_book_id = document.get("address_book_id")
    if type(address_book_id) is int and 0 < address_book_id <= MAX_ADDRESS_BOOK_ID:
        readable["address_book_id"] = address_book_id
    return readable


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _show(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    if isinstance(value, dict | list):
        return _json_type(value)
    text = "null" if value is None else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
