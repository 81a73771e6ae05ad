"""A realistic stream of transitions, for ``make run``, the end-to-end tests and benchmarks.

:func:`generate` is deterministic for a seed. It yields Kafka records (key = profile id, value =
a version-1 transition) across the given address books: profiles entering, some leaving later,
some entering and leaving within moments (one window), and, when asked, a share of bad records
of every kind a producer gets wrong (not JSON, wrong shape, no DotDigital identifier, unknown
connector, an address DotDigital rejects).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson


@dataclass(frozen=True)
class DemoRecord:
    key: bytes
    value: bytes
    # What the record is meant to be, for the demo's own bookkeeping and the tests' oracle.
    bad: str | None = None


@dataclass(frozen=True)
class Target:
    connector_id: str
    address_book_id: int


BAD_KINDS = ("not_json", "wrong_shape", "missing_identifier", "unknown_connector", "rejected")


def transition(
    *,
    event_id: str,
    profile_id: str,
    email: str | None,
    target: Target,
    action: str,
    occurred_at: datetime,
    kind: str = "audience",
) -> dict[str, object]:
    partner_ids: dict[str, str] = {} if email is None else {"34": email}
    return {
        "event_id": event_id,
        "kind": kind,
        "source_id": f"{kind}-{target.address_book_id}",
        "action": action,
        "occurred_at": occurred_at.isoformat().replace("+00:00", "Z"),
        "connector_id": target.connector_id,
        "address_book_id": target.address_book_id,
        "profile": {"id": profile_id, "partner_ids": partner_ids},
    }


def generate(
    targets: Sequence[Target],
    count: int,
    *,
    profiles: int = 2000,
    seed: int = 7,
    bad_share: float = 0.0,
    remove_share: float = 0.3,
) -> Iterator[DemoRecord]:
    """``count`` records; about ``remove_share`` of the good ones are exits of earlier entries."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    members: dict[Target, list[str]] = {t: [] for t in targets}
    for n in range(count):
        occurred = start + timedelta(milliseconds=n)
        event_id = f"evt-{seed}-{n}"
        if bad_share and rng.random() < bad_share:
            yield _bad(rng, n, event_id, targets, occurred)
            continue
        target = targets[rng.randrange(len(targets))]
        current = members[target]
        if current and rng.random() < remove_share:
            profile = current.pop(rng.randrange(len(current)))
            action = "remove"
        else:
            profile = f"profile-{rng.randrange(profiles)}"
            current.append(profile)
            action = "add"
        value = transition(
            event_id=event_id,
            profile_id=profile,
            email=f"{profile}@example.com",
            target=target,
            action=action,
            occurred_at=occurred,
            kind="journey" if target.address_book_id % 5 == 0 else "audience",
        )
        yield DemoRecord(profile.encode(), orjson.dumps(value))


def _bad(
    rng: random.Random, n: int, event_id: str, targets: Sequence[Target], occurred: datetime
) -> DemoRecord:
    kind = BAD_KINDS[n % len(BAD_KINDS)]
    target = targets[rng.randrange(len(targets))]
    profile = f"bad-profile-{n}"
    if kind == "not_json":
        return DemoRecord(profile.encode(), b"{this is not json", kind)
    if kind == "wrong_shape":
        value = transition(
            event_id=event_id,
            profile_id=profile,
            email=f"{profile}@example.com",
            target=target,
            action="teleport",
            occurred_at=occurred,
        )
        return DemoRecord(profile.encode(), orjson.dumps(value), kind)
    email = {
        "missing_identifier": None,
        "unknown_connector": f"{profile}@example.com",
        "rejected": f"{profile}@no-top-level-domain",
    }[kind]
    if kind == "unknown_connector":
        target = Target("no-such-connector", target.address_book_id)
    value = transition(
        event_id=event_id,
        profile_id=profile,
        email=email,
        target=target,
        action="add",
        occurred_at=occurred,
    )
    return DemoRecord(profile.encode(), orjson.dumps(value), kind)
