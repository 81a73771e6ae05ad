from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from stream.clock import FakeClock
from stream.core.offsets import STAMP_RESOLUTION, OffsetTracker, RecordRef

TP = ("audience-transitions", 0)
OTHER = ("audience-transitions", 1)


def ref(offset: int, tp: tuple[str, int] = TP) -> RecordRef:
    return RecordRef(tp[0], tp[1], offset)


def tracker_with(*offsets: int) -> OffsetTracker:
    tracker = OffsetTracker()
    tracker.assign(TP)
    for offset in offsets:
        assert tracker.consumed(ref(offset))
    return tracker


def test_record_ref_is_hashable_ordered_and_names_its_partition() -> None:
    assert ref(5) == RecordRef("audience-transitions", 0, 5)
    assert len({ref(5), ref(5), ref(6)}) == 2
    assert sorted([ref(7), ref(3)]) == [ref(3), ref(7)]
    assert ref(5).tp == TP
    assert str(ref(5)) == "audience-transitions[0]@5"


def test_nothing_to_commit_before_anything_is_consumed() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP)
    assert tracker.committable() == {}
    assert tracker.position(TP) is None


def test_position_is_the_lowest_open_record() -> None:
    tracker = tracker_with(10, 11, 12)
    assert tracker.committable() == {TP: 10}
    tracker.finished(ref(11))
    assert tracker.committable() == {TP: 10}
    tracker.finished(ref(10))
    assert tracker.committable() == {TP: 12}


def test_position_is_next_offset_when_nothing_is_open() -> None:
    tracker = tracker_with(10, 11)
    tracker.finished(ref(11))
    tracker.finished(ref(10))
    assert tracker.committable() == {TP: 12}
    assert tracker.open_records == 0


def test_gaps_in_offsets_are_fine() -> None:
    tracker = tracker_with(3, 7, 20)
    tracker.finished(ref(3))
    assert tracker.committable() == {TP: 7}
    tracker.finished(ref(7))
    tracker.finished(ref(20))
    assert tracker.committable() == {TP: 21}


def test_committable_only_returns_partitions_that_moved() -> None:
    tracker = tracker_with(0, 1)
    tracker.assign(OTHER)
    tracker.consumed(ref(50, OTHER))
    first = tracker.committable()
    assert first == {TP: 0, OTHER: 50}
    tracker.mark_committed(first)
    assert tracker.committable() == {}
    tracker.finished(ref(0))
    assert tracker.committable() == {TP: 1}


def test_a_failed_commit_is_offered_again() -> None:
    tracker = tracker_with(0)
    tracker.finished(ref(0))
    assert tracker.committable() == {TP: 1}
    # the pipeline did not call mark_committed: the commit failed
    assert tracker.committable() == {TP: 1}


def test_committable_can_be_narrowed_to_some_partitions() -> None:
    tracker = tracker_with(0)
    tracker.assign(OTHER)
    tracker.consumed(ref(9, OTHER))
    assert tracker.committable([OTHER, ("unknown", 0)]) == {OTHER: 9}


def test_finished_is_idempotent_and_ignores_unknown_records() -> None:
    tracker = tracker_with(0, 1)
    tracker.finished(ref(0))
    tracker.finished(ref(0))
    tracker.finished(ref(99))  # never consumed
    tracker.finished(ref(0, ("elsewhere", 3)))  # never assigned
    assert tracker.open_records == 1
    assert tracker.committable() == {TP: 1}


def test_consumed_refuses_old_offsets_and_unowned_partitions() -> None:
    tracker = tracker_with(5)
    assert not tracker.consumed(ref(5))
    assert not tracker.consumed(ref(4))
    assert not tracker.consumed(ref(0, OTHER))
    assert tracker.open_records == 1
    assert tracker.consumed(ref(6))


def test_revoked_partitions_are_never_committed_and_late_finishes_are_ignored() -> None:
    tracker = tracker_with(0, 1)
    tracker.assign(OTHER)
    tracker.consumed(ref(0, OTHER))
    tracker.revoke(TP)
    assert tracker.open_records == 1
    tracker.finished(ref(0))  # an HTTP call completing after the rebalance
    assert tracker.committable() == {OTHER: 0}
    tracker.mark_committed({TP: 2})
    assert TP not in tracker.committable()
    assert not tracker.owns(TP)
    assert tracker.owned == frozenset({OTHER})
    tracker.revoke(TP)  # twice: harmless


def test_a_reassigned_partition_starts_afresh() -> None:
    tracker = tracker_with(0, 1)
    tracker.mark_committed({TP: 0})
    tracker.revoke(TP)
    tracker.assign(TP)
    assert tracker.committable() == {}
    assert tracker.consumed(ref(0))  # the new assignment reads from the committed offset again
    tracker.finished(ref(1))  # stale: offset 1 is not open in this assignment
    assert tracker.committable() == {TP: 0}


def test_assign_twice_keeps_state() -> None:
    tracker = tracker_with(0)
    tracker.assign(TP)
    assert tracker.is_open(ref(0))
    assert tracker.open_in(TP) == 1


def test_a_hundred_thousand_open_records_finished_from_the_top() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP)
    for offset in range(100_000):
        tracker.consumed(ref(offset))
    # finish from the top down: the worst case for the front of the deque
    for offset in range(99_999, -1, -1):
        tracker.finished(ref(offset))
        if offset % 10_000 == 0:
            tracker.committable()
    assert tracker.committable() == {TP: 100_000}
    assert tracker.open_records == 0


def test_oldest_open_since_is_when_the_lowest_open_record_was_consumed() -> None:
    clock = FakeClock()
    tracker = OffsetTracker(clock)
    tracker.assign(TP)
    assert tracker.oldest_open_since(TP) is None
    start = clock.monotonic()
    tracker.consumed(ref(10))
    clock.advance(5)
    tracker.consumed(ref(11))
    tracker.consumed(ref(12))
    clock.advance(5)
    tracker.consumed(ref(13))
    assert tracker.oldest_open_since(TP) == start
    tracker.finished(ref(11))  # not the lowest: the oldest stays
    assert tracker.oldest_open_since(TP) == start
    tracker.finished(ref(10))
    assert tracker.oldest_open_since(TP) == start + 5  # 12, read with 11
    tracker.finished(ref(12))
    assert tracker.oldest_open_since(TP) == start + 10
    tracker.finished(ref(13))
    assert tracker.oldest_open_since(TP) is None
    clock.advance(1)
    tracker.consumed(ref(14))
    assert tracker.oldest_open_since(TP) == start + 11


def test_oldest_open_since_is_forgotten_on_revoke_and_unknown_for_others() -> None:
    clock = FakeClock()
    tracker = OffsetTracker(clock)
    tracker.assign(TP)
    tracker.consumed(ref(0))
    assert tracker.oldest_open_since(OTHER) is None
    tracker.revoke(TP)
    assert tracker.oldest_open_since(TP) is None
    clock.advance(3)
    tracker.assign(TP)
    tracker.consumed(ref(0))
    assert tracker.oldest_open_since(TP) == clock.monotonic()


def test_records_read_within_the_resolution_share_a_stamp_dated_no_later() -> None:
    clock = FakeClock()
    tracker = OffsetTracker(clock)
    tracker.assign(TP)
    start = clock.monotonic()
    tracker.consumed(ref(0))
    clock.advance(STAMP_RESOLUTION / 2)
    tracker.consumed(ref(1))
    tracker.finished(ref(0))
    # 1 was read half a resolution later: dated early (an age overstated), never late.
    assert tracker.oldest_open_since(TP) == start


def test_stamps_stay_few_when_records_are_read_in_bursts() -> None:
    clock = FakeClock()
    tracker = OffsetTracker(clock)
    tracker.assign(TP)
    for burst in range(100):
        for i in range(1000):
            tracker.consumed(ref(burst * 1000 + i))
        clock.advance(1)
    state = tracker._partitions[TP]
    assert len(state.stamps) == 100  # one per burst, not one per record
    for offset in range(50_000):
        tracker.finished(ref(offset))
    assert len(state.stamps) == 50
    assert tracker.oldest_open_since(TP) == clock.monotonic() - 50


class TrackerMachine(RuleBasedStateMachine):
    """Random interleavings of consume, finish, commit, revoke and reassign."""

    open_refs = Bundle("open_refs")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.tracker = OffsetTracker(self.clock)
        self.read_at: dict[tuple[str, int], dict[int, float]] = {}
        self.partitions = [("t", 0), ("t", 1)]
        self.model_open: dict[tuple[str, int], set[int]] = {tp: set() for tp in self.partitions}
        self.next_offset: dict[tuple[str, int], int] = dict.fromkeys(self.partitions, 0)
        self.committed: dict[tuple[str, int], int] = {}
        self.owned = set(self.partitions)
        for tp in self.partitions:
            self.tracker.assign(tp)

    @rule(target=open_refs, part=st.integers(0, 1), gap=st.integers(1, 3))
    def consume(self, part: int, gap: int) -> RecordRef:
        tp = self.partitions[part]
        offset = self.next_offset[tp] + gap - 1
        self.next_offset[tp] = offset + 1
        record = RecordRef(tp[0], tp[1], offset)
        accepted = self.tracker.consumed(record)
        assert accepted == (tp in self.owned)
        if accepted:
            self.model_open[tp].add(offset)
            self.read_at.setdefault(tp, {})[offset] = self.clock.monotonic()
        return record

    @rule(seconds=st.sampled_from([0.0, STAMP_RESOLUTION / 3, 1.0, 7.5]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(record=consumes(open_refs))
    def finish(self, record: RecordRef) -> None:
        self.tracker.finished(record)
        self.model_open[record.tp].discard(record.offset)

    @rule()
    def commit(self) -> None:
        offsets = self.tracker.committable()
        for tp, offset in offsets.items():
            assert tp in self.owned
            opened = self.model_open[tp]
            # never past a record that is not final
            assert all(offset <= o for o in opened)
            # monotonic while owned
            assert offset >= self.committed.get(tp, 0)
            # and as far as it may go
            assert offset == (min(opened) if opened else self.next_offset[tp])
        self.tracker.mark_committed(offsets)
        self.committed.update(offsets)

    @rule(part=st.integers(0, 1))
    def revoke(self, part: int) -> None:
        tp = self.partitions[part]
        self.tracker.revoke(tp)
        self.owned.discard(tp)
        self.model_open[tp].clear()
        self.committed.pop(tp, None)

    @precondition(lambda self: len(self.owned) < 2)
    @rule(part=st.integers(0, 1))
    def reassign(self, part: int) -> None:
        tp = self.partitions[part]
        if tp in self.owned:
            return
        self.tracker.assign(tp)
        self.owned.add(tp)
        # the new owner resumes from the last committed offset (or anywhere later; we pick the
        # next offset, which keeps the model simple and still tests stale finishes)

    @invariant()
    def oldest_open_is_dated_within_the_resolution(self) -> None:
        for tp in self.partitions:
            since = self.tracker.oldest_open_since(tp)
            opened = self.model_open[tp] if tp in self.owned else set()
            if not opened:
                assert since is None
                continue
            read_at = self.read_at[tp][min(opened)]
            assert since is not None
            assert read_at - STAMP_RESOLUTION < since <= read_at

    @invariant()
    def open_count_matches(self) -> None:
        assert self.tracker.open_records == sum(len(self.model_open[tp]) for tp in self.owned)

    def teardown(self) -> None:
        # When everything is final, every owned partition commits its end.
        for tp in self.owned:
            for offset in list(self.model_open[tp]):
                self.tracker.finished(RecordRef(tp[0], tp[1], offset))
        for tp in self.owned:
            assert self.tracker.position(tp) in (None, self.next_offset[tp])
        for tp, offset in self.tracker.committable().items():
            assert offset == self.next_offset[tp]


TrackerMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
test_tracker_state_machine = TrackerMachine.TestCase
