"""Connector suspensions on a fake clock: what suspends, what is probed when, what resumes."""

from __future__ import annotations

from stream.clock import FakeClock
from stream.core.reasons import Reason
from stream.core.suspensions import Suspensions

PROBE = 60.0


def suspensions(*connectors: str) -> tuple[Suspensions, FakeClock]:
    clock = FakeClock()
    return Suspensions(connectors or ("eu", "us"), clock, PROBE), clock


def test_credentials_refused_suspend_only_that_connector() -> None:
    s, clock = suspensions()
    got = s.failed("eu", 1, Reason.AUTH_FAILED, None, "HTTP 401", account_level=True)
    assert got is not None
    assert got.cause is Reason.AUTH_FAILED
    assert got.since == clock.time()
    assert s.of("eu") is got
    assert s.of("us") is None
    assert not s.all_suspended
    # Suspended once: a later failure of the same connector changes nothing.
    assert s.failed("eu", 2, Reason.AUTH_FAILED, None, "again", account_level=True) is None
    assert s.of("eu") is got


def test_a_contact_or_batch_failure_suspends_nothing() -> None:
    s, _ = suspensions()
    for reason in (Reason.CONTACT_REJECTED, Reason.RETRIES_EXHAUSTED, Reason.IMPORT_FAILED):
        assert s.failed("eu", 1, reason, None, "no", account_level=False) is None
    assert s.suspended == ()


def test_every_seen_book_gone_suspends_one_gone_among_live_ones_does_not() -> None:
    s, _ = suspensions()
    s.seen("eu", 1)
    s.seen("eu", 2)
    gone = Reason.ADDRESS_BOOK_NOT_FOUND
    assert s.failed("eu", 1, gone, "ERROR_ADDRESSBOOK_NOT_FOUND", "1", account_level=False) is None
    got = s.failed("eu", 2, gone, "ERROR_ADDRESSBOOK_NOT_FOUND", "2", account_level=False)
    assert got is not None
    assert "every address book" in got.message
    assert s.gone_books("eu") == {1, 2}


def test_a_success_of_a_book_clears_its_gone_mark() -> None:
    s, _ = suspensions()
    s.seen("eu", 1)
    s.seen("eu", 2)
    gone = Reason.ADDRESS_BOOK_NOT_FOUND
    s.failed("eu", 1, gone, None, "1", account_level=False)
    s.succeeded("eu", 1)  # re-created with the same id, say
    assert s.failed("eu", 2, gone, None, "2", account_level=False) is None


def test_probes_come_every_interval_until_one_succeeds() -> None:
    s, clock = suspensions()
    s.failed("eu", 1, Reason.AUTH_FAILED, None, "401", account_level=True)
    assert s.due() == []
    clock.advance(PROBE - 1)
    assert s.due() == []
    clock.advance(1)
    assert s.due() == ["eu"]
    assert s.due() == [], "a probe under way is not started twice"
    assert s.probed("eu", ok=False) is None
    assert s.of("eu") is not None
    clock.advance(PROBE)
    assert s.due() == ["eu"]
    resumed = s.probed("eu", ok=True)
    assert resumed is not None
    assert resumed.connector == "eu"
    assert s.of("eu") is None
    clock.advance(10 * PROBE)
    assert s.due() == []


def test_every_configured_connector_suspended_is_all_suspended() -> None:
    s, _ = suspensions()
    s.failed("eu", 1, Reason.AUTH_FAILED, None, "401", account_level=True)
    assert not s.all_suspended
    s.failed("us", 1, Reason.AUTH_FAILED, None, "401", account_level=True)
    assert s.all_suspended
    assert "connector eu suspended (auth_failed)" in s.describe()
    assert "connector us suspended (auth_failed)" in s.describe()


def test_no_connectors_is_never_all_suspended_and_unknown_ones_are_ignored() -> None:
    s, _ = suspensions("eu")
    assert s.failed("other", 1, Reason.AUTH_FAILED, None, "401", account_level=True) is None
    assert not Suspensions((), FakeClock(), PROBE).all_suspended
    assert s.describe() == "no connector suspended"
