"""The stream generator shared by the end-to-end tests, the benchmark and the demo: what it
produces is what customer-data platforms send, and each record is what it says it is."""

from __future__ import annotations

import itertools
from collections import Counter

import orjson
import pytest

from stream.core.events import InvalidRecord, decode_transition
from stream.core.reasons import Reason
from stream.demo.generator import BAD_KINDS, DemoRecord, Target, generate, realistic
from stream.settings import ConnectorSettings, Secret

CONNECTORS = {"main": ConnectorSettings(name="main", username="u", password=Secret("p"))}
TARGETS = [Target("main", book) for book in range(1, 11)]
# What ddsync itself says of each bad kind; "rejected" passes ddsync and DotDigital refuses it.
DECODE_REASON = {
    "not_json": Reason.INVALID_EVENT,
    "wrong_shape": Reason.INVALID_EVENT,
    "missing_identifier": Reason.MISSING_IDENTIFIER,
    "malformed_email": Reason.MISSING_IDENTIFIER,
    "unknown_connector": Reason.UNKNOWN_CONNECTOR,
}


def email(record: DemoRecord) -> str:
    value: str = orjson.loads(record.value)["profile"]["partner_ids"]["34"]
    return value


def test_every_record_is_what_it_says_it_is() -> None:
    records = list(realistic(TARGETS, 20_000))
    kinds = Counter(record.bad for record in records)
    assert set(kinds) == {None, *BAD_KINDS}
    assert 0.025 < sum(n for kind, n in kinds.items() if kind) / len(records) < 0.035
    for record in records:
        if record.bad in DECODE_REASON:
            with pytest.raises(InvalidRecord) as rejected:
                decode_transition(record.value, CONNECTORS)
            assert rejected.value.reason is DECODE_REASON[record.bad], record
        else:
            decode_transition(record.value, CONNECTORS)  # good, or refused by DotDigital only


def test_addresses_look_like_real_ones() -> None:
    good = [email(r) for r in realistic(TARGETS, 20_000) if r.bad is None]
    assert any(not e.isascii() for e in good), "internationalised local parts"
    assert any(e.split("@")[1] != e.split("@")[1].lower() for e in good), "mixed-case domains"
    assert any(e != e.strip() for e in good), "stray spaces"
    assert any("+" in e for e in good)
    # One contact, spelt more than one way across its records.
    spellings: dict[str, set[str]] = {}
    for e in good:
        spellings.setdefault(e.strip().lower(), set()).add(e)
    assert any(len(s) > 1 for s in spellings.values())


def test_duplicates_come_as_at_least_once_producers_send_them() -> None:
    records = list(realistic(TARGETS, 20_000))
    twice = sum(1 for a, b in itertools.pairwise(records) if a == b)
    assert 0.01 * len(records) < twice < 0.03 * len(records)
    assert all(a.bad is None for a, b in itertools.pairwise(records) if a == b)
    assert len(records) == 20_000


def test_bad_records_are_spread_through_the_stream() -> None:
    records = list(realistic(TARGETS, 20_000))
    positions = [n for n, r in enumerate(records) if r.bad]
    for tenth in range(10):
        inside = [p for p in positions if tenth * 2000 <= p < (tenth + 1) * 2000]
        assert 30 < len(inside) < 90, f"tenth {tenth}: {len(inside)} bad records"


def test_it_is_deterministic_for_a_seed() -> None:
    assert list(generate(TARGETS, 500, seed=3, bad_share=0.1)) == list(
        generate(TARGETS, 500, seed=3, bad_share=0.1)
    )
