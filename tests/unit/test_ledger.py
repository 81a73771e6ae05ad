"""The ledger of open records (stream.core.ledger): watermark, originals and revokes in step."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stream.clock import FakeClock
from stream.core.ledger import Ledger, Original
from stream.core.offsets import RecordRef, TopicPartitionKey

TP: TopicPartitionKey = ("t", 0)
OTHER: TopicPartitionKey = ("t", 1)


def ref(offset: int, tp: TopicPartitionKey = TP) -> RecordRef:
    return RecordRef(tp[0], tp[1], offset)


def original(offset: int) -> Original:
    return (b"profile", f'{{"n": {offset}}}'.encode(), (("trace", b"t"),))


def ledger_with(*offsets: int, tp: TopicPartitionKey = TP) -> Ledger:
    ledger = Ledger(FakeClock())
    ledger.assign(tp)
    for offset in offsets:
        assert ledger.open(ref(offset, tp), original(offset))
    return ledger


def test_an_original_is_kept_while_its_record_is_open() -> None:
    ledger = ledger_with(10, 11)
    assert ledger.original(ref(10)) == original(10)
    assert ledger.is_open(ref(10))
    ledger.settle(ref(10))
    assert ledger.original(ref(10)) is None
    assert not ledger.is_open(ref(10))
    assert ledger.original(ref(11)) == original(11)
    assert ledger.open_records == 1


def test_committed_offsets_never_pass_an_open_record() -> None:
    ledger = ledger_with(10, 11, 12)
    ledger.settle(ref(11))
    assert ledger.committable() == {TP: 10}
    ledger.settle(ref(10))
    assert ledger.committable() == {TP: 12}
    ledger.mark_committed({TP: 12})
    assert ledger.committable() == {}
    ledger.settle(ref(12))
    assert ledger.committable() == {TP: 13}


def test_a_refused_record_keeps_no_original() -> None:
    ledger = ledger_with(10)
    assert not ledger.open(ref(10), original(99)), "a re-delivery of an open record"
    assert not ledger.open(ref(9), original(9)), "below the last opened offset"
    assert not ledger.open(ref(0, OTHER), original(0)), "a partition not owned"
    assert ledger.original(ref(10)) == original(10)
    assert ledger.original(ref(9)) is None
    assert ledger.original(ref(0, OTHER)) is None
    assert ledger.open_records == 1


def test_settle_is_idempotent_and_ignores_records_not_open() -> None:
    ledger = ledger_with(10, 11)
    ledger.settle(ref(10))
    ledger.settle(ref(10))
    ledger.settle(ref(5))
    ledger.settle(ref(3, OTHER))
    assert ledger.open_records == 1
    assert ledger.committable() == {TP: 11}


def test_a_forgotten_partition_lets_its_originals_go_and_is_never_committed() -> None:
    ledger = ledger_with(10, 11)
    ledger.forget(TP)
    assert not ledger.owns(TP)
    assert ledger.owned == frozenset()
    assert ledger.committable() == {}
    assert ledger.open_records == 0
    assert ledger.original(ref(10)) is None
    ledger.settle(ref(10))  # a late outcome
    assert ledger.committable() == {}
    ledger.forget(TP)  # a no-op


def test_a_partition_assigned_again_starts_afresh() -> None:
    ledger = ledger_with(10, 11)
    ledger.forget(TP)
    ledger.assign(TP)
    assert ledger.position(TP) is None
    assert ledger.open(ref(8), original(8)), "the new owner may read from an earlier commit"
    assert ledger.original(ref(10)) is None
    ledger.settle(ref(10))  # stale: not open in this assignment
    assert ledger.committable() == {TP: 8}


def test_assign_twice_keeps_the_open_records_and_their_originals() -> None:
    ledger = ledger_with(10)
    ledger.assign(TP)
    assert ledger.original(ref(10)) == original(10)
    assert ledger.committable() == {TP: 10}


def test_records_of_partitions_being_revoked_are_open_but_no_longer_held() -> None:
    ledger = ledger_with(10, 11)
    ledger.assign(OTHER)
    assert ledger.open(ref(0, OTHER), original(0))
    assert ledger.holds(ref(10))
    with ledger.revoking([TP]):
        assert ledger.is_revoking(TP)
        assert not ledger.is_revoking(OTHER)
        assert not ledger.holds(ref(10))
        assert ledger.is_open(ref(10))
        assert ledger.original(ref(10)) == original(10)
        assert ledger.holds(ref(0, OTHER))
        assert ledger.committable([TP]) == {TP: 10}
    assert not ledger.is_revoking(TP)
    assert ledger.holds(ref(10))
    assert not ledger.holds(ref(12)), "never opened"


def test_settle_kept_leaves_the_records_of_partitions_being_revoked_open() -> None:
    ledger = ledger_with(10)
    ledger.assign(OTHER)
    assert ledger.open(ref(0, OTHER), original(0))
    with ledger.revoking([TP]):
        ledger.settle_kept([ref(10), ref(0, OTHER)])
        assert ledger.is_open(ref(10)), "its new owner reads it again: not final"
        assert not ledger.is_open(ref(0, OTHER))
        assert ledger.committable() == {TP: 10, OTHER: 1}
    ledger.settle_kept([ref(10)])
    assert not ledger.is_open(ref(10))


def test_a_revoke_that_fails_stops_revoking() -> None:
    ledger = ledger_with(10)
    with pytest.raises(RuntimeError), ledger.revoking([TP]):
        raise RuntimeError("the revoke was cut short")
    assert not ledger.is_revoking(TP)
    assert ledger.holds(ref(10))


def test_oldest_open_since_is_when_the_lowest_open_record_was_opened() -> None:
    clock = FakeClock()
    ledger = Ledger(clock)
    ledger.assign(TP)
    assert ledger.oldest_open_since(TP) is None
    opened_at = clock.monotonic()
    assert ledger.open(ref(1), original(1))
    clock.advance(30)
    assert ledger.open(ref(2), original(2))
    assert ledger.oldest_open_since(TP) == opened_at
    ledger.settle(ref(1))
    assert ledger.oldest_open_since(TP) == opened_at + 30
    assert ledger.open_in(TP) == 1
    ledger.settle(ref(2))
    assert ledger.oldest_open_since(TP) is None
    assert ledger.oldest_open_since(OTHER) is None


class LedgerMachine(RuleBasedStateMachine):
    """Random interleavings of open, settle, settle_kept, revoke and assign: an original is
    kept exactly while its record is open, and the commit never passes an open record."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger(FakeClock())
        self.partitions = [TP, OTHER]
        self.owned = set(self.partitions)
        self.opened: dict[TopicPartitionKey, set[int]] = {tp: set() for tp in self.partitions}
        self.next_offset = dict.fromkeys(self.partitions, 0)
        self.seen: set[RecordRef] = set()
        for tp in self.partitions:
            self.ledger.assign(tp)

    @rule(part=st.integers(0, 1), gap=st.integers(1, 3))
    def open(self, part: int, gap: int) -> None:
        tp = self.partitions[part]
        offset = self.next_offset[tp] + gap - 1
        self.next_offset[tp] = offset + 1
        record = ref(offset, tp)
        self.seen.add(record)
        assert self.ledger.open(record, original(offset)) == (tp in self.owned)
        if tp in self.owned:
            self.opened[tp].add(offset)

    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        if not self.seen:
            return
        record = data.draw(st.sampled_from(sorted(self.seen)))
        self.ledger.settle(record)
        self.opened[record.tp].discard(record.offset)

    @rule(part=st.integers(0, 1), data=st.data())
    def settle_kept_while_revoking(self, part: int, data: st.DataObject) -> None:
        revoked = self.partitions[part]
        records = data.draw(st.lists(st.sampled_from(sorted(self.seen)))) if self.seen else []
        with self.ledger.revoking([revoked]):
            self.ledger.settle_kept(records)
            for record in records:
                if record.tp != revoked:
                    self.opened[record.tp].discard(record.offset)
            assert not any(self.ledger.holds(r) for r in self.seen if r.tp == revoked)

    @rule(part=st.integers(0, 1))
    def forget(self, part: int) -> None:
        tp = self.partitions[part]
        self.ledger.forget(tp)
        self.owned.discard(tp)
        self.opened[tp].clear()

    @precondition(lambda self: len(self.owned) < 2)
    @rule(part=st.integers(0, 1))
    def assign(self, part: int) -> None:
        tp = self.partitions[part]
        self.ledger.assign(tp)
        self.owned.add(tp)

    @invariant()
    def an_original_is_kept_exactly_while_its_record_is_open(self) -> None:
        for record in self.seen:
            is_open = record.offset in self.opened[record.tp]
            assert self.ledger.is_open(record) == is_open
            assert self.ledger.holds(record) == is_open
            assert (self.ledger.original(record) is not None) == is_open

    @invariant()
    def the_commit_never_passes_an_open_record(self) -> None:
        for tp, offset in self.ledger.committable().items():
            assert tp in self.owned
            assert all(offset <= o for o in self.opened[tp])
        assert self.ledger.open_records == sum(len(self.opened[tp]) for tp in self.owned)


LedgerMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
test_ledger_state_machine = LedgerMachine.TestCase
