from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.deadletter_format import (
    HEADER_NAMES,
    MAX_CODE_BYTES,
    MAX_MESSAGE_BYTES,
    DeadLetter,
    MalformedDeadLetter,
    replay_count_of,
    replay_headers,
    replayed_reason_of,
    truncate_utf8,
)
from stream.core.reasons import Reason
from stream.redaction import redact

FAILED_AT = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def make(**overrides: Any) -> DeadLetter:
    fields: dict[str, Any] = {
        "reason": Reason.CONTACT_REJECTED,
        "error_code": "ERROR_CONTACT_INVALID",
        "error_message": "email address is not valid",
        "source_topic": "audience-transitions",
        "source_partition": 3,
        "source_offset": 41,
        "failed_at": FAILED_AT,
        "attempts": 2,
        "replay_count": 1,
        "connector_id": "eu-main",
        "address_book_id": 123,
        "event_id": "evt-1",
    }
    fields.update(overrides)
    return DeadLetter(**fields)


def test_reason_values_are_the_documented_strings() -> None:
    assert {r.value for r in Reason} == {
        "invalid_event",
        "missing_identifier",
        "unknown_connector",
        "contact_rejected",
        "address_book_not_found",
        "retries_exhausted",
        "auth_failed",
        "connector_suspended",
        "removal_guard",
        "import_failed",
        "removal_failed",
        "internal_error",
    }


def test_headers_have_stable_prefixed_names_and_utf8_values() -> None:
    headers = dict(make().to_headers())
    assert set(headers) == set(HEADER_NAMES)
    assert all(name.startswith("ddsync.") for name in headers)
    assert headers["ddsync.reason"] == b"contact_rejected"
    assert headers["ddsync.source_topic"] == b"audience-transitions"
    assert headers["ddsync.source_partition"] == b"3"
    assert headers["ddsync.source_offset"] == b"41"
    assert headers["ddsync.address_book_id"] == b"123"
    assert headers["ddsync.attempts"] == b"2"
    assert headers["ddsync.replay_count"] == b"1"
    assert headers["ddsync.failed_at"] == b"2024-05-01T12:30:15.123456Z"


def test_round_trip() -> None:
    original = make()
    assert DeadLetter.from_headers(original.to_headers()) == original


def test_round_trip_without_optional_fields() -> None:
    original = make(
        reason=Reason.INVALID_EVENT, connector_id=None, address_book_id=None, event_id=None
    )
    headers = dict(original.to_headers())
    assert "ddsync.connector_id" not in headers
    assert "ddsync.address_book_id" not in headers
    assert DeadLetter.from_headers(original.to_headers()) == original


def test_failed_at_is_written_in_utc() -> None:
    local = FAILED_AT.astimezone(timezone(timedelta(hours=2)))
    headers = dict(make(failed_at=local).to_headers())
    assert headers["ddsync.failed_at"] == b"2024-05-01T12:30:15.123456Z"


def test_from_headers_ignores_foreign_headers_and_accepts_a_mapping() -> None:
    headers = [("traceparent", b"00-abc"), ("other", None), *make().to_headers()]
    assert DeadLetter.from_headers(headers) == make()
    assert DeadLetter.from_headers(dict(make().to_headers())) == make()


@pytest.mark.parametrize(
    ("drop", "replace", "named"),
    [
        ("ddsync.reason", None, "ddsync.reason"),
        ("ddsync.source_topic", None, "ddsync.source_topic"),
        (None, ("ddsync.reason", b"nope"), "ddsync.reason"),
        (None, ("ddsync.source_offset", b"x1"), "ddsync.source_offset"),
        (None, ("ddsync.source_offset", b"-1"), "ddsync.source_offset"),
        (None, ("ddsync.failed_at", b"yesterday"), "ddsync.failed_at"),
        (None, ("ddsync.failed_at", b"2024-05-01T12:00:00"), "ddsync.failed_at"),
        (None, ("ddsync.source_topic", b"\xff"), "ddsync.source_topic"),
    ],
)
def test_malformed_headers_name_the_header(
    drop: str | None, replace: tuple[str, bytes] | None, named: str
) -> None:
    headers = [(n, v) for n, v in make().to_headers() if n != drop]
    if replace is not None:
        headers = [(n, replace[1] if n == replace[0] else v) for n, v in headers]
    with pytest.raises(MalformedDeadLetter, match=named):
        DeadLetter.from_headers(headers)


def test_naive_failed_at_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        make(failed_at=datetime(2024, 5, 1, 12, 0))


def test_message_is_truncated_to_its_bound() -> None:
    dead = make(error_message="é" * 5000, error_code="X" * 1000)
    assert len(dead.error_message.encode()) <= MAX_MESSAGE_BYTES
    assert dead.error_message.endswith("…")
    assert len(dead.error_code.encode()) <= MAX_CODE_BYTES


def test_truncate_keeps_short_text_and_never_splits_a_character() -> None:
    assert truncate_utf8("short", 10) == "short"
    cut = truncate_utf8("€" * 10, 10)  # 3 bytes each
    assert len(cut.encode()) <= 10
    assert cut == "€€…"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("request failed: headers={'Authorization': 'Basic dXNlcjpzM2NyZXQ='}", "dXNlcjpzM2NyZXQ="),
        ("Authorization: Basic dXNlcjpzM2NyZXQ=\r\nHost: r1-api", "dXNlcjpzM2NyZXQ="),
        ('{"authorization": "Bearer abc.def.ghi"}', "abc.def.ghi"),
        ("curl -H 'authorization: basic Zm9vOmJhcg=='", "Zm9vOmJhcg=="),
        ("sent Basic Zm9vOmJhcg== to server", "Zm9vOmJhcg=="),
        ("login with password=hunter2&user=x", "hunter2"),
        ('{"password": "hunter2"}', "hunter2"),
        ("Password: hunter2", "hunter2"),
        ("api_key=k-123456 rejected", "k-123456"),
        ("GET https://apiuser:hunter2@r1-api.dotdigital.com/v2/account-info", "hunter2"),
    ],
)
def test_redact_strips_credentials(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert "***" in cleaned


def test_redact_keeps_ordinary_text() -> None:
    text = "Contact jane@example.com rejected: ERROR_CONTACT_INVALID (basic validation failed)"
    assert redact(text) == text


def test_redact_removes_known_secret_values() -> None:
    assert redact("the sandbox echoed s3cr3t-value back", secrets=["s3cr3t-value", ""]) == (
        "the sandbox echoed *** back"
    )


def test_dead_letter_never_holds_a_credential() -> None:
    dead = make(error_message="401 for Authorization: Basic dXNlcjpzM2NyZXQ=")
    assert "dXNlcjpzM2NyZXQ=" not in dead.error_message
    assert b"dXNlcjpzM2NyZXQ=" not in b"".join(v for _, v in dead.to_headers())


def test_replay_headers_increment_the_count_and_keep_foreign_headers() -> None:
    dead = make(replay_count=2)
    original = [("traceparent", b"00-abc"), ("ddsync.reason", b"contact_rejected")]
    headers = replay_headers(dead, original)
    assert headers == [
        ("traceparent", b"00-abc"),
        ("ddsync.replay_count", b"3"),
        ("ddsync.replayed_reason", dead.reason.value.encode()),
    ]
    assert replay_count_of(headers) == 3
    assert replayed_reason_of(headers) is dead.reason


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (None, None),
        ([("traceparent", b"x")], None),
        ([("ddsync.replayed_reason", b"removal_guard")], Reason.REMOVAL_GUARD),
        ([("ddsync.replayed_reason", "removal_guard")], Reason.REMOVAL_GUARD),
        ([("ddsync.replayed_reason", b"no_such_reason")], None),
        ([("ddsync.replayed_reason", b"\xff")], None),
    ],
)
def test_replayed_reason_is_read_back_and_never_raises(
    headers: list[tuple[str, bytes | str | None]] | None, reason: Reason | None
) -> None:
    assert replayed_reason_of(headers) is reason


@pytest.mark.parametrize(
    ("headers", "count"),
    [
        (None, 0),
        ([], 0),
        ([("traceparent", b"x")], 0),
        ([("ddsync.replay_count", b"2")], 2),
        ([("ddsync.replay_count", b"junk")], 0),
        ([("ddsync.replay_count", b"-4")], 0),
    ],
)
def test_replay_count_of_a_source_record(
    headers: list[tuple[str, bytes | None]] | None, count: int
) -> None:
    assert replay_count_of(headers) == count


@settings(max_examples=50, deadline=None)
@given(
    message=st.text(max_size=300),
    code=st.text(max_size=40),
    partition=st.integers(0, 10_000),
    offset=st.integers(0, 2**63 - 1),
    attempts=st.integers(0, 100),
    replays=st.integers(0, 100),
)
def test_round_trip_property(
    message: str, code: str, partition: int, offset: int, attempts: int, replays: int
) -> None:
    dead = make(
        error_message=message,
        error_code=code,
        source_partition=partition,
        source_offset=offset,
        attempts=attempts,
        replay_count=replays,
    )
    assert DeadLetter.from_headers(dead.to_headers()) == dead


def test_redact_catches_a_bare_basic_credential_without_digits() -> None:
    # base64("user:pass") has no digit or padding, only mixed case.
    assert redact("sent Basic dXNlcjpwYXNz upstream") == "sent Basic *** upstream"
