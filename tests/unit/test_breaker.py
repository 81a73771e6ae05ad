from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.breaker import DeadLetterBreaker
from stream.config import DeadLetterSettings


def feed(breaker: DeadLetterBreaker, outcomes: str) -> None:
    """``outcomes``: "d" dead-lettered, "." succeeded."""
    for outcome in outcomes:
        breaker.record(outcome == "d")


def test_starts_closed() -> None:
    breaker = DeadLetterBreaker(window=10, ratio=0.5, min_records=4)
    assert not breaker.is_open
    assert breaker.share == 0.0


def test_does_not_open_before_min_records() -> None:
    breaker = DeadLetterBreaker(window=10, ratio=0.5, min_records=4)
    feed(breaker, "ddd")
    assert not breaker.is_open
    feed(breaker, "d")
    assert breaker.is_open


def test_opens_only_when_the_share_exceeds_the_ratio() -> None:
    breaker = DeadLetterBreaker(window=4, ratio=0.5, min_records=4)
    feed(breaker, "dd..")  # exactly half: not more than half
    assert not breaker.is_open
    feed(breaker, "d")  # window is now "d..d": still half
    assert not breaker.is_open
    feed(breaker, "d")  # "..dd": still half
    assert not breaker.is_open
    feed(breaker, "d")  # ".ddd"
    assert breaker.is_open
    assert breaker.share == 0.75


def test_old_failures_leave_the_window() -> None:
    breaker = DeadLetterBreaker(window=5, ratio=0.5, min_records=5)
    feed(breaker, "dd...")
    feed(breaker, ".....")
    feed(breaker, "dd")  # the earlier failures are gone: 2 of 5
    assert not breaker.is_open
    assert breaker.share == pytest.approx(0.4)


def test_once_open_it_stays_open() -> None:
    breaker = DeadLetterBreaker(window=4, ratio=0.5, min_records=2)
    feed(breaker, "dd")
    assert breaker.is_open
    feed(breaker, "." * 100)
    assert breaker.is_open
    assert breaker.share == 1.0
    assert breaker.describe().startswith("dead-letter breaker open: 2 of the last 2")


def test_ratio_one_never_opens() -> None:
    breaker = DeadLetterBreaker(window=3, ratio=1.0, min_records=1)
    feed(breaker, "dddddd")
    assert not breaker.is_open


def test_from_settings_uses_the_configured_defaults() -> None:
    breaker = DeadLetterBreaker.from_settings(DeadLetterSettings())
    feed(breaker, "d" * 180 + "." * 19)  # 199 seen: below min_records of 200
    assert not breaker.is_open
    feed(breaker, "d")  # 181/200 = 90.5% > 90%
    assert breaker.is_open


@pytest.mark.parametrize(
    ("window", "ratio", "min_records"),
    [(0, 0.5, 1), (10, 0.0, 1), (10, 1.5, 1), (10, 0.5, 0), (10, 0.5, 11)],
)
def test_nonsense_settings_are_refused(window: int, ratio: float, min_records: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        DeadLetterBreaker(window=window, ratio=ratio, min_records=min_records)


@settings(max_examples=100, deadline=None)
@given(
    outcomes=st.lists(st.booleans(), max_size=80),
    window=st.integers(1, 20),
    ratio=st.sampled_from([0.1, 0.5, 0.75, 0.9, 1.0]),
    data=st.data(),
)
def test_matches_a_naive_model(
    outcomes: list[bool], window: int, ratio: float, data: st.DataObject
) -> None:
    min_records = data.draw(st.integers(1, window))
    breaker = DeadLetterBreaker(window=window, ratio=ratio, min_records=min_records)
    recent: deque[bool] = deque(maxlen=window)
    opened = False
    for outcome in outcomes:
        breaker.record(outcome)
        recent.append(outcome)
        if len(recent) >= min_records and sum(recent) / len(recent) > ratio:
            opened = True
        assert breaker.is_open == opened
