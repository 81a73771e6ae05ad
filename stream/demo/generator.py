"""A realistic stream of transitions, for ``make run``, the end-to-end tests and benchmarks.

:func:`generate` is deterministic for a seed. It yields Kafka records (key = profile id, value =
a version-1 transition) across the given address books, shaped like what customer-data
platforms really send:

* profiles entering, some leaving later, some entering and leaving within moments (one window);
* email addresses as people type them: internationalised local parts (``josé.müller``,
  ``用户``), plus-addressing and apostrophes, mixed-case domains, the same address spelt with
  another case or with stray spaces from one record to the next;
* when asked (``duplicate_share``), records delivered twice, as at-least-once producers do;
* when asked (``bad_share``), bad records of every kind a producer gets wrong, interleaved with
  the good ones: not JSON, wrong shape, no DotDigital identifier, a malformed email address,
  an unknown connector, an address DotDigital rejects.

:func:`realistic` is the mix the end-to-end tests, the benchmark and the demo use: 3% bad
records and 2% duplicates. Produced before ddsync starts, it is also a backlog.
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


BAD_KINDS = (
    "not_json",
    "wrong_shape",
    "missing_identifier",
    "malformed_email",
    "unknown_connector",
    "rejected",
)
# How good addresses look: most plain, some as people and other systems type them.
LOCAL_PARTS = (
    "{profile}",
    "{profile}",
    "{profile}",
    "{profile}",
    "first.last+news{n}",
    "josé.müller.{n}",
    "用户{n}",
    "o'brien.{n}",
    "Anna.Svensson.{n}",
)
DOMAINS = ("example.com", "Example.com", "mail.example.org", "EXAMPLE.NET", "example.co.uk")
# Shaped wrong: ddsync rejects them itself (missing_identifier) ...
MALFORMED_EMAILS = ("{profile}.example.com", "{profile} smith@example.com", "   ", "{profile}@")
# ... or they pass as addresses and DotDigital rejects them (contact_rejected).
REJECTED_EMAILS = ("{profile}@no-top-level-domain", "{profile}@@example.com", "{profile}@example.")


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
    duplicate_share: float = 0.0,
) -> Iterator[DemoRecord]:
    """``count`` records; about ``remove_share`` of the good ones are exits of earlier entries,
    about ``duplicate_share`` of them come twice in a row (the same key and value)."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    members: dict[Target, list[str]] = {t: [] for t in targets}
    n = 0
    while n < count:
        occurred = start + timedelta(milliseconds=n)
        event_id = f"evt-{seed}-{n}"
        if bad_share and rng.random() < bad_share:
            yield _bad(rng, n, event_id, targets, occurred)
            n += 1
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
            email=_spelling(rng, email_of(profile)),
            target=target,
            action=action,
            occurred_at=occurred,
            kind="journey" if target.address_book_id % 5 == 0 else "audience",
        )
        record = DemoRecord(profile.encode(), orjson.dumps(value))
        yield record
        n += 1
        if duplicate_share and n < count and rng.random() < duplicate_share:
            yield record
            n += 1


def realistic(
    targets: Sequence[Target], count: int, *, seed: int = 7, profiles: int = 2000
) -> Iterator[DemoRecord]:
    """The mix of the end-to-end tests, the benchmark and the demo: 3% bad, 2% duplicates."""
    return generate(
        targets, count, seed=seed, profiles=profiles, bad_share=0.03, duplicate_share=0.02
    )


def email_of(profile: str) -> str:
    """The address a profile signed up with (stable per profile)."""
    n = int(profile.rsplit("-", 1)[-1])
    local = LOCAL_PARTS[n % len(LOCAL_PARTS)].format(profile=profile, n=n)
    return f"{local}@{DOMAINS[(n // len(LOCAL_PARTS)) % len(DOMAINS)]}"


def _spelling(rng: random.Random, email: str) -> str:
    """How one record spells the address: now and then another case, or stray spaces."""
    roll = rng.random()
    if roll < 0.05:
        local, domain = email.rsplit("@", 1)
        return f"{local}@{domain.upper()}"
    if roll < 0.08:
        return f" {email} "
    return email


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
        "malformed_email": rng.choice(MALFORMED_EMAILS).format(profile=profile),
        "unknown_connector": f"{profile}@example.com",
        "rejected": rng.choice(REJECTED_EMAILS).format(profile=profile),
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
