"""The retry policy against a fake clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from stream.clock import FakeClock
from stream.dotdigital.errors import (
    AuthenticationError,
    DotDigitalError,
    PermanentError,
    RetriesExhausted,
    ThrottledError,
    TransientError,
    WrongRegionError,
)
from stream.dotdigital.retry import RetryPolicy


class Script:
    """An operation that fails with the given errors, then returns "ok"."""

    def __init__(self, *errors: DotDigitalError) -> None:
        self.errors: Iterator[DotDigitalError] = iter(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        error = next(self.errors, None)
        if error is not None:
            raise error
        return "ok"


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


def test_transient_backoff_is_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0, random=fixed(0.999999))
    error = TransientError("boom", status=503)
    ceilings = [policy.delay(error, attempt) for attempt in range(8)]
    assert ceilings == pytest.approx([0.5, 1, 2, 4, 8, 16, 30, 30], rel=1e-5)
    low = RetryPolicy(random=fixed(0.0))
    assert low.delay(error, 5) == 0.0  # full jitter reaches down to zero


def test_throttled_waits_for_the_reset_plus_a_little_jitter() -> None:
    policy = RetryPolicy(throttle_jitter=0.1, random=fixed(0.5))
    assert policy.delay(ThrottledError("x", status=429, retry_after=20.0), 0) == pytest.approx(21.0)
    assert policy.delay(ThrottledError("x", status=429), 0) == pytest.approx(63.0)


def test_never_retries_permanent_or_wrong_region() -> None:
    policy = RetryPolicy()
    assert policy.delay(PermanentError("bad", status=400), 0) is None
    assert policy.delay(WrongRegionError("elsewhere", status=403), 0) is None


def test_authentication_is_retried_only_when_asked() -> None:
    error = AuthenticationError("no", status=401)
    assert RetryPolicy().delay(error, 0) is None
    assert RetryPolicy(retry_authentication=True, random=fixed(0.5)).delay(error, 0) == 0.25


async def test_run_retries_transient_errors_until_success() -> None:
    clock = FakeClock()
    operation = Script(TransientError("a", status=500), TransientError("b", status=503))
    result = await RetryPolicy(random=fixed(1.0)).run(operation, clock)
    assert result == "ok"
    assert operation.calls == 3
    assert clock.slept == [0.5, 1.0]


async def test_run_waits_for_retry_after_when_throttled() -> None:
    clock = FakeClock()
    operation = Script(ThrottledError("slow down", status=429, retry_after=7.0))
    assert await RetryPolicy(random=fixed(0.0)).run(operation, clock) == "ok"
    assert clock.slept == [7.0]


async def test_run_raises_permanent_errors_at_once() -> None:
    clock = FakeClock()
    operation = Script(PermanentError("bad request", status=400))
    with pytest.raises(PermanentError, match="bad request"):
        await RetryPolicy().run(operation, clock)
    assert operation.calls == 1
    assert clock.slept == []


async def test_run_raises_authentication_errors_at_once_by_default() -> None:
    operation = Script(AuthenticationError("denied", status=401))
    with pytest.raises(AuthenticationError):
        await RetryPolicy().run(operation, FakeClock())
    assert operation.calls == 1


async def test_run_gives_up_with_the_last_error_when_the_budget_is_spent() -> None:
    clock = FakeClock()
    errors = [TransientError(f"fail {i}", status=503) for i in range(100)]
    operation = Script(*errors)
    policy = RetryPolicy(total_seconds=60.0, base_delay=1.0, max_delay=8.0, random=fixed(1.0))
    started = clock.monotonic()
    with pytest.raises(RetriesExhausted) as caught:
        await policy.run(operation, clock)
    exhausted = caught.value
    assert isinstance(exhausted.last_error, TransientError)
    assert exhausted.last_error.message == f"fail {operation.calls - 1}"
    assert exhausted.attempts == operation.calls
    assert exhausted.status == 503
    # Retried for the whole budget and never past it: sleeps 1+2+4+8*6 = 55, the next 8 is
    # cut to the 5 left, and the attempt at the deadline is the last.
    assert clock.monotonic() - started == 60.0
    assert clock.slept == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 5.0]
    assert operation.calls == 11


async def test_time_not_counted_moves_the_deadline_out() -> None:
    clock = FakeClock()
    queued = 0.0

    async def queued_then_failing() -> str:
        # Each attempt first waits 50 s for a rate limiter (not failing), then fails at once.
        nonlocal queued
        await clock.sleep(50.0)
        queued += 50.0
        raise TransientError("boom", status=503)

    policy = RetryPolicy(total_seconds=60.0, base_delay=1.0, max_delay=1.0, random=fixed(1.0))
    started = clock.monotonic()
    with pytest.raises(RetriesExhausted) as caught:
        await policy.run(queued_then_failing, clock, not_counted=lambda: queued)
    # 60 s of failing (1 s sleeps) fit beside the queueing: 61 attempts, not the 2 that
    # fit if the 50 s waits counted.
    assert caught.value.attempts == 61
    assert clock.monotonic() - started == pytest.approx(61 * 50.0 + 60 * 1.0)


async def test_run_retries_authentication_until_the_deadline_when_asked() -> None:
    clock = FakeClock()
    operation = Script(*[AuthenticationError("denied", status=401) for _ in range(1000)])
    policy = RetryPolicy(retry_authentication=True, random=fixed(1.0))
    deadline = clock.monotonic() + 100.0
    with pytest.raises(RetriesExhausted) as caught:
        await policy.run(operation, clock, deadline=deadline)
    assert isinstance(caught.value.last_error, AuthenticationError)
    assert clock.monotonic() <= deadline
    assert operation.calls > 3


async def test_credentials_refused_once_among_5xx_are_remembered_when_it_gives_up() -> None:
    # A wrong password behind a flaky DotDigital: the last attempt may be a 5xx, yet the
    # credentials were refused; that decides the dead letters' reason and the suspension.
    clock = FakeClock()
    refused = AuthenticationError("denied", status=401)
    operation = Script(refused, *[TransientError("503", status=503) for _ in range(1000)])
    policy = RetryPolicy(retry_authentication=True, random=fixed(1.0))
    with pytest.raises(RetriesExhausted) as caught:
        await policy.run(operation, clock, deadline=clock.monotonic() + 100.0)
    assert isinstance(caught.value.last_error, TransientError)
    assert caught.value.refused is refused


async def test_no_refusal_among_the_attempts_is_none() -> None:
    clock = FakeClock()
    operation = Script(*[TransientError("503", status=503) for _ in range(1000)])
    with pytest.raises(RetriesExhausted) as caught:
        await RetryPolicy(random=fixed(1.0)).run(operation, clock, deadline=clock.monotonic() + 9)
    assert caught.value.refused is None


async def test_run_does_not_wait_for_a_reset_beyond_the_deadline() -> None:
    clock = FakeClock()
    operation = Script(ThrottledError("429", status=429, retry_after=50.0))
    with pytest.raises(RetriesExhausted):
        await RetryPolicy(random=fixed(0.0)).run(operation, clock, deadline=clock.monotonic() + 10)
    assert clock.slept == []


async def test_a_reset_within_the_deadline_is_waited_for_whatever_the_jitter() -> None:
    clock = FakeClock()
    operation = Script(ThrottledError("429", status=429, retry_after=9.0))
    policy = RetryPolicy(throttle_jitter=0.5, random=fixed(0.99))
    assert await policy.run(operation, clock, deadline=clock.monotonic() + 10) == "ok"
    # The jitter (up to 4.5 s here) is cut at the deadline; the reset itself fits.
    assert clock.slept == [10.0]


async def test_an_exhausted_nested_call_is_not_retried_again() -> None:
    inner = RetriesExhausted(TransientError("x", status=500), attempts=3, elapsed=1.0)
    operation = Script(inner)
    with pytest.raises(RetriesExhausted) as caught:
        await RetryPolicy().run(operation, FakeClock())
    assert caught.value is inner
    assert operation.calls == 1


async def test_at_least_one_attempt_even_with_a_past_deadline() -> None:
    clock = FakeClock()
    operation = Script()
    assert await RetryPolicy().run(operation, clock, deadline=clock.monotonic() - 5) == "ok"


async def test_a_nan_retry_after_waits_the_throttle_delay() -> None:
    clock = FakeClock()
    operation = Script(ThrottledError("slow down", status=429, retry_after=float("nan")))
    policy = RetryPolicy(throttle_delay=9.0, random=fixed(0.0))
    assert await policy.run(operation, clock) == "ok"
    assert clock.slept == [9.0]


@pytest.mark.parametrize("retry_after", [float("inf"), 1e300, 601.0])
async def test_a_retry_after_beyond_the_budget_gives_up_at_once(retry_after: float) -> None:
    clock = FakeClock()
    operation = Script(ThrottledError("slow down", status=429, retry_after=retry_after))
    with pytest.raises(RetriesExhausted):
        await RetryPolicy(total_seconds=600.0).run(operation, clock)
    assert operation.calls == 1
    assert clock.slept == []
