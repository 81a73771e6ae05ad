"""The pure part of ``ddsync replay``: the filter, the per-record decision and the report."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from stream.cli import build_parser
from stream.commands.replay import _positive_int, build_options
from stream.config import KafkaSettings, Settings
from stream.deadletter_headers import H_REASON, H_SOURCE_TOPIC, DeadLetter, Reason
from stream.replay import (
    DeadLetterRecord,
    Decision,
    ReplayFilter,
    ReplayOptions,
    ReplaySummary,
    Sample,
    StopReason,
    Verdict,
    decide,
    format_summary,
    key_preview,
    replay_group,
)

DLQ = "ddsync.dlq"


def letter(**overrides: object) -> DeadLetter:
    fields: dict[str, object] = {
        "reason": Reason.RETRIES_EXHAUSTED,
        "error_code": "HTTP_503",
        "error_message": "person@example.com: service unavailable",
        "source_topic": "audience-transitions",
        "source_partition": 2,
        "source_offset": 41,
        "failed_at": datetime(2024, 5, 1, tzinfo=UTC),
        "replay_count": 0,
        "connector_id": "eu-main",
        "address_book_id": 100,
    }
    fields.update(overrides)
    return DeadLetter(**fields)  # type: ignore[arg-type]


def headers(**overrides: object) -> list[tuple[str, bytes | str | None]]:
    return [("traceparent", b"x"), *letter(**overrides).to_headers()]


# -- ReplayFilter


def test_an_empty_filter_matches_everything() -> None:
    assert ReplayFilter().matches(letter())
    assert ReplayFilter().matches(letter(connector_id=None, address_book_id=None))
    assert ReplayFilter().describe() == "all records"


@pytest.mark.parametrize(
    ("record_filter", "expected"),
    [
        (ReplayFilter(reasons=frozenset({Reason.RETRIES_EXHAUSTED})), True),
        (ReplayFilter(reasons=frozenset({Reason.AUTH_FAILED, Reason.RETRIES_EXHAUSTED})), True),
        (ReplayFilter(reasons=frozenset({Reason.AUTH_FAILED})), False),
        (ReplayFilter(connector_ids=frozenset({"eu-main"})), True),
        (ReplayFilter(connector_ids=frozenset({"us-main"})), False),
        (ReplayFilter(address_book_ids=frozenset({100, 200})), True),
        (ReplayFilter(address_book_ids=frozenset({200})), False),
        (ReplayFilter(source_topics=frozenset({"audience-transitions"})), True),
        (ReplayFilter(source_topics=frozenset({"journey-transitions"})), False),
        # Criteria combine with AND.
        (
            ReplayFilter(
                reasons=frozenset({Reason.RETRIES_EXHAUSTED}), connector_ids=frozenset({"x"})
            ),
            False,
        ),
        (
            ReplayFilter(
                reasons=frozenset({Reason.RETRIES_EXHAUSTED}),
                connector_ids=frozenset({"eu-main"}),
                address_book_ids=frozenset({100}),
                source_topics=frozenset({"audience-transitions"}),
            ),
            True,
        ),
    ],
)
def test_filter_criteria(record_filter: ReplayFilter, expected: bool) -> None:
    assert record_filter.matches(letter()) is expected


def test_unknown_connector_or_book_never_matches_a_criterion_on_them() -> None:
    unknown = letter(connector_id=None, address_book_id=None)
    assert not ReplayFilter(connector_ids=frozenset({"eu-main"})).matches(unknown)
    assert not ReplayFilter(address_book_ids=frozenset({100})).matches(unknown)


def test_filter_describes_itself_sorted() -> None:
    described = ReplayFilter(
        reasons=frozenset({Reason.RETRIES_EXHAUSTED, Reason.AUTH_FAILED}),
        address_book_ids=frozenset({7}),
    ).describe()
    assert described == "reason in {auth_failed, retries_exhausted}, address book in {7}"


# -- decide


def test_a_chosen_record_below_max_replays_is_replayed() -> None:
    decision = decide(headers(replay_count=2), ReplayFilter(), 3, DLQ)
    assert decision.verdict is Verdict.REPLAY
    assert decision.letter == letter(replay_count=2)


@pytest.mark.parametrize("count", [3, 4, 100])
def test_a_record_at_or_past_max_replays_is_refused(count: int) -> None:
    assert decide(headers(replay_count=count), ReplayFilter(), 3, DLQ).verdict is Verdict.REFUSED


def test_the_filter_comes_before_the_guard() -> None:
    # A record the operator did not choose is "skipped by filter", however often it was replayed.
    only_auth = ReplayFilter(reasons=frozenset({Reason.AUTH_FAILED}))
    assert decide(headers(replay_count=9), only_auth, 3, DLQ).verdict is Verdict.FILTERED


@pytest.mark.parametrize(
    ("record_headers", "problem"),
    [
        (None, "header ddsync.reason is missing"),
        ([], "header ddsync.reason is missing"),
        ([("traceparent", b"x")], "header ddsync.reason is missing"),
        ([*headers(), (H_REASON, b"nope")], "header ddsync.reason is unknown: 'nope'"),
        ([*headers(), ("ddsync.source_offset", b"-1")], "must not be negative"),
        ([*headers(), ("ddsync.failed_at", b"yesterday")], "is not a timestamp"),
        ([*headers(), ("ddsync.source_topic", b"\xff")], "is not UTF-8"),
        ([*headers(), (H_SOURCE_TOPIC, b"")], "header ddsync.source_topic is empty"),
        ([*headers(), (H_SOURCE_TOPIC, DLQ.encode())], "source topic is the dead-letter topic"),
        # Too large for the dead-letter topic, it was written without its value.
        ([*headers(), ("ddsync.value_omitted", b"too large")], "written without its value"),
    ],
)
def test_malformed_records_are_named_never_raised(
    record_headers: list[tuple[str, bytes | str | None]] | None, problem: str
) -> None:
    decision = decide(record_headers, ReplayFilter(), 3, DLQ)
    assert decision.verdict is Verdict.MALFORMED
    assert decision.problem is not None
    assert problem in decision.problem


# -- report


def test_key_preview_is_bounded_and_safe() -> None:
    assert key_preview(None) == "(none)"
    assert key_preview(b"profile-1") == "'profile-1'"
    assert key_preview(b"\xffab") == "'\ufffdab'"
    long = key_preview(b"k" * 500)
    assert len(long) < 80
    assert long.endswith("…'")


def sample() -> Sample:
    return Sample(
        dead_letter_partition=0,
        dead_letter_offset=12,
        source_topic="audience-transitions",
        source_partition=3,
        source_offset=41,
        reason="contact_rejected",
        error_code="ERROR_CONTACT_INVALID",
        replay_count=1,
        key="'profile-1'",
    )


def test_dry_run_report_lists_counts_samples_and_totals() -> None:
    summary = ReplaySummary(
        dry_run=True,
        group="ddsync.replay",
        stopped=StopReason.END,
        replayed=3,
        refused=1,
        filtered=2,
        malformed=1,
        by_reason_and_topic={
            ("retries_exhausted", "journey-transitions"): 1,
            ("contact_rejected", "audience-transitions"): 2,
        },
        samples=(sample(),),
        malformed_samples=("dead-letter [0]@9: header ddsync.reason is missing",),
    )
    assert format_summary(summary) == [
        "would replay by reason and source topic:",
        "  contact_rejected -> audience-transitions: 2",
        "  retries_exhausted -> journey-transitions: 1",
        "first 1 to replay:",
        "  audience-transitions[3]@41 reason=contact_rejected code=ERROR_CONTACT_INVALID "
        "key='profile-1' replays=1 (dead-letter [0]@12)",
        "malformed (skipped), first 1:",
        "  dead-letter [0]@9: header ddsync.reason is missing",
        "dry run: would replay 3, refused (too many replays) 1, skipped by filter 2, malformed 1;"
        " nothing produced, no offsets committed",
    ]


@pytest.mark.parametrize(
    ("stopped", "last_line"),
    [
        (
            StopReason.END,
            "replayed 0, refused (too many replays) 0, skipped by filter 0, malformed 0",
        ),
        (StopReason.LIMIT, "stopped at --limit; run again to continue where this run stopped"),
        (StopReason.INTERRUPTED, "interrupted; run again to continue where this run stopped"),
        (StopReason.FAILED, "stopped by an error; fix it and run again to continue"),
    ],
)
def test_real_run_report_says_how_it_stopped(stopped: StopReason, last_line: str) -> None:
    summary = ReplaySummary(dry_run=False, group="g", stopped=stopped, samples=(sample(),))
    lines = format_summary(summary)
    assert lines[-1] == last_line
    # Samples are the dry run's; a real run reports counts only.
    assert not any("profile-1" in line for line in lines)


# -- options and arguments


def test_options_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="group"):
        ReplayOptions(group="")
    with pytest.raises(ValueError, match="limit"):
        ReplayOptions(group="g", limit=0)


def test_default_group_is_derived_from_the_pipeline_group() -> None:
    settings = Settings(kafka=KafkaSettings("localhost:9092", group_id="ddsync-eu"), connectors={})
    assert replay_group(settings) == "ddsync-eu.replay"
    assert replay_group(settings, "incident-42") == "incident-42"


def test_positive_int_argument() -> None:
    assert _positive_int("5") == 5
    for bad in ("0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"integer|at least"):
            _positive_int(bad)


def test_records_know_where_they_are() -> None:
    assert DeadLetterRecord(partition=2, offset=7, key=None, value=None).where == (
        "dead-letter [2]@7"
    )
    assert Decision(Verdict.FILTERED).letter is None


def test_arguments_become_options() -> None:
    settings = Settings(kafka=KafkaSettings("localhost:9092"), connectors={})
    args = build_parser().parse_args(
        ["replay", "--config", "x.toml", "--reason", "auth_failed", "--reason", "import_failed",
         "--connector", "eu-main", "--address-book", "5", "--address-book", "6",
         "--source-topic", "t", "--dry-run", "--limit", "10"]
    )  # fmt: skip
    assert build_options(settings, args) == ReplayOptions(
        group="ddsync.replay",
        record_filter=ReplayFilter(
            reasons=frozenset({Reason.AUTH_FAILED, Reason.IMPORT_FAILED}),
            connector_ids=frozenset({"eu-main"}),
            address_book_ids=frozenset({5, 6}),
            source_topics=frozenset({"t"}),
        ),
        dry_run=True,
        limit=10,
    )
    plain = build_options(settings, build_parser().parse_args(["replay", "--config", "x"]))
    assert plain == ReplayOptions(group="ddsync.replay")


def test_unknown_reason_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["replay", "--config", "x", "--reason", "bogus"])
    assert exit_.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
