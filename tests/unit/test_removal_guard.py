"""The mass-removal guard: a sliding window of removals per address book, on a fake clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.core.removal_guard import RemovalGuard, RemovalGuardLimits, removal_guard_of
from stream.settings import RemovalGuardSettings
from stream.testing import FakeClock

BOOK = ("eu", 7)
HOUR = RemovalGuardLimits(share=0.2, min_contacts=1000, window_seconds=3600.0)


def test_a_flush_within_the_share_of_a_large_book_is_admitted() -> None:
    guard = RemovalGuard(HOUR, FakeClock())
    verdict = guard.admits(BOOK, 1000, size=100_000)
    assert verdict.admitted
    assert verdict.allowance == 20_000


def test_a_flood_of_ordinary_flushes_is_held_once_the_window_holds_a_fifth_of_the_book() -> None:
    # 1,000 a flush (batching.max_contacts): a limit per flush would never see this flood.
    clock = FakeClock()
    guard = RemovalGuard(HOUR, clock)
    size = 100_000
    sent = 0
    while (verdict := guard.admits(BOOK, 1000, size)).admitted:
        guard.sent(BOOK, 1000)
        size -= 1000
        sent += 1000
        clock.advance(10)
    assert sent == 20_000
    assert verdict.removed_in_window == 20_000
    assert "1000 removals held" in verdict.describe()


def test_held_removals_do_not_count_and_the_window_slides_past_a_burst() -> None:
    clock = FakeClock()
    guard = RemovalGuard(HOUR, clock)
    guard.sent(BOOK, 20_000)
    clock.advance(60)
    assert not guard.admits(BOOK, 1000, size=80_000).admitted
    assert not guard.admits(BOOK, 1000, size=80_000).admitted  # asking again counts nothing
    clock.advance(3600)
    assert guard.admits(BOOK, 1000, size=80_000).admitted


def test_small_books_are_left_to_the_minimum() -> None:
    guard = RemovalGuard(HOUR, FakeClock())
    assert guard.admits(BOOK, 1000, size=1200).admitted  # 83 % of a small book: normal churn
    assert not guard.admits(BOOK, 1001, size=1200).admitted


def test_books_are_counted_apart() -> None:
    guard = RemovalGuard(HOUR, FakeClock())
    guard.sent(BOOK, 1000)
    assert not guard.admits(BOOK, 1, size=0).admitted
    assert guard.admits(("eu", 8), 1000, size=0).admitted
    assert guard.admits(("us", 7), 1000, size=0).admitted


def test_turned_off_there_is_no_guard() -> None:
    assert removal_guard_of(RemovalGuardSettings(enabled=False), FakeClock()) is None
    guard = removal_guard_of(RemovalGuardSettings(), FakeClock())
    assert guard is not None
    assert not guard.admits(BOOK, 2000, size=5000).admitted


@given(
    sizes=st.lists(st.integers(0, 1_000_000), min_size=1, max_size=40),
    flush=st.integers(1, 1000),
)
def test_what_is_let_through_in_a_window_never_exceeds_the_allowance(
    sizes: list[int], flush: int
) -> None:
    clock = FakeClock()
    guard = RemovalGuard(HOUR, clock)
    for size in sizes:
        verdict = guard.admits(BOOK, flush, size)
        if verdict.admitted:
            guard.sent(BOOK, flush)
            assert verdict.removed_in_window + flush <= verdict.allowance
        clock.advance(1)
