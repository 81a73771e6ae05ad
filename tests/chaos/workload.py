"""The chaos run's input: profiles entering and leaving audiences of two connectors' books.

Deterministic for a seed. Each profile keeps one id (the record key, so one partition) and one
address; about ``rejected_share`` of the profiles have an address that passes ddsync's checks
and that DotDigital rejects (``contact_rejected``); about ``invalid_share`` of the records are
unusable (not JSON, wrong shape, no identifier, unknown connector), each under a key of its own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import orjson

from stream.core.reasons import Reason
from stream.demo.generator import REJECTED_EMAILS, DemoRecord, Target, email_of, transition

INVALID_KINDS: dict[str, Reason] = {
    "not_json": Reason.INVALID_EVENT,
    "wrong_shape": Reason.INVALID_EVENT,
    "missing_identifier": Reason.MISSING_IDENTIFIER,
    "unknown_connector": Reason.UNKNOWN_CONNECTOR,
}
REJECTED = "rejected"


def profile_email(rng: random.Random, profile: str, rejected_share: float) -> tuple[str, bool]:
    if rng.random() < rejected_share:
        return rng.choice(REJECTED_EMAILS).format(profile=profile), True
    return email_of(profile), False


def generate(
    targets: Sequence[Target],
    count: int,
    *,
    seed: int,
    profiles: int,
    rejected_share: float = 0.02,
    invalid_share: float = 0.01,
) -> list[DemoRecord]:
    """``count`` records; a good record's ``bad`` is ``"rejected"`` when DotDigital will refuse
    its address, else ``None``; an invalid record's ``bad`` is its kind (``INVALID_KINDS``)."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    emails: dict[str, tuple[str, bool]] = {}
    members: set[tuple[Target, str]] = set()
    records: list[DemoRecord] = []
    for n in range(count):
        occurred = start + timedelta(milliseconds=10 * n)
        event_id = f"chaos-{seed}-{n}"
        target = targets[rng.randrange(len(targets))]
        if rng.random() < invalid_share:
            records.append(_invalid(rng, n, event_id, target, occurred))
            continue
        profile = f"profile-{rng.randrange(profiles)}"
        if profile not in emails:
            emails[profile] = profile_email(rng, profile, rejected_share)
        email, rejected = emails[profile]
        # Members mostly leave, non-members mostly enter; now and then a repeat of either, as
        # at-least-once sources send.
        member = (target, profile) in members
        leave = rng.random() < (0.85 if member else 0.1)
        if leave:
            members.discard((target, profile))
        else:
            members.add((target, profile))
        spelt = email.upper() if rng.random() < 0.05 else email
        value = transition(
            event_id=event_id,
            profile_id=profile,
            email=spelt,
            target=target,
            action="remove" if leave else "add",
            occurred_at=occurred,
            kind="journey" if target.address_book_id % 5 == 0 else "audience",
        )
        records.append(
            DemoRecord(profile.encode(), orjson.dumps(value), REJECTED if rejected else None)
        )
    return records


def _invalid(
    rng: random.Random, n: int, event_id: str, target: Target, occurred: datetime
) -> DemoRecord:
    kind = rng.choice(list(INVALID_KINDS))
    key = f"invalid-{n}".encode()
    if kind == "not_json":
        return DemoRecord(key, b'{"event_id": "' + event_id.encode() + b'", oops', kind)
    email: str | None = f"invalid-{n}@example.com"
    action = "add"
    if kind == "wrong_shape":
        action = "teleport"
    elif kind == "missing_identifier":
        email = None
    else:
        target = Target("no-such-connector", target.address_book_id)
    value = transition(
        event_id=event_id,
        profile_id=key.decode(),
        email=email,
        target=target,
        action=action,
        occurred_at=occurred,
    )
    return DemoRecord(key, orjson.dumps(value), kind)
