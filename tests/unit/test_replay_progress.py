"""Replay progress and the JSON report (stream/replay/report.py), on a fake clock."""

from __future__ import annotations

import io

import orjson

from stream.clock import FakeClock
from stream.progress import ProgressReporter
from stream.replay.report import (
    ReplayProgress,
    ReplaySummary,
    Sample,
    StopReason,
    summary_json,
)


def test_progress_describes_counts_and_share_of_the_backlog() -> None:
    assert (
        ReplayProgress(1200, 5000, 900, 300).describe()
        == "1200 / 5000 records (24%): replayed 900, skipped 300"
    )
    assert ReplayProgress(3, 3, 0, 3, dry_run=True).describe() == (
        "3 / 3 records (100%): would replay 0, skipped 3"
    )
    assert ReplayProgress(0, 0, 0, 0).percent == 100


def test_without_a_terminal_a_line_every_interval_at_most() -> None:
    clock, out = FakeClock(), io.StringIO()
    reporter = ProgressReporter(out, clock, tty=False, every=5.0)
    reporter.update(ReplayProgress(10, 100, 10, 0))  # at the start: nothing yet
    clock.advance(5.0)
    reporter.update(ReplayProgress(50, 100, 40, 10))
    clock.advance(4.9)
    reporter.update(ReplayProgress(60, 100, 50, 10))  # too soon after the last line
    clock.advance(0.1)
    reporter.update(ReplayProgress(70, 100, 60, 10))
    reporter.finish()
    assert out.getvalue().splitlines() == [
        "replay: 50 / 100 records (50%): replayed 40, skipped 10",
        "replay: 70 / 100 records (70%): replayed 60, skipped 10",
    ]


def test_on_a_terminal_a_bar_redrawn_in_place_and_ended_by_finish() -> None:
    clock, out = FakeClock(), io.StringIO()
    reporter = ProgressReporter(out, clock, tty=True, redraw=0.2)
    clock.advance(0.2)
    reporter.update(ReplayProgress(25, 100, 25, 0))
    clock.advance(0.1)
    reporter.update(ReplayProgress(30, 100, 30, 0))  # within the redraw interval
    clock.advance(0.15)
    reporter.update(ReplayProgress(100, 100, 90, 10))
    reporter.finish()
    reporter.finish()  # once only
    text = out.getvalue()
    assert "\n" not in text[:-1]
    assert text.endswith("\n")
    frames = text[:-1].split("\r")[1:]
    assert len(frames) == 2
    assert frames[0].startswith("[" + "#" * 7 + "." * 23 + "] 25 / 100 records (25%)")
    assert frames[1].startswith("[" + "#" * 30 + "] 100 / 100 records (100%): replayed 90")


def test_nothing_drawn_means_finish_writes_nothing() -> None:
    out = io.StringIO()
    ProgressReporter(out, FakeClock(), tty=True).finish()
    assert out.getvalue() == ""


def test_summary_json_is_one_object_with_counts_groups_and_samples() -> None:
    sample = Sample(0, 4, "audience", 1, 17, "auth_failed", "ERROR_X", 1, "'profile-1'")
    summary = ReplaySummary(
        dry_run=True,
        group="g",
        stopped=StopReason.LIMIT,
        replayed=2,
        refused=1,
        filtered=3,
        malformed=0,
        superseded=5,
        unverifiable=4,
        by_reason_and_topic={("auth_failed", "journey"): 1, ("auth_failed", "audience"): 1},
        samples=(sample,),
    )
    value = orjson.loads(orjson.dumps(summary_json(summary)))
    assert value == {
        "dry_run": True,
        "group": "g",
        "stopped": "limit",
        "error": None,
        "replayed": 2,
        "refused": 1,
        "filtered": 3,
        "malformed": 0,
        "superseded": 5,
        "unverifiable": 4,
        "by_reason_and_topic": [
            {"reason": "auth_failed", "source_topic": "audience", "count": 1},
            {"reason": "auth_failed", "source_topic": "journey", "count": 1},
        ],
        "samples": [
            {
                "dead_letter_partition": 0,
                "dead_letter_offset": 4,
                "source_topic": "audience",
                "source_partition": 1,
                "source_offset": 17,
                "reason": "auth_failed",
                "error_code": "ERROR_X",
                "replay_count": 1,
                "key": "'profile-1'",
            }
        ],
        "malformed_samples": [],
        "unverifiable_samples": [],
    }
    assert summary_json(summary, "it broke")["error"] == "it broke"
