from __future__ import annotations

from stream.clock import FakeClock
from stream.core.lag import PartitionLag, PartitionProgress, partition_lag, progress_of
from stream.core.offsets import OffsetTracker, RecordRef

TP = ("t", 0)
IDLE = ("t", 1)


def test_read_lag_is_what_is_not_read_and_commit_lag_what_is_read_but_not_final() -> None:
    assert partition_lag(end=120, position=100, committable=90) == PartitionLag(read=20, commit=10)
    assert partition_lag(end=100, position=100, committable=100) == PartitionLag(0, 0)


def test_an_unknown_position_has_no_lag_and_unknown_others_claim_none() -> None:
    assert partition_lag(end=100, position=None, committable=None) is None
    assert partition_lag(end=100, position=-1001, committable=None) is None  # OFFSET_INVALID
    assert partition_lag(end=None, position=50, committable=40) == PartitionLag(0, 10)
    assert partition_lag(end=-1001, position=50, committable=None) == PartitionLag(0, 0)


def test_lag_is_never_negative() -> None:
    # The position read after the high watermark can already be past it.
    assert partition_lag(end=90, position=100, committable=101) == PartitionLag(0, 0)


def test_progress_is_the_committable_offset_and_the_oldest_open_age() -> None:
    clock = FakeClock()
    tracker = OffsetTracker(clock)
    tracker.assign(TP)
    tracker.assign(IDLE)
    tracker.consumed(RecordRef("t", 0, 7))
    clock.advance(4)
    tracker.consumed(RecordRef("t", 0, 8))
    clock.advance(2.5)
    assert progress_of(tracker, clock) == {
        TP: PartitionProgress(committable=7, oldest_open_age=6.5),
        IDLE: PartitionProgress(committable=None, oldest_open_age=0.0),
    }
    tracker.finished(RecordRef("t", 0, 7))
    tracker.finished(RecordRef("t", 0, 8))
    assert progress_of(tracker, clock)[TP] == PartitionProgress(9, 0.0)
