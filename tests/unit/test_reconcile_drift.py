"""What a book should hold by its outcomes, against what it holds (stream.reconcile.drift)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from stream.core.outcome_format import Outcome, Reported, State, decode
from stream.reconcile.drift import Expected, compare

BOOK = ("eu", 7)
AT = datetime(2024, 5, 1, 12, tzinfo=UTC)


def outcome(email: str, state: State, book: tuple[str, int] = BOOK) -> Outcome:
    action = "add" if state in (State.MEMBER, State.WOULD_ADD) else "remove"
    return Outcome(book[0], book[1], email, action, state, Reported.NOT_SENT, AT)


def test_the_latest_outcome_of_each_contact_decides() -> None:
    expected = Expected()
    for each in (
        outcome("a@x.com", State.MEMBER),
        outcome("a@x.com", State.NOT_MEMBER),  # a: left last
        outcome("b@x.com", State.NOT_MEMBER),
        outcome("b@x.com", State.MEMBER),  # b: entered last
        outcome("c@x.com", State.DEAD_LETTERED),  # c: waits for a replay
        outcome("d@x.com", State.WOULD_ADD),  # a shadow connector's plans count as its state
        outcome("a@x.com", State.MEMBER, book=("eu", 8)),  # another book
    ):
        expected.add(each)
    drift = compare(BOOK, expected.of(BOOK), {"a@x.com", "c@x.com", "z@x.com"})
    assert drift.missing == {"b@x.com", "d@x.com"}
    assert drift.unexpected == {"a@x.com"}
    assert drift.unmanaged == {"z@x.com"}
    assert drift.held == {"c@x.com"}
    assert (drift.members, drift.expected) == (3, 2)
    assert not drift.in_step
    assert expected.of(("eu", 8)) == {"a@x.com": True}


def test_unmanaged_contacts_and_held_ones_are_not_drift() -> None:
    expected = Expected()
    expected.add(outcome("a@x.com", State.MEMBER))
    expected.add(outcome("c@x.com", State.DEAD_LETTERED))
    assert compare(BOOK, expected.of(BOOK), {"a@x.com", "stranger@x.com"}).in_step


EMAILS = st.sampled_from([f"c{i}@example.com" for i in range(40)])


@given(
    states=st.dictionaries(EMAILS, st.sampled_from(list(State)), max_size=30),
    members=st.sets(EMAILS, max_size=30),
)
def test_the_kinds_are_disjoint_and_a_book_repaired_is_in_step(
    states: dict[str, State], members: set[str]
) -> None:
    expected = Expected()
    for email, state in states.items():
        expected.add(decode(outcome(email, state).encode()))  # through the wire format
    drift = compare(BOOK, expected.of(BOOK), members)
    kinds = [drift.missing, drift.unexpected, drift.unmanaged, drift.held]
    assert sum(len(k) for k in kinds) == len(set().union(*kinds))
    repaired = (members | drift.missing) - drift.unexpected
    assert compare(BOOK, expected.of(BOOK), repaired).in_step
