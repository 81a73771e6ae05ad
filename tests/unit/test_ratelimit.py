"""The rate limiter against a fake clock: pacing, header corrections, 429s."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.clock import FakeClock
from stream.dotdigital.ratelimit import (
    MAX_RETRY_AFTER_SECONDS,
    RateLimiter,
    parse_reset,
    parse_retry_after,
)


def burst(limiter: RateLimiter) -> int:
    """How many requests may go right now."""
    taken = 0
    while limiter.try_acquire():
        taken += 1
        assert taken < 10_000
    return taken


def test_uses_the_whole_budget_then_waits_for_the_oldest_request_to_leave_the_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    assert burst(limiter) == 75
    assert limiter.delay() == pytest.approx(60.0)
    clock.advance(59.9)
    assert not limiter.try_acquire()
    clock.advance(0.1)
    assert burst(limiter) == 75


def test_sliding_window_never_allows_more_than_the_limit_in_any_minute() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, clock)
    sent: list[float] = []
    # Requests trickle in every 7 s; at no point may 60 s hold more than 10 of them.
    for _ in range(200):
        if limiter.try_acquire():
            sent.append(clock.monotonic())
        clock.advance(0.5)
    for i, start in enumerate(sent):
        in_window = [t for t in sent[i:] if t < start + 60]
        assert len(in_window) <= 10
    # ...and it is not needlessly slow: 100 s of demand at 2/s gets ~ 10 per minute.
    assert len(sent) >= 10 * (100 // 60)


async def test_acquire_paces_75_requests_per_minute_without_real_sleeping() -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    start = clock.monotonic()
    for _ in range(75 * 3):
        await limiter.acquire()
    # Three windows' worth: the first 75 at once, then one window per further 75.
    assert clock.monotonic() - start == pytest.approx(120.0)


async def test_concurrent_acquirers_never_exceed_the_limit() -> None:
    clock = FakeClock()
    limiter = RateLimiter(5, clock)
    times: list[float] = []

    async def worker() -> None:
        for _ in range(4):
            times.append(await limiter.acquire())

    await asyncio.gather(*(worker() for _ in range(5)))
    times.sort()
    assert len(times) == 20
    for i in range(len(times) - 5):
        assert times[i + 5] - times[i] >= 60.0


def test_remaining_zero_blocks_until_the_reset_in_seconds() -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    assert limiter.try_acquire()
    limiter.observe({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "17"})
    assert limiter.delay() == pytest.approx(17.0)
    clock.advance(17)
    assert limiter.try_acquire()


def test_reset_as_epoch_seconds_uses_the_local_wall_clock() -> None:
    clock = FakeClock(start=1_700_000_000.0)
    limiter = RateLimiter(75, clock)
    limiter.observe(
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(clock.time()) + 42)}
    )
    assert limiter.delay() == pytest.approx(42.0)


@pytest.mark.parametrize("skew_hours", [-5, -1, 1, 5])
def test_a_server_clock_wrong_by_hours_never_blocks_longer_than_a_window(skew_hours: int) -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    server_now = clock.time() + skew_hours * 3600
    limiter.observe({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(server_now + 30)})
    assert 0 < limiter.delay() <= 60.0
    clock.advance(60)
    assert limiter.try_acquire()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),
        ("0", 1.0),  # "now": the server has not rolled yet, wait a moment
        ("600", 60.0),  # more than a window: clamped
        ("1700000045", 45.0),  # epoch, 45 s ahead of the local clock
        ("1699999990", 1.0),  # epoch, slightly past: a moment
        ("1699990000", 60.0),  # epoch, hours past: a clock is wrong, assume a window
        ("12.5", 12.5),
        ("soon", None),
    ],
)
def test_parse_reset(value: str, expected: float | None) -> None:
    assert parse_reset(value, now_epoch=1_700_000_000.0) == expected


def test_server_remaining_slows_down_instances_sharing_the_account() -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    sent_at = clock.monotonic()
    assert limiter.try_acquire()
    # Another instance used most of the minute: only 10 left for this window.
    limiter.observe(
        {"X-RateLimit-Limit": "75", "X-RateLimit-Remaining": "10", "X-RateLimit-Reset": "40"},
        sent_at=sent_at,
    )
    assert burst(limiter) == 10
    assert limiter.delay() == pytest.approx(40.0)


def test_requests_still_in_flight_are_deducted_from_the_server_remaining() -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    first = clock.monotonic()
    assert limiter.try_acquire()
    clock.advance(0.01)
    for _ in range(4):
        assert limiter.try_acquire()
    # The answer to the first request says 5 left, but 4 later requests were not counted yet.
    limiter.observe({"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "30"}, sent_at=first)
    assert burst(limiter) == 1


def test_out_of_order_responses_in_one_window_only_shrink_the_budget() -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    limiter.observe({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "30"})
    # An older response, processed earlier by the server, arrives late with a larger count.
    limiter.observe({"X-RateLimit-Remaining": "20", "X-RateLimit-Reset": "30"})
    assert burst(limiter) == 3


def test_a_new_server_window_replaces_the_old_budget() -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    limiter.observe({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "5"})
    clock.advance(5)
    limiter.observe({"X-RateLimit-Remaining": "74", "X-RateLimit-Reset": "60"})
    assert burst(limiter) == 74


def test_limit_header_lowers_the_limit() -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    limiter.observe({"X-RateLimit-Limit": "20"})
    assert limiter.limit == 20
    assert burst(limiter) == 20


def test_limit_header_raises_the_limit() -> None:
    clock = FakeClock()
    limiter = RateLimiter(35, clock)
    assert burst(limiter) == 35
    limiter.observe({"X-RateLimit-Limit": "150"})
    assert burst(limiter) == 115


def test_headers_match_case_insensitively() -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    limiter.observe(
        {"x-ratelimit-limit": "50", "X-RATELIMIT-REMAINING": "2", "x-RateLimit-reset": "9"}
    )
    assert limiter.limit == 50
    assert burst(limiter) == 2
    assert limiter.delay() == pytest.approx(9.0)


def test_garbage_headers_are_ignored() -> None:
    clock = FakeClock()
    limiter = RateLimiter(5, clock)
    limiter.observe(
        {"X-RateLimit-Limit": "lots", "X-RateLimit-Remaining": "", "X-RateLimit-Reset": "x"}
    )
    assert limiter.limit == 5
    assert burst(limiter) == 5


def test_throttled_blocks_everything_until_the_reset() -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    assert limiter.throttled(12.0) == pytest.approx(12.0)
    assert not limiter.try_acquire()
    assert limiter.status().available == 0
    clock.advance(11.9)
    assert not limiter.try_acquire()
    clock.advance(0.1)
    assert limiter.try_acquire()


def test_throttled_without_retry_after_uses_the_known_reset_else_a_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    limiter.observe({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "25"})
    assert limiter.throttled(None) == pytest.approx(25.0)
    clock.advance(25)
    other = RateLimiter(75, clock)
    assert other.throttled(None) == pytest.approx(60.0)


async def test_a_429_seen_while_waiting_is_obeyed_by_the_waiter() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, clock)
    await limiter.acquire()

    async def late_429() -> None:
        # Runs while the acquirer sleeps: another request's response was a 429.
        limiter.throttled(90.0)

    started = clock.monotonic()
    await asyncio.gather(limiter.acquire(), late_429())
    assert clock.monotonic() - started == pytest.approx(60.0 + 90.0)


def test_status_reports_what_the_limiter_knows() -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock, operation="add")
    for _ in range(5):
        limiter.try_acquire()
    limiter.observe({"X-RateLimit-Remaining": "60", "X-RateLimit-Reset": "30"})
    status = limiter.status()
    assert status.operation == "add"
    assert status.limit == 75
    assert status.server_remaining == 60
    assert status.available == 60
    assert status.reset_in == pytest.approx(30.0)
    assert status.blocked_for == 0


def test_rejects_a_non_positive_limit() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0, FakeClock())


# -- hostile headers: bounded, never raising ------------------------------------------------

NOW_EPOCH = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12", 12.0),
        (" 7.5 ", 7.5),
        ("0", 0.0),
        # Past the cap (one hour: DotDigital's longest window, the flat scheme's): capped.
        ("99999999", MAX_RETRY_AFTER_SECONDS),
        ("1e308", MAX_RETRY_AFTER_SECONDS),
        ("1e400", MAX_RETRY_AFTER_SECONDS),
        ("inf", MAX_RETRY_AFTER_SECONDS),
        ("Infinity", MAX_RETRY_AFTER_SECONDS),
        # An epoch value, like X-RateLimit-Reset's: relative to the clock, then bounded.
        (str(NOW_EPOCH + 30), 30.0),
        (str(NOW_EPOCH + 10 * 365 * 86400), MAX_RETRY_AFTER_SECONDS),
        (str(NOW_EPOCH - 3600), 0.0),
        # An HTTP-date (RFC 9110 10.2.3), relative to the clock.
        ("Tue, 14 Nov 2023 22:15:00 GMT", 100.0),
        ("Tue, 14 Nov 2023 22:00:00 GMT", 0.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER_SECONDS),
        # Meaningless: unknown, so the caller falls back on the reset it knows.
        ("-5", None),
        ("-inf", None),
        ("nan", None),
        ("", None),
        ("soon", None),
        ("Mon, 99 Foo 2023 99:99:99 GMT", None),
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    assert parse_retry_after(value, NOW_EPOCH) == expected


@pytest.mark.parametrize("retry_after", [float("inf"), 1e300, 1.7e9, float("nan"), -1.0])
def test_throttled_never_blocks_beyond_the_cap(retry_after: float) -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    blocked = limiter.throttled(retry_after)
    assert 0 < blocked <= MAX_RETRY_AFTER_SECONDS
    assert limiter.blocked_for() == pytest.approx(blocked)
    clock.advance(MAX_RETRY_AFTER_SECONDS)
    assert limiter.try_acquire()
    assert limiter.blocked_for() == 0.0


@pytest.mark.parametrize(
    "value", ["inf", "-inf", "nan", "1e400", "1e308", "9" * 400, "0x10", "", "  "]
)
def test_observe_survives_any_rate_limit_header_value(value: str) -> None:
    clock = FakeClock()
    limiter = RateLimiter(75, clock)
    limiter.observe(
        {
            "X-RateLimit-Limit": value,
            "X-RateLimit-Remaining": value,
            "X-RateLimit-Reset": value,
        }
    )
    status = limiter.status()
    assert status.limit >= 1
    # A budget is never blocked for longer than a window by these headers.
    assert limiter.delay() <= 60.0
    assert status.reset_in is None or status.reset_in <= 60.0


HEADER_VALUES = st.one_of(
    st.text(),
    st.floats().map(repr),
    st.integers().map(str),
    st.sampled_from(
        ["inf", "-Infinity", "NaN", "1e400", "9" * 400, "Fri, 31 Dec 9999 23:59:59 GMT"]
    ),
)


@given(HEADER_VALUES, st.floats(min_value=0, max_value=4e9))
@settings(max_examples=300, deadline=None)
def test_no_header_value_raises_or_escapes_its_bound(value: str, now_epoch: float) -> None:
    seconds = parse_retry_after(value, now_epoch)
    assert seconds is None or 0 <= seconds <= MAX_RETRY_AFTER_SECONDS
    reset = parse_reset(value, now_epoch)
    assert reset is None or 0 < reset <= 60.0
    limiter = RateLimiter(75, FakeClock())
    limiter.observe(
        {"X-RateLimit-Limit": value, "X-RateLimit-Remaining": value, "X-RateLimit-Reset": value}
    )
    assert limiter.delay() <= 60.0
