"""The contact id cache on a fake clock: bounded, expiring, and when each id was learnt."""

from __future__ import annotations

import pytest

from stream.clock import FakeClock
from stream.dotdigital.contact_ids import ContactIds


def test_remembers_an_id_with_the_wall_time_it_was_learnt() -> None:
    clock = FakeClock(1_800_000_000.0)
    ids = ContactIds(10, 3600, clock)
    ids.learn("a@example.com", 7)
    learnt = ids.get("a@example.com")
    assert learnt is not None
    assert (learnt.contact_id, learnt.at) == (7, 1_800_000_000.0)
    assert ids.get("b@example.com") is None


def test_an_entry_expires_after_its_ttl_and_relearning_restarts_it() -> None:
    clock = FakeClock()
    ids = ContactIds(10, 60, clock)
    ids.learn("a@example.com", 1)
    clock.advance(59)
    ids.learn("a@example.com", 2)
    clock.advance(59)
    learnt = ids.get("a@example.com")
    assert learnt is not None
    assert learnt.contact_id == 2
    clock.advance(1)
    assert ids.get("a@example.com") is None
    assert len(ids) == 0


def test_the_oldest_learnt_are_dropped_first_when_full() -> None:
    clock = FakeClock()
    ids = ContactIds(20, 3600, clock)
    for index in range(20):
        ids.learn(f"{index}@example.com", index)
        clock.advance(1)
    ids.learn("0@example.com", 100)  # relearnt: now the youngest
    ids.learn("new@example.com", 21)
    assert len(ids) <= 20
    assert ids.get("1@example.com") is None
    assert ids.get("2@example.com") is None
    assert ids.get("0@example.com") is not None
    assert ids.get("new@example.com") is not None
    ids.forget("new@example.com")
    assert ids.get("new@example.com") is None


def test_size_and_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ContactIds(0, 1, FakeClock())
