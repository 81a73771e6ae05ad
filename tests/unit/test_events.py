from __future__ import annotations

import copy
import json
from collections.abc import Container
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core import events
from stream.core.events import (
    DECODE_REASONS,
    Action,
    InvalidRecord,
    Kind,
    Reason,
    Transition,
    decode_transition,
)

CONNECTORS = frozenset({"eu-main", "us-main"})
BOOK_ID_RULE = "address_book_id must be an integer from 1 to 2147483647 (a DotDigital list id),"


def record(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "event_id": "evt-1",
        "kind": "audience",
        "source_id": "aud-1",
        "action": "add",
        "occurred_at": "2024-05-01T12:30:15.123Z",
        "connector_id": "eu-main",
        "address_book_id": 123,
        "profile": {"id": "prof-1", "partner_ids": {"34": "Jane.Doe@Example.com"}},
    }
    value.update(overrides)
    return value


def with_partner_ids(partner_ids: Any) -> dict[str, Any]:
    return record(profile={"id": "prof-1", "partner_ids": partner_ids})


def decode(value: Any, connectors: frozenset[str] = CONNECTORS) -> Transition:
    return decode_transition(orjson.dumps(value), connectors)


def outcome(raw: bytes | None, connectors: Container[str]) -> tuple[Reason | None, str]:
    """The decoder's verdict: (None, "") when accepted, else the reason and detail."""
    try:
        decode_transition(raw, connectors)
    except InvalidRecord as error:
        return error.reason, error.detail
    return None, ""


def rejection(value: Any, connectors: frozenset[str] = CONNECTORS) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as caught:
        decode(value, connectors)
    return caught.value


# --- accepted records ------------------------------------------------------------------------


def test_a_valid_record_decodes_to_a_transition() -> None:
    transition = decode(record())
    assert transition == Transition(
        event_id="evt-1",
        kind=Kind.AUDIENCE,
        source_id="aud-1",
        action=Action.ADD,
        occurred_at=datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC),
        connector_id="eu-main",
        address_book_id=123,
        profile_id="prof-1",
        email="jane.doe@example.com",
    )


def test_email_is_stripped_and_lower_cased() -> None:
    assert decode(with_partner_ids({"34": "  JANE@Example.COM\n"})).email == "jane@example.com"


def test_timestamp_keeps_its_offset_and_accepts_lower_case_separators() -> None:
    moment = decode(record(occurred_at="2024-05-01t14:30:15+02:00")).occurred_at
    assert moment.utcoffset() == timedelta(hours=2)
    assert moment == datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)
    assert decode(record(occurred_at="2024-05-01T12:30:15z")).occurred_at.tzinfo is not None
    assert decode(record(occurred_at="2024-05-01T12:30:15.1234567-05:00")).occurred_at == (
        datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-5)))
    )


def test_journey_remove() -> None:
    transition = decode(record(kind="journey", action="remove"))
    assert (transition.kind, transition.action) == (Kind.JOURNEY, Action.REMOVE)


def test_unknown_fields_are_ignored() -> None:
    value = record(schema_version=2, extra={"nested": [1, 2]})
    value["profile"]["traits"] = {"tier": "gold"}
    value["profile"]["partner_ids"]["12"] = "crm-991"
    assert decode(value).email == "jane.doe@example.com"


def test_integral_float_address_book_is_an_integer_as_in_json_schema() -> None:
    assert decode(record(address_book_id=123.0)).address_book_id == 123


# --- invalid_event ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (None, "tombstone"),
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "must be a JSON object, got an array"),
        (b'"text"', "must be a JSON object, got a string"),
        (b"null", "must be a JSON object, got null"),
    ],
)
def test_values_that_are_not_an_object_are_invalid(raw: bytes | None, detail: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        decode_transition(raw, CONNECTORS)
    assert caught.value.reason is Reason.INVALID_EVENT
    assert detail in caught.value.detail


@pytest.mark.parametrize(
    "field", ["event_id", "kind", "source_id", "action", "occurred_at", "connector_id", "profile"]
)
def test_a_missing_field_is_invalid_and_named(field: str) -> None:
    value = record()
    del value[field]
    error = rejection(value)
    assert error.reason is Reason.INVALID_EVENT
    assert error.detail == f"{field} is missing"


def test_missing_address_book_and_profile_id_are_named() -> None:
    value = record()
    del value["address_book_id"]
    assert rejection(value).detail == "address_book_id is missing"
    assert rejection(record(profile={"partner_ids": {"34": "a@b"}})).detail == (
        "profile.id is missing"
    )


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"event_id": 7}, "event_id must be a non-empty string, got 7"),
        ({"event_id": ""}, "event_id must be a non-empty string, got ''"),
        ({"source_id": None}, "source_id must be a non-empty string, got null"),
        ({"connector_id": ["eu-main"]}, "connector_id must be a non-empty string, got an array"),
        ({"kind": "segment"}, "kind must be 'audience' or 'journey', got 'segment'"),
        ({"kind": "Audience"}, "kind must be 'audience' or 'journey', got 'Audience'"),
        ({"action": "delete"}, "action must be 'add' or 'remove', got 'delete'"),
        ({"action": 1}, "action must be 'add' or 'remove', got 1"),
        (
            {"address_book_id": "12"},
            BOOK_ID_RULE + " got '12'",
        ),
        (
            {"address_book_id": True},
            BOOK_ID_RULE + " got True",
        ),
        (
            {"address_book_id": 0},
            BOOK_ID_RULE + " got 0",
        ),
        (
            {"address_book_id": -5},
            BOOK_ID_RULE + " got -5",
        ),
        (
            {"address_book_id": 12.5},
            BOOK_ID_RULE + " got 12.5",
        ),
        (
            {"address_book_id": None},
            BOOK_ID_RULE + " got null",
        ),
        ({"profile": "prof-1"}, "profile must be an object, got a string"),
        ({"profile": {"id": 5, "partner_ids": {"34": "a@b"}}}, "profile.id must be a non-empty"),
    ],
)
def test_wrong_types_and_values_are_invalid(overrides: dict[str, Any], detail: str) -> None:
    error = rejection(record(**overrides))
    assert error.reason is Reason.INVALID_EVENT
    assert error.detail.startswith(detail), error.detail


@pytest.mark.parametrize(
    "timestamp",
    [
        "2024-05-01T12:30:15",  # no offset: not RFC 3339, and not timezone-aware
        "2024-05-01 12:30:15Z",  # space separator
        "2024-05-01",
        "2024-02-30T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T23:59:60Z",  # leap second, refused like JSON Schema's date-time checkers
        "0000-01-01T00:00:00Z",
        "2024-05-01T12:30:15+0200",
        "20240501T123015Z",
        "2024-05-01T12:30:15Z\n",
        "\uff12\uff10\uff12\uff14-05-01T12:30:15Z",  # full-width digits
        "",
        1714566615,
    ],
)
def test_bad_timestamps_are_invalid(timestamp: Any) -> None:
    error = rejection(record(occurred_at=timestamp))
    assert error.reason is Reason.INVALID_EVENT
    assert error.detail.startswith("occurred_at must be an RFC 3339 date-time")


def test_a_shape_error_wins_over_identifier_and_connector() -> None:
    value = record(action="toggle", connector_id="nowhere", profile={"id": "p", "partner_ids": {}})
    assert rejection(value).reason is Reason.INVALID_EVENT


# --- missing_identifier ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "detail"),
    [
        ({"id": "p"}, "profile has no partner_ids"),
        ({"id": "p", "partner_ids": None}, "profile has no partner_ids"),
        ({"id": "p", "partner_ids": ["a@b"]}, "partner_ids must be an object, got an array"),
        ({"id": "p", "partner_ids": {}}, "is missing"),
        ({"id": "p", "partner_ids": {"12": "a@b"}}, "is missing"),
        ({"id": "p", "partner_ids": {"34": None}}, "is missing"),
        ({"id": "p", "partner_ids": {"34": ""}}, "is empty"),
        ({"id": "p", "partner_ids": {"34": "   "}}, "is empty"),
        ({"id": "p", "partner_ids": {"34": 34}}, "must be an email string, got 34"),
        ({"id": "p", "partner_ids": {"34": {"email": "a@b"}}}, "must be an email string"),
        ({"id": "p", "partner_ids": {"34": "jane.example.com"}}, "is not an email address"),
        ({"id": "p", "partner_ids": {"34": "@example.com"}}, "is not an email address"),
        ({"id": "p", "partner_ids": {"34": "jane@"}}, "is not an email address"),
        ({"id": "p", "partner_ids": {"34": "jane doe@example.com"}}, "is not an email address"),
    ],
)
def test_an_unusable_dotdigital_identifier_is_missing_identifier(
    profile: dict[str, Any], detail: str
) -> None:
    error = rejection(record(profile=profile))
    assert error.reason is Reason.MISSING_IDENTIFIER
    assert error.detail.startswith('profile.partner_ids."34"')
    assert detail in error.detail


def test_missing_identifier_wins_over_unknown_connector() -> None:
    value = record(connector_id="nowhere", profile={"id": "p", "partner_ids": {}})
    assert rejection(value).reason is Reason.MISSING_IDENTIFIER


# --- unknown_connector -----------------------------------------------------------------------


def test_an_unconfigured_connector_is_unknown_connector() -> None:
    error = rejection(record(connector_id="ap-main"))
    assert error.reason is Reason.UNKNOWN_CONNECTOR
    assert error.detail == "connector_id 'ap-main' is not a configured connector"
    assert decode(record(connector_id="ap-main"), frozenset({"ap-main"})).connector_id == "ap-main"


# --- what the dead-letter code gets ----------------------------------------------------------


def test_rejections_carry_the_readable_routing_fields() -> None:
    error = rejection(record(connector_id="ap-main"))
    assert (error.event_id, error.connector_id, error.address_book_id) == ("evt-1", "ap-main", 123)
    error = rejection(record(action="toggle"))
    assert (error.event_id, error.connector_id, error.address_book_id) == ("evt-1", "eu-main", 123)
    error = rejection(record(address_book_id="12", event_id=None))
    assert (error.event_id, error.connector_id, error.address_book_id) == (None, "eu-main", None)
    assert str(error).startswith("invalid_event: ")


def test_decode_reasons_are_dead_letter_reasons() -> None:
    assert {Reason.INVALID_EVENT, Reason.MISSING_IDENTIFIER, Reason.UNKNOWN_CONNECTOR} == set(
        DECODE_REASONS
    )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_invalid_record(raw: bytes) -> None:
    reason, _ = outcome(raw, CONNECTORS)
    assert reason is None or reason in DECODE_REASONS


# --- the published JSON Schema and the decoder agree -----------------------------------------


def load_schema() -> dict[str, Any]:
    text = (resources.files("stream") / "schemas" / "transition-v1.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


SCHEMA = load_schema()
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def test_schema_is_valid_draft_2020_12_and_its_examples_decode() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"]
    for example in SCHEMA["examples"]:
        VALIDATOR.validate(example)
        decode(example)


INTERESTING_VALUES: st.SearchStrategy[Any] = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        1,
        -1,
        123,
        1.0,
        1.5,
        2**53,
        "",
        " ",
        "12",
        "add",
        "remove",
        "audience",
        "journey",
        "eu-main",
        "a@b",
        " A@B.com ",
        "a b@c",
        "@c",
        "a@",
        "a@b@c",
        "no-at-sign",
        "2024-05-01T12:30:15Z",
        "2024-05-01t12:30:15.5+05:30",
        "2024-02-29T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2024-05-01T12:30:15",
        "2024-05-01T23:59:60Z",
        "2024-05-01T12:30:15+24:00",
        [],
        {},
        {"34": "a@b"},
        {"34": ""},
        {"id": "p", "partner_ids": {"34": "a@b"}},
        {"id": "p"},
        {"id": "", "partner_ids": {"34": "a@b"}},
    ]
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
JSON_VALUES = st.one_of(
    INTERESTING_VALUES,
    JSON_SCALARS,
    st.lists(JSON_SCALARS, max_size=2),
    st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2),
)
PATHS = st.sampled_from(
    [
        ("event_id",),
        ("kind",),
        ("source_id",),
        ("action",),
        ("occurred_at",),
        ("connector_id",),
        ("address_book_id",),
        ("profile",),
        ("profile", "id"),
        ("profile", "partner_ids"),
        ("profile", "partner_ids", "34"),
        ("unknown",),
        ("profile", "unknown"),
        ("profile", "partner_ids", "12"),
    ]
)
# A mutation deletes the field (...) or sets it to a value (None included).
MUTATIONS = st.lists(st.tuples(PATHS, st.one_of(st.none(), st.just(...), JSON_VALUES)), max_size=3)


def mutate(value: dict[str, Any], mutations: list[tuple[tuple[str, ...], Any]]) -> Any:
    value = copy.deepcopy(value)
    for path, new in mutations:
        parent: Any = value
        for key in path[:-1]:
            if not isinstance(parent, dict) or key not in parent:
                break
            parent = parent[key]
        else:
            if not isinstance(parent, dict):
                continue
            if new is ...:
                parent.pop(path[-1], None)
            else:
                # A copy: a later mutation may walk into this value, and writing into
                # hypothesis's own object could make it contain itself.
                parent[path[-1]] = copy.deepcopy(new)
    return value


def schema_reason(value: Any) -> Reason | None:
    """The reason the decoder should give, judging by where the schema's errors are."""
    errors = list(VALIDATOR.iter_errors(value))
    if not errors:
        return None
    identifier = ("profile", "partner_ids")
    for error in errors:
        path = tuple(error.absolute_path)
        # "profile is missing partner_ids" is reported at profile, naming the property.
        missing_partner_ids = (
            path == ("profile",)
            and error.validator == "required"
            and "'partner_ids'" in error.message
            and "'id'" not in error.message
        )
        if path[:2] != identifier and not missing_partner_ids:
            return Reason.INVALID_EVENT
    return Reason.MISSING_IDENTIFIER


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=MUTATIONS)
def test_decoder_and_schema_agree(mutations: list[tuple[tuple[str, ...], Any]]) -> None:
    """Accept/reject agree, and the reason follows where the schema finds the problem.

    The decoder is given every connector here: the schema cannot know which are configured.
    Known, untested difference: jsonschema runs patterns with Python's ``re``, whose ``$`` also
    matches before a final newline (ECMA-262's does not), so it would accept a timestamp ending
    in "\\n" that the decoder rightly refuses; no mutation here produces one.
    """
    value = mutate(record(), mutations)
    expected = schema_reason(value)
    reason, detail = outcome(orjson.dumps(value), _Everything())
    assert reason is expected, (detail, expected)


class _Everything:
    def __contains__(self, item: object) -> bool:
        return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=MUTATIONS)
def test_the_one_pass_check_accepts_only_what_the_field_by_field_parse_accepts(
    mutations: list[tuple[tuple[str, ...], Any]],
) -> None:
    """The decoder tries a one-pass check first and falls back to the field-by-field parse:
    whatever the one-pass check accepts, the parse must accept, giving the same transition."""
    value = mutate(record(), mutations)
    if not isinstance(value, dict):
        return
    quick = events._parse_valid(value)
    try:
        thorough: Transition | None = events._parse(value)
    except events._Reject:
        thorough = None
    assert quick is None or quick == thorough
    if quick is not None:
        assert type(quick.kind) is Kind
        assert type(quick.action) is Action


def test_the_one_pass_check_takes_the_usual_record_and_leaves_rare_forms_to_the_parse() -> None:
    assert events._parse_valid(record()) == events._parse(record())
    # 12.0 is an integer to JSON Schema: the parse accepts it, the one-pass check defers.
    assert events._parse_valid(record(address_book_id=123.0)) is None
    assert decode(record(address_book_id=123.0)).address_book_id == 123


# --- hostile values: rejected as invalid records, never passed on to fail later ---------------

INT32_MAX = 2**31 - 1


@pytest.mark.parametrize(
    "literal",
    [
        *(b"1e300", b"18446744073709551615", b"9223372036854775807", b"2147483648"),
        *(b"2147483648.0", b"12.5", b"-1", b"0", b"-0.0", b"true", b'"12"'),
    ],
)
def test_an_address_book_id_dotdigital_cannot_have_is_an_invalid_event(literal: bytes) -> None:
    # DotDigital's list ids are int32 (the lists API: "Immutable unique list ID", format int32).
    raw = orjson.dumps(record()).replace(b'"address_book_id":123', b'"address_book_id":' + literal)
    with pytest.raises(InvalidRecord) as error:
        decode_transition(raw, CONNECTORS)
    assert error.value.reason is Reason.INVALID_EVENT
    assert "address_book_id must be an integer from 1 to 2147483647" in error.value.detail
    assert error.value.address_book_id is None


def test_the_largest_int32_address_book_id_is_accepted() -> None:
    assert decode(record(address_book_id=INT32_MAX)).address_book_id == INT32_MAX
    assert decode(record(address_book_id=float(INT32_MAX))).address_book_id == INT32_MAX


@pytest.mark.parametrize("email", ["a" * 250 + "@b.cd", " " + "a" * 251 + "@b.c"])
def test_an_email_longer_than_an_address_can_be_is_missing_identifier(email: str) -> None:
    # SMTP caps a path at 254 characters; anything longer is not an address, and would be sent
    # to DotDigital in a URL (the contact look-up) before being refused there.
    reason, detail = outcome(orjson.dumps(with_partner_ids({"34": email})), CONNECTORS)
    assert reason is Reason.MISSING_IDENTIFIER
    assert "longer than 254 characters" in detail
    assert (
        outcome(orjson.dumps(with_partner_ids({"34": "a" * 250 + "@b.c"})), CONNECTORS)[0] is None
    )


@pytest.mark.parametrize("timestamp", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_a_timestamp_outside_the_representable_range_in_utc_is_invalid(timestamp: str) -> None:
    reason, detail = outcome(orjson.dumps(record(occurred_at=timestamp)), CONNECTORS)
    assert reason is Reason.INVALID_EVENT
    assert "occurred_at" in detail


def test_deep_and_huge_json_is_an_invalid_event() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert outcome(deep, CONNECTORS)[0] is Reason.INVALID_EVENT
    nested = record(profile={"id": "p", "partner_ids": {"34": "a@b.c"}, "x": 1})
    raw = orjson.dumps(nested).replace(b'"x":1', b'"x":' + b"[" * 2000 + b"]" * 2000)
    assert outcome(raw, CONNECTORS)[0] is Reason.INVALID_EVENT
    huge_int = orjson.dumps(record()).replace(
        b'"address_book_id":123', b'"address_book_id":' + b"9" * 5000
    )
    assert outcome(huge_int, CONNECTORS)[0] is Reason.INVALID_EVENT


# Any JSON: hypothesis builds documents of every shape, mixing in values near the valid ones.
ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.sampled_from(
        ["add", "remove", "audience", "journey", "eu-main", "a@b.c", "2024-05-01T12:30:15Z"]
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=5) | st.sampled_from(list(record())), children, max_size=6
        )
    ),
    max_leaves=30,
)


def _as_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        # nan, inf, integers past 64 bits: orjson will not write them; the standard library does.
        return json.dumps(value).encode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=2000),
        ANY_JSON.map(_as_bytes),
        st.lists(st.tuples(PATHS, ANY_JSON), max_size=4).map(
            lambda m: _as_bytes(mutate(record(), m))
        ),
    )
)
def test_any_value_decodes_to_a_valid_transition_or_raises_invalid_record(raw: bytes) -> None:
    rejected: InvalidRecord | None
    try:
        transition = decode_transition(raw, _Everything())
    except InvalidRecord as invalid:
        rejected = invalid
    else:
        rejected = None
    if rejected is not None:
        assert rejected.reason in DECODE_REASONS
        assert rejected.detail
        assert rejected.address_book_id is None or 0 < rejected.address_book_id <= INT32_MAX
        return
    assert 0 < transition.address_book_id <= INT32_MAX
    assert type(transition.address_book_id) is int
    assert 0 < len(transition.email) <= 254
    transition.occurred_at.astimezone(UTC)
    for text in (
        transition.event_id,
        transition.profile_id,
        transition.email,
        transition.connector_id,
    ):
        text.encode("utf-8")  # goes into dead-letter headers and HTTP bodies
