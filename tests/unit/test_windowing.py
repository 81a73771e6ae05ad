from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.clock import FakeClock
from stream.core.events import Action, Kind, Transition
from stream.core.offsets import RecordRef
from stream.core.windowing import Batch, Contact, Handover, Trigger, Windower, handover
from stream.settings import BatchingSettings

WINDOW = 1200.0
# 1_700_000_000 is 800 s into the window that starts at 1_699_999_200.
START = 1_700_000_000.0
WINDOW_START = 1_699_999_200.0
WINDOW_END = WINDOW_START + WINDOW

_offsets = itertools.count()


def transition(
    email: str = "jane@example.com",
    action: Action = Action.ADD,
    book: int = 1,
    connector: str = "eu",
    event_id: str | None = None,
) -> Transition:
    return Transition(
        event_id=event_id or f"evt-{next(_offsets)}",
        kind=Kind.AUDIENCE,
        source_id="aud",
        action=action,
        occurred_at=datetime(2024, 5, 1, tzinfo=UTC),
        connector_id=connector,
        address_book_id=book,
        profile_id="p",
        email=email,
    )


def ref(offset: int, partition: int = 0, topic: str = "t") -> RecordRef:
    return RecordRef(topic, partition, offset)


def windower(clock: FakeClock, max_contacts: int = 1000) -> Windower:
    return Windower(clock, window_seconds=WINDOW, max_contacts=max_contacts)


def emails(batch: Batch) -> tuple[list[str], list[str]]:
    return [c.email for c in batch.adds], [c.email for c in batch.removes]


def test_a_batch_waits_for_its_window_to_close() -> None:
    clock = FakeClock(START)
    w = windower(clock)
    assert w.add(transition("a@x"), ref(0)) == []
    assert w.buffered_records == 1
    assert w.next_deadline() == WINDOW_END
    clock.advance(WINDOW_END - START - 0.001)
    assert w.due() == []
    clock.advance(0.001)
    [batch] = w.due()
    assert batch.trigger is Trigger.WINDOW
    assert batch.window_start == WINDOW_START
    assert (batch.connector_id, batch.address_book_id, batch.sequence) == ("eu", 1, 0)
    assert emails(batch) == (["a@x"], [])
    assert w.buffered_records == 0
    assert w.next_deadline() is None
    assert w.due() == []


def test_windows_are_aligned_to_the_epoch_whatever_the_first_record_time() -> None:
    clock = FakeClock(WINDOW_END - 1)  # one second before a boundary
    w = windower(clock)
    w.add(transition("a@x"), ref(0))
    clock.advance(1)
    [batch] = w.due()
    assert batch.window_start == WINDOW_START


def test_due_takes_an_explicit_monotonic_time() -> None:
    clock = FakeClock(START)
    w = windower(clock)
    w.add(transition("a@x"), ref(0))
    clock.step_wall(-5 * WINDOW)  # placed the window; plays no part in closing it
    assert w.due(WINDOW_END - 1) == []
    assert len(w.due(WINDOW_END)) == 1


def test_a_wall_clock_stepping_back_does_not_hold_a_window_open() -> None:
    clock = FakeClock(START)
    w = windower(clock)
    w.add(transition("a@x"), ref(0))
    clock.step_wall(-3 * WINDOW)  # an NTP correction, or an operator's `date -s`
    clock.advance(WINDOW_END - START - 1)
    # Still inside the window measured on the monotonic clock: the record joins it.
    assert w.add(transition("b@x"), ref(1)) == []
    assert w.due() == []
    clock.advance(1)
    [batch] = w.due()
    assert batch.trigger is Trigger.WINDOW
    assert batch.window_start == WINDOW_START  # the wall window the first record arrived in
    assert emails(batch) == (["a@x", "b@x"], [])
    # The next window is aligned to the wall clock as it reads now, and lasts no longer.
    w.add(transition("c@x"), ref(2))
    deadline = w.next_deadline()
    assert deadline is not None
    assert 0 < deadline - clock.monotonic() <= WINDOW


def test_a_record_after_the_monotonic_deadline_closes_the_old_batch_despite_the_wall_clock() -> (
    None
):
    clock = FakeClock(START)
    w = windower(clock)
    w.add(transition("a@x"), ref(0))
    clock.step_wall(-3 * WINDOW)
    clock.advance(WINDOW)
    [old, *rest] = w.add(transition("b@x"), ref(1))
    assert rest == []
    assert (old.trigger, emails(old)) == (Trigger.WINDOW, (["a@x"], []))
    assert w.buffered_records == 1


def test_a_wall_clock_stepping_forward_flushes_nothing_early() -> None:
    clock = FakeClock(START)
    w = windower(clock)
    w.add(transition("a@x"), ref(0))
    w.add(transition("z@x", book=2), ref(1))
    clock.step_wall(+3 * WINDOW)
    # The pending windows keep their deadline: nothing leaves early, new records still join.
    assert w.due() == []
    assert w.add(transition("b@x"), ref(2)) == []
    clock.advance(WINDOW_END - START - 0.001)
    assert w.due() == []
    clock.advance(0.001)
    assert sorted(len(b.adds) for b in w.due()) == [1, 2]
    # Later windows are aligned to the stepped wall clock, one window long each.
    w.add(transition("c@x"), ref(3))
    clock.advance(WINDOW - 0.001)
    assert w.due() == []
    clock.advance(0.001)
    [batch] = w.due()
    assert batch.window_start == WINDOW_END + 3 * WINDOW


def test_latest_transition_of_a_contact_wins_and_carries_the_superseded() -> None:
    w = windower(FakeClock(START))
    w.add(transition("a@x", Action.ADD, event_id="in"), ref(0))
    w.add(transition("a@x", Action.REMOVE, event_id="out"), ref(1))
    assert w.buffered_records == 2
    [batch] = w.drain()
    assert batch.adds == ()
    [contact] = batch.removes
    assert contact.email == "a@x"
    assert contact.action is Action.REMOVE
    assert contact.event_id == "out"
    assert contact.winner == ref(1)
    assert contact.refs == (ref(0), ref(1))
    assert batch.record_count == 2
    assert batch.contact_count == 1
    assert list(batch.refs()) == [ref(0), ref(1)]


def test_leave_and_come_back_within_a_window_is_one_add() -> None:
    w = windower(FakeClock(START))
    w.add(transition("a@x", Action.ADD), ref(0))
    w.add(transition("a@x", Action.REMOVE), ref(1))
    w.add(transition("a@x", Action.ADD), ref(2))
    [batch] = w.drain()
    assert emails(batch) == (["a@x"], [])
    assert batch.adds[0].refs == (ref(0), ref(1), ref(2))


def test_address_books_and_connectors_batch_separately() -> None:
    w = windower(FakeClock(START))
    w.add(transition("a@x", book=1), ref(0))
    w.add(transition("a@x", book=2), ref(1))
    w.add(transition("a@x", book=1, connector="us"), ref(2))
    assert w.pending_batches == 3
    batches = w.drain()
    assert {b.key for b in batches} == {("eu", 1), ("eu", 2), ("us", 1)}
    assert all(b.trigger is Trigger.SHUTDOWN and b.sequence == 0 for b in batches)


def test_a_batch_flushes_at_once_when_one_operation_is_full() -> None:
    w = windower(FakeClock(START), max_contacts=3)
    assert w.add(transition("a@x"), ref(0)) == []
    assert w.add(transition("r1@x", Action.REMOVE), ref(1)) == []
    assert w.add(transition("b@x"), ref(2)) == []
    assert w.add(transition("r2@x", Action.REMOVE), ref(3)) == []
    [batch] = w.add(transition("c@x"), ref(4))
    assert batch.trigger is Trigger.FULL
    assert emails(batch) == (["a@x", "b@x", "c@x"], ["r1@x", "r2@x"])
    assert w.buffered_records == 0
    assert w.pending_batches == 0


def test_repeated_records_of_one_contact_do_not_fill_a_batch() -> None:
    w = windower(FakeClock(START), max_contacts=2)
    for offset in range(10):
        assert w.add(transition("a@x"), ref(offset)) == []
    assert w.buffered_records == 10


def test_a_contact_changing_operation_moves_between_the_counts() -> None:
    w = windower(FakeClock(START), max_contacts=2)
    w.add(transition("a@x", Action.ADD), ref(0))
    w.add(transition("a@x", Action.REMOVE), ref(1))  # adds 0, removes 1
    assert w.add(transition("b@x", Action.ADD), ref(2)) == []  # adds 1
    [batch] = w.add(transition("c@x", Action.REMOVE), ref(3))  # removes 2: full
    assert emails(batch) == (["b@x"], ["a@x", "c@x"])


def test_the_next_batch_in_the_same_window_gets_the_next_sequence() -> None:
    clock = FakeClock(START)
    w = windower(clock, max_contacts=1)
    [first] = w.add(transition("a@x"), ref(0))
    [second] = w.add(transition("a@x", Action.REMOVE), ref(1))
    [other] = w.add(transition("b@x", book=2), ref(2))
    assert (first.sequence, second.sequence) == (0, 1)
    assert first.window_start == second.window_start == WINDOW_START
    assert other.sequence == 0  # sequences are per address book


def test_a_record_after_the_window_closed_closes_the_old_batch_first() -> None:
    clock = FakeClock(START)
    w = windower(clock)
    w.add(transition("a@x"), ref(0))
    clock.advance(WINDOW)  # due() has not run
    [old] = w.add(transition("a@x", Action.REMOVE), ref(1))
    assert old.trigger is Trigger.WINDOW
    assert old.window_start == WINDOW_START
    assert emails(old) == (["a@x"], [])
    [new] = w.drain()
    assert new.window_start == WINDOW_END
    assert new.sequence == 1
    assert emails(new) == ([], ["a@x"])


def test_drain_empties_everything() -> None:
    w = windower(FakeClock(START))
    for offset in range(5):
        w.add(transition(f"{offset}@x", book=offset % 2), ref(offset))
    batches = w.drain()
    assert sum(b.contact_count for b in batches) == 5
    assert w.buffered_records == 0
    assert w.drain() == []


def test_drain_partitions_emits_only_contacts_touching_them() -> None:
    w = windower(FakeClock(START))
    w.add(transition("a@x"), ref(0, partition=0))
    w.add(transition("b@x"), ref(0, partition=1))
    w.add(transition("c@x", book=2), ref(1, partition=1))
    w.add(transition("d@x", book=3), ref(1, partition=0))
    batches = w.drain_partitions({("t", 1)})
    assert {(b.key, b.trigger) for b in batches} == {
        (("eu", 1), Trigger.REVOKE),
        (("eu", 2), Trigger.REVOKE),
    }
    assert sorted(c.email for b in batches for c in b.contacts()) == ["b@x", "c@x"]
    assert w.buffered_records == 2
    rest = w.drain()
    assert sorted(c.email for b in rest for c in b.contacts()) == ["a@x", "d@x"]
    # the remainder of book 1 comes after its revoke batch
    assert {b.key: b.sequence for b in rest}[("eu", 1)] == 1


def test_drop_partitions_returns_revoked_records_unsent() -> None:
    w = windower(FakeClock(START))
    w.add(transition("a@x"), ref(0, partition=0))
    w.add(transition("a@x", Action.REMOVE), ref(1, partition=0))
    w.add(transition("b@x"), ref(0, partition=1))
    dropped = w.drop_partitions({("t", 0)})
    assert dropped.dropped == (ref(0, 0), ref(1, 0))
    assert dropped.superseded == ()
    assert w.buffered_records == 1
    [batch] = w.drain()
    assert emails(batch) == (["b@x"], [])


def test_drop_partitions_when_the_winner_is_revoked_releases_the_superseded() -> None:
    # Two profiles with one email, on two partitions: rare, but every record stays accounted for.
    w = windower(FakeClock(START))
    w.add(transition("a@x", Action.ADD), ref(5, partition=1))
    w.add(transition("a@x", Action.REMOVE), ref(9, partition=0))
    dropped = w.drop_partitions({("t", 0)})
    assert dropped.dropped == (ref(9, 0),)
    assert dropped.superseded == (ref(5, 1),)
    assert w.buffered_records == 0
    assert w.pending_batches == 0


def test_drop_partitions_when_only_a_superseded_record_is_revoked_keeps_the_winner() -> None:
    w = windower(FakeClock(START))
    w.add(transition("a@x", Action.ADD), ref(9, partition=0))
    w.add(transition("a@x", Action.REMOVE), ref(5, partition=1))
    dropped = w.drop_partitions({("t", 0)})
    assert dropped.dropped == (ref(9, 0),)
    assert dropped.superseded == ()
    [batch] = w.drain()
    [contact] = batch.removes
    assert contact.refs == (ref(5, 1),)
    assert w.buffered_records == 0


P0, P1 = ("t", 0), ("t", 1)
Contacts = list[tuple[tuple[str, int], Contact]]


def in_order(*batches: Batch, pending: Windower | None = None) -> Contacts:
    contacts = [(b.key, c) for b in batches for c in b.contacts()]
    return contacts + ([] if pending is None else list(pending.pending_contacts()))


def split(contacts: Contacts, is_open: Callable[[RecordRef], bool] = lambda r: True) -> Handover:
    return handover(contacts, {P0}, is_open)


def test_a_revoked_record_superseded_by_one_kept_is_overtaken() -> None:
    # One email under two profiles: the entry on partition 0, the exit on partition 1.
    w = windower(FakeClock(START))
    w.add(transition("a@x", Action.ADD), ref(9, partition=0))
    w.add(transition("a@x", Action.REMOVE), ref(5, partition=1))
    w.add(transition("b@x", Action.ADD), ref(10, partition=0))
    w.add(transition("c@x", Action.ADD), ref(11, partition=1))
    assert split(in_order(pending=w)) == Handover(overtaken=(ref(9, 0),), yielded=())
    [batch] = w.drain()
    assert split(in_order(batch)) == Handover(overtaken=(ref(9, 0),), yielded=())
    # Only what is still open counts, on both sides.
    assert split(in_order(batch), lambda r: r != ref(5, 1)) == Handover((), ())
    assert split(in_order(batch), lambda r: r != ref(9, 0)) == Handover((), ())


def test_records_kept_older_than_a_revoked_one_are_yielded() -> None:
    w = windower(FakeClock(START))
    w.add(transition("a@x", Action.ADD), ref(5, partition=1))
    w.add(transition("a@x", Action.ADD), ref(6, partition=0))
    w.add(transition("a@x", Action.REMOVE), ref(9, partition=0))
    assert split(in_order(pending=w)) == Handover(overtaken=(), yielded=(ref(5, 1),))


def test_contacts_in_later_batches_are_newer() -> None:
    w = windower(FakeClock(START), max_contacts=1)
    [first] = w.add(transition("a@x", Action.ADD), ref(9, partition=0))
    [other_book] = w.add(transition("a@x", Action.REMOVE, book=2), ref(5, partition=1))
    assert split(in_order(first, other_book)) == Handover((), ())
    [other_email] = w.add(transition("b@x", Action.REMOVE), ref(6, partition=1))
    assert split(in_order(first, other_email)) == Handover((), ())
    [later] = w.add(transition("a@x", Action.REMOVE), ref(7, partition=1))
    assert split(in_order(first, later)) == Handover(overtaken=(ref(9, 0),), yielded=())
    # Arrival order decides: the same records the other way round.
    assert split(in_order(later, first)) == Handover(overtaken=(), yielded=(ref(7, 1),))


def test_nothing_to_do_for_no_partitions() -> None:
    w = windower(FakeClock(START))
    w.add(transition("a@x"), ref(0))
    assert w.drain_partitions(set()) == []
    assert w.drop_partitions(set()).dropped == ()
    assert w.buffered_records == 1


def test_from_settings_and_argument_checks() -> None:
    w = Windower.from_settings(
        FakeClock(START), BatchingSettings(max_contacts=2, window_seconds=60)
    )
    assert w.window_start(START + 59) == 1_700_000_040.0
    with pytest.raises(ValueError, match="window_seconds"):
        Windower(FakeClock(), window_seconds=0, max_contacts=1)
    with pytest.raises(ValueError, match="max_contacts"):
        Windower(FakeClock(), window_seconds=1, max_contacts=0)


def test_many_records_are_cheap() -> None:
    clock = FakeClock(START)
    w = windower(clock)
    records = [
        (transition(f"{offset % 10_000}@x", book=offset % 7), ref(offset))
        for offset in range(30_000)
    ]
    batches: list[Batch] = []
    for record in records:
        batches += w.add(*record)
    batches += w.drain()
    assert sum(b.record_count for b in batches) == 30_000


# --- properties ------------------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from(["a@x", "b@x", "c@x", "d@x", "e@x"]),
            st.sampled_from([Action.ADD, Action.REMOVE]),
            st.integers(1, 2),  # address book
            st.integers(0, 2),  # partition
        ),
        st.tuples(st.just("advance"), st.floats(0, 2 * WINDOW)),
        st.tuples(st.just("step_wall"), st.floats(-3 * WINDOW, 3 * WINDOW)),
        st.tuples(st.just("due")),
        st.tuples(st.just("drain_partitions"), st.integers(0, 2)),
        st.tuples(st.just("drop_partitions"), st.integers(0, 2)),
    ),
    max_size=60,
)


def run(ops: list[tuple[object, ...]], max_contacts: int, allow_drop: bool) -> None:
    clock = FakeClock(START)
    w = windower(clock, max_contacts=max_contacts)
    batches: list[Batch] = []
    given_refs: list[RecordRef] = []
    out_refs: list[RecordRef] = []
    last_action: dict[tuple[int, str], Action] = {}
    offsets = itertools.count()
    stepped_back = False
    for op in ops:
        if op[0] == "add":
            _, email, action, book, partition = op
            assert isinstance(email, str)
            assert isinstance(action, Action)
            assert isinstance(book, int)
            assert isinstance(partition, int)
            record = ref(next(offsets), partition)
            given_refs.append(record)
            batches += w.add(transition(email, action, book=book), record)
            last_action[(book, email)] = action
        elif op[0] == "advance":
            assert isinstance(op[1], float)
            clock.advance(op[1])
        elif op[0] == "step_wall":
            assert isinstance(op[1], float)
            clock.step_wall(op[1])
            stepped_back = stepped_back or op[1] < 0
        elif op[0] == "due":
            batches += w.due()
        elif op[0] == "drain_partitions":
            assert isinstance(op[1], int)
            batches += w.drain_partitions({("t", op[1])})
        elif allow_drop:
            assert isinstance(op[1], int)
            dropped = w.drop_partitions({("t", op[1])})
            out_refs += [*dropped.dropped, *dropped.superseded]
        assert w.buffered_records == len(given_refs) - len(out_refs) - sum(
            b.record_count for b in batches
        )
        # Whatever the wall clock did, no window pends more than one window of real time.
        deadline = w.next_deadline()
        assert deadline is None or deadline - clock.monotonic() <= WINDOW
    batches += w.drain()
    out_refs += [r for b in batches for r in b.refs()]

    # every record comes out exactly once
    assert sorted(out_refs) == sorted(given_refs)
    assert w.buffered_records == 0
    by_book: dict[tuple[str, int], list[Batch]] = {}
    for batch in batches:
        by_book.setdefault(batch.key, []).append(batch)
        assert len(batch.adds) <= max_contacts
        assert len(batch.removes) <= max_contacts
        all_emails = [c.email for c in batch.contacts()]
        assert len(all_emails) == len(set(all_emails)), "a contact twice in one batch"
        assert all(c.winner == c.refs[-1] for c in batch.contacts())
    for key, book_batches in by_book.items():
        # sequences 0, 1, 2... in emission order
        assert [b.sequence for b in book_batches] == list(range(len(book_batches)))
        if not stepped_back:
            assert all(
                a.window_start <= b.window_start for a, b in itertools.pairwise(book_batches)
            )
        if not allow_drop:
            # applying the batches in order leaves each contact in its latest state
            final: dict[str, Action] = {}
            for batch in book_batches:
                final.update({c.email: c.action for c in batch.contacts()})
            expected = {e: a for (book, e), a in last_action.items() if book == key[1]}
            assert final == expected


@settings(max_examples=150, deadline=None)
@given(ops=OPS, max_contacts=st.integers(1, 4))
def test_batches_applied_in_order_give_the_latest_state(
    ops: list[tuple[object, ...]], max_contacts: int
) -> None:
    run(ops, max_contacts, allow_drop=False)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, max_contacts=st.integers(1, 4))
def test_every_record_is_accounted_for_even_with_drops(
    ops: list[tuple[object, ...]], max_contacts: int
) -> None:
    run(ops, max_contacts, allow_drop=True)
