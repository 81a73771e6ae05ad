"""The pure part of ``ddsync replay``: the filter, the per-record decision and the report."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from stream.cli.main import build_parser
from stream.cli.replay import _positive_int, build_options
from stream.core.deadletter_format import H_REASON, H_SOURCE_TOPIC, DeadLetter
from stream.core.reasons import Reason
from stream.demo.generator import Target, transition
from stream.replay.decide import (
    DeadLetterRecord,
    Decision,
    ReplayFilter,
    ReplayPlan,
    SourceHistory,
    SourcePartition,
    Verdict,
    contact_of,
    decide,
    supersession,
)
from stream.replay.report import ReplaySummary, Sample, StopReason, format_summary, key_preview
from stream.replay.runner import ReplayOptions, replay_group
from stream.settings import KafkaSettings, Settings

DLQ = "ddsync.dlq"


def letter(**overrides: Any) -> DeadLetter:
    fields: dict[str, Any] = {
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
    return DeadLetter(**fields)


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
        superseded=4,
        unverifiable=1,
        by_reason_and_topic={
            ("retries_exhausted", "journey-transitions"): 1,
            ("contact_rejected", "audience-transitions"): 2,
        },
        samples=(sample(),),
        malformed_samples=("dead-letter [0]@9: header ddsync.reason is missing",),
        unverifiable_samples=("dead-letter [0]@10: audience-transitions[3] cannot be read",),
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
        "unverifiable (skipped), first 1:",
        "  dead-letter [0]@10: audience-transitions[3] cannot be read",
        "dry run: would replay 3, refused (too many replays) 1, skipped by filter 2, malformed 1,"
        " superseded 4, unverifiable 1; nothing produced, no offsets committed",
    ]


@pytest.mark.parametrize(
    ("stopped", "last_line"),
    [
        (
            StopReason.END,
            "replayed 0, refused (too many replays) 0, skipped by filter 0, malformed 0, "
            "superseded 0, unverifiable 0",
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


# -- superseded records: a replay never makes a book older

TOPIC = "audience-transitions"


def event(
    email: str | None = "person@example.com",
    *,
    action: str = "add",
    book: int = 100,
    connector: str = "eu-main",
    profile: str = "profile-1",
) -> bytes:
    return orjson.dumps(
        transition(
            event_id=f"evt-{email}-{action}",
            profile_id=profile,
            email=email,
            target=Target(connector, book),
            action=action,
            occurred_at=datetime(2024, 5, 1, tzinfo=UTC),
        )
    )


def failed(
    offset: int, partition: int = 0, topic: str = TOPIC, replay_count: int = 0
) -> DeadLetter:
    return letter(
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        replay_count=replay_count,
    )


def verdicts(
    source: Mapping[SourcePartition, Mapping[int, bytes | None]],
    letters: Sequence[tuple[DeadLetter, bytes | None]],
    *,
    ends: Mapping[SourcePartition, int] | None = None,
    replay_unverifiable: bool = False,
    compacted: bool = True,
    low: int = 0,
) -> list[Verdict]:
    """What the replay decides, done as the Kafka edge does it: plan from the letters, read each
    planned source partition once from its start to its end (records as ``source`` holds them,
    missing offsets unreadable; ``low`` the low watermark), then decide each letter."""
    plan = ReplayPlan()
    for dead, value in letters:
        contact = contact_of(value)
        if contact is not None:
            plan.add(dead, contact)
    histories: dict[SourcePartition, SourceHistory] = {}
    for where in plan.starts:
        records = source.get(where, {})
        end = (ends or {}).get(where, max(records, default=-1) + 1)
        history = plan.history(where, end)
        history.compacted = compacted
        for offset in sorted(records):
            if history.start <= offset < end:
                history.saw(offset, records[offset])
        history.finish()
        history.gone_below(low)
        histories[where] = history
    return [
        supersession(
            dead,
            contact_of(value),
            histories.get((dead.source_topic, dead.source_partition)),
            replay_unverifiable=replay_unverifiable,
        ).verdict
        for dead, value in letters
    ]


P0 = (TOPIC, 0)


def test_a_newer_transition_of_the_contact_and_book_after_it_supersedes_it() -> None:
    source = {P0: {3: event(), 4: event("other@example.com"), 5: event(action="remove")}}
    assert verdicts(source, [(failed(3), event())]) == [Verdict.SUPERSEDED]


def test_the_superseded_decision_names_the_newer_position_never_a_value() -> None:
    plan = ReplayPlan()
    plan.add(failed(3), ("eu-main", 100, "person@example.com"))
    history = plan.history(P0, 6)
    for offset, value in ((3, event()), (4, event("other@example.com")), (5, event())):
        history.saw(offset, value)
    history.finish()
    decision = supersession(failed(3), contact_of(event()), history)
    assert decision.verdict is Verdict.SUPERSEDED
    assert decision.problem == "a newer transition of its contact is at 5"


@pytest.mark.parametrize(
    "later",
    [
        event("other@example.com"),  # another contact
        event(book=200),  # the same contact in another book
        event(connector="us-main"),  # the same book id in another account
        b"not json",  # not a transition at all
        None,  # a tombstone
    ],
)
def test_records_of_other_contacts_or_books_do_not_supersede(later: bytes | None) -> None:
    source = {P0: {3: event(), 4: later}}
    assert verdicts(source, [(failed(3), event())]) == [Verdict.REPLAY]


def test_only_transitions_after_the_failed_offset_count() -> None:
    source = {P0: {1: event(action="remove"), 2: event(), 3: event("other@example.com")}}
    assert verdicts(source, [(failed(2), event())]) == [Verdict.REPLAY]


def test_contacts_are_compared_as_the_decoder_normalises_them() -> None:
    # Another profile id, another spelling: the same DotDigital contact.
    later = event("  Person@EXAMPLE.com ", action="remove", profile="profile-9")
    source = {P0: {3: event(), 4: later}}
    assert verdicts(source, [(failed(3), event())]) == [Verdict.SUPERSEDED]


def test_when_the_newer_transition_failed_too_the_newer_one_is_replayed() -> None:
    # Both in the same batch of dead letters: the last transition still wins.
    source = {P0: {3: event(), 7: event(action="remove")}}
    letters = [(failed(3), event()), (failed(7), event(action="remove"))]
    assert verdicts(source, letters) == [Verdict.SUPERSEDED, Verdict.REPLAY]


def test_of_a_record_and_its_failed_replay_only_the_latest_in_source_order_is_replayed() -> None:
    # The record failed at 3, was replayed to 9 and failed again; the dead-letter topic holds
    # the later letter first (another dead-letter partition): source order decides.
    source = {P0: {3: event(), 5: event("other@example.com"), 9: event()}}
    letters = [(failed(9, replay_count=1), event()), (failed(3), event())]
    assert verdicts(source, letters) == [Verdict.REPLAY, Verdict.SUPERSEDED]


def test_source_partitions_and_topics_are_independent() -> None:
    # Only the record's own partition orders its contact's transitions.
    source = {
        P0: {3: event()},
        (TOPIC, 1): {1: event(), 2: event(action="remove")},
        ("journey-transitions", 0): {8: event()},
    }
    letters = [
        (failed(3), event()),
        (failed(1, partition=1), event()),
        (failed(8, topic="journey-transitions"), event()),
    ]
    assert verdicts(source, letters) == [Verdict.REPLAY, Verdict.SUPERSEDED, Verdict.REPLAY]


def test_records_gone_after_it_make_it_unverifiable_and_it_is_skipped() -> None:
    # Offset 5 is gone (compaction, retention): it may have been a newer transition.
    source = {P0: {3: event(), 4: event("other@example.com"), 6: event("x@example.com")}}
    assert verdicts(source, [(failed(3), event())]) == [Verdict.UNVERIFIABLE]
    assert verdicts(source, [(failed(3), event())], replay_unverifiable=True) == [Verdict.REPLAY]


def test_records_gone_at_the_end_of_the_partition_count_too() -> None:
    source = {P0: {3: event(), 4: event("other@example.com")}}
    assert verdicts(source, [(failed(3), event())], ends={P0: 9}) == [Verdict.UNVERIFIABLE]


def test_records_gone_before_it_or_its_own_record_gone_do_not_matter() -> None:
    source = {P0: {1: event("a@example.com"), 5: event("b@example.com")}}
    letters = [(failed(4), event()), (failed(1), event("a@example.com"))]
    # 4 itself is gone (and 2-3 before it): nothing after 4 is missing. 1 has 2-4 gone after it.
    assert verdicts(source, letters) == [Verdict.REPLAY, Verdict.UNVERIFIABLE]


def test_a_newer_transition_supersedes_even_when_other_records_are_gone() -> None:
    source = {P0: {3: event(), 7: event(action="remove")}}
    assert verdicts(source, [(failed(3), event())]) == [Verdict.SUPERSEDED]


def test_a_partition_ending_before_the_record_was_recreated_or_truncated() -> None:
    decision = supersession(failed(3), contact_of(event()), history_of(start=3, end=2))
    assert decision.verdict is Verdict.UNVERIFIABLE
    assert decision.problem == (
        f"{TOPIC}[0] ends at offset 2, before the record: the topic was recreated or truncated"
    )


def test_a_recreated_partition_stays_unverifiable_when_it_grows_past_the_record() -> None:
    history = history_of(start=3, end=0)
    history.end = 9  # read again before a later batch: the new topic has grown past 3
    for offset in range(9):
        history.saw(offset, event("other@example.com"))
    history.finish()
    assert supersession(failed(3), contact_of(event()), history).verdict is Verdict.UNVERIFIABLE


def test_an_unreadable_or_unread_partition_is_unverifiable() -> None:
    history = history_of(start=3, end=9)
    history.unreadable = "Broker: Topic authorization failed"
    decision = supersession(failed(3), contact_of(event()), history)
    assert decision.verdict is Verdict.UNVERIFIABLE
    assert decision.problem == f"{TOPIC}[0] cannot be read: Broker: Topic authorization failed"
    assert supersession(failed(3), contact_of(event()), None).verdict is Verdict.UNVERIFIABLE


def test_a_value_that_is_no_transition_touches_no_book_and_is_replayed_unchecked() -> None:
    assert supersession(failed(3), contact_of(b"{}"), None).verdict is Verdict.REPLAY


def test_the_plan_starts_each_partition_at_its_lowest_failed_offset() -> None:
    plan = ReplayPlan()
    for offset, partition in ((9, 0), (4, 0), (7, 0), (2, 1)):
        plan.add(failed(offset, partition=partition), ("eu-main", 100, f"p{offset}@example.com"))
    assert plan.starts == {P0: 4, (TOPIC, 1): 2}
    assert len(plan.contacts[P0]) == 3


def test_a_history_keeps_only_the_contacts_asked_about() -> None:
    plan = ReplayPlan()
    plan.add(failed(0), ("eu-main", 100, "person@example.com"))
    history = plan.history(P0, 1001)
    for offset in range(1000):
        history.saw(offset, event(f"someone-{offset}@example.com"))
    history.saw(1000, event())
    assert history.latest == {("eu-main", 100, "person@example.com"): 1000}


def history_of(start: int, end: int) -> SourceHistory:
    return SourceHistory(start, end, frozenset())


def test_in_a_topic_that_is_not_compacted_skipped_offsets_are_markers_not_lost_records() -> None:
    # Offsets 5 and 8-9 have no record: transaction markers, since only compaction removes
    # records after the head.
    source = {P0: {3: event(), 4: event("other@example.com"), 6: event("x@example.com")}}
    letters = [(failed(3), event())]
    assert verdicts(source, letters, ends={P0: 10}, compacted=False) == [Verdict.REPLAY]


def test_records_deleted_at_the_head_count_whether_compacted_or_not() -> None:
    # Retention deleted everything below 5; the record at 3 may have had newer ones at 4.
    source = {P0: {5: event("other@example.com")}}
    letters = [(failed(3), event()), (failed(5), event("other@example.com"))]
    for compacted in (True, False):
        assert verdicts(source, letters, compacted=compacted, low=5) == [
            Verdict.UNVERIFIABLE,
            Verdict.REPLAY,
        ]
