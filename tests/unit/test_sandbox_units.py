"""The sandbox's pure parts without HTTP: accounts, faults, rate limiter, state, and the
OpenAPI helpers' ability to catch a wrong shape."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from stream.clock import FakeClock
from stream.sandbox import (
    AccountsError,
    Faults,
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    load_accounts,
)
from stream.sandbox.app import tier_of
from stream.sandbox.ratelimits import AccountLimits
from stream.sandbox.state import (
    AccountState,
    ContactQuery,
    IdIndex,
    SandboxError,
    SandboxState,
)
from tests.support.openapi import (
    OpenAPIViolation,
    validate_error_body,
    validate_request,
    validate_response,
)

START = 1_700_000_000 - (1_700_000_000 % 3600) + 10.0


def test_password_is_not_in_repr() -> None:
    account = SandboxAccount("u@x.com", "hunter2")
    assert "hunter2" not in repr(account)
    assert "hunter2" not in repr(SandboxSettings(accounts=[account]))


def test_load_accounts_reads_env_passwords(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(
        json.dumps(
            {
                "accounts": [
                    {
                        "username": "u@x.com",
                        "password_env": "PW",
                        "import_delay_seconds": 1,
                        "address_books": [{"id": 3, "name": "B", "visibility": "Public"}],
                    }
                ]
            }
        )
    )
    (account,) = load_accounts(path, environ={"PW": "secret"})
    assert account.password == "secret"
    assert account.import_delay_seconds == 1.0
    assert account.address_books == (SandboxAddressBook(3, "B", "Public"),)
    assert account.password_source == "environment variable PW"
    with pytest.raises(AccountsError, match="PW is not set"):
        load_accounts(path, environ={})


@pytest.mark.parametrize(
    "accounts",
    [
        [],
        [{"username": "a", "password": "p", "add_per_minute": 0}],
        [{"username": "a", "password": "p", "rate_limits_enabled": "yes"}],
        [{"username": "a", "password": "p"}, {"username": "A", "password": "p"}],
        [
            {"username": "a", "password": "p", "address_books": [{"id": 1, "name": "x"}]},
            {"username": "b", "password": "p", "address_books": [{"id": 1, "name": "y"}]},
        ],
        [{"username": "a", "password": "p", "password_env": "X"}],
        [{"username": "a", "password": "p", "tier_layout": "pooled"}],
        [{"username": "a", "password": "p", "tier_layout": 1}],
    ],
)
def test_load_accounts_rejects_bad_files(tmp_path: Path, accounts: list[object]) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"accounts": accounts}))
    with pytest.raises(AccountsError):
        load_accounts(path, environ={"X": "y"})


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        SandboxSettings(error_rate=1.5)
    with pytest.raises(ValueError, match="reset_header"):
        SandboxSettings(reset_header="minutes")  # type: ignore[arg-type]
    assert [a.region for a in SandboxSettings().accounts] == ["r1", "r2"]


def test_faults_update_is_all_or_nothing() -> None:
    faults = Faults()
    with pytest.raises(ValueError, match="drop_rate"):
        faults.update({"error_rate": 0.5, "drop_rate": 3})
    assert faults.error_rate == 0.0
    faults.update({"error_rate": 0.5, "fail_next": 2})
    assert faults.as_dict()["fail_next"] == 2


def test_fault_counters_take_precedence_and_count_down() -> None:
    faults = Faults(fail_next=1, drop_next=1)
    rng = random.Random(0)
    assert [faults.decide(rng) for _ in range(3)] == ["drop", "503", None]


def test_tier_layout_is_read_from_the_accounts_file(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    entries = [
        {"username": "a", "password": "p", "tier_layout": "shared"},
        {"username": "b", "password": "p"},
    ]
    path.write_text(json.dumps({"accounts": entries}))
    assert [a.tier_layout for a in load_accounts(path)] == ["shared", "separate"]
    with pytest.raises(AccountsError, match="tier_layout must be 'separate' or 'shared'"):
        SandboxAccount("u", "p", tier_layout="pooled")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "path", "separate", "shared"),
    [
        ("PUT", "/contacts/v3/import", "add", "low"),
        ("GET", "/contacts/v3/import/x", "other", "other"),
        ("GET", "/contacts/v3", "other", "low"),
        ("GET", "/contacts/v3/email/a@example.com", "other", "other"),
        ("POST", "/v2/address-books/1/contacts/delete", "remove", "low"),
        ("DELETE", "/v2/address-books/1/contacts/2", "remove", "low"),
        ("DELETE", "/v2/address-books/1", "other", "other"),
        ("GET", "/v2/account-info", "other", "other"),
    ],
)
def test_tiers(method: str, path: str, separate: str, shared: str) -> None:
    assert tier_of(method, path) == separate
    assert tier_of(method, path, "separate") == separate
    assert tier_of(method, path, "shared") == shared


def test_the_shared_budget_is_add_per_minute_scoped_low() -> None:
    limiter = AccountLimits(FakeClock(START))
    account = SandboxAccount("u", "p", tier_layout="shared", add_per_minute=2)
    first = limiter.charge(account, "low")
    assert first.headers["X-RateLimit-Scope"] == "lowCallRate"
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert limiter.charge(account, "low").allowed
    assert not limiter.charge(account, "low").allowed
    assert limiter.charge(account, "other").headers["X-RateLimit-Scope"] == "highCallRate"


def test_rate_limiter_windows_are_calendar_minutes() -> None:
    clock = FakeClock(START)
    limiter = AccountLimits(clock)
    account = SandboxAccount("u", "p", remove_per_minute=2)
    assert limiter.charge(account, "remove").allowed
    clock.advance(49)  # one second before the minute ends
    second = limiter.charge(account, "remove")
    assert second.allowed
    assert second.headers["X-RateLimit-Reset"] == "1"
    assert not limiter.charge(account, "remove").allowed
    clock.advance(1)
    fresh = limiter.charge(account, "remove")
    assert fresh.allowed
    assert fresh.headers["X-RateLimit-Remaining"] == "1"
    assert fresh.headers["X-RateLimit-Reset"] == "60"
    assert limiter.calls_in_last_hour(account) == 3


def _state(**kwargs: Any) -> tuple[SandboxState, FakeClock]:
    clock = FakeClock(START)
    account = SandboxAccount(
        "u",
        "p",
        address_books=(SandboxAddressBook(1, "B"),),
        **kwargs,
    )
    return SandboxState([account], clock, retained_jobs=3), clock


def test_jobs_complete_in_due_order_when_settled() -> None:
    state, clock = _state(import_delay_seconds=5, deletion_delay_seconds=5)
    account = state.accounts["u"]
    job = account.submit_import(
        [{"matchIdentifier": "email", "identifiers": {"email": "a@x.com"}, "lists": [1]}]
    )
    assert account.import_status(job.id)["status"] == "NotFinished"
    clock.advance(5)
    account.settle()
    result = account.import_status(job.id)
    contact_id = result["created"][0]["contactId"]
    deletion = account.submit_deletion(1, [contact_id])
    assert account.member_emails(1) == {"a@x.com"}
    clock.advance(5)
    account.settle()
    assert account.deletion_status(deletion.id)["status"] == "Completed"
    assert account.member_emails(1) == set()


def test_finished_jobs_are_forgotten_beyond_the_retention() -> None:
    state, _ = _state(import_delay_seconds=0)
    account = state.accounts["u"]
    items = [{"matchIdentifier": "email", "identifiers": {"email": "a@x.com"}}]
    ids = [account.submit_import(items).id for _ in range(5)]
    with pytest.raises(SandboxError):
        account.import_status(ids[0])
    assert account.import_status(ids[-1])["status"] == "Finished"


def test_book_ids_are_unique_across_accounts() -> None:
    clock = FakeClock(START)
    state = SandboxState(
        [
            SandboxAccount("a", "p", address_books=(SandboxAddressBook(20_000, "x"),)),
            SandboxAccount("b", "p"),
        ],
        clock,
        retained_jobs=10,
    )
    first = state.accounts["a"].create_book("n", "Private")
    second = state.accounts["b"].create_book("n", "Private")
    assert first.id == 20_001
    assert second.id == 20_002


def test_openapi_helpers_catch_wrong_shapes() -> None:
    with pytest.raises(OpenAPIViolation):
        validate_request("PUT", "/contacts/v3/import", {"contacts": [{"identifiers": {}}]})
    with pytest.raises(OpenAPIViolation):
        validate_request("GET", "/v2/no-such-endpoint")
    with pytest.raises(OpenAPIViolation):
        validate_response("GET", "/v2/address-books/1", 200, {"id": "one", "name": "x"})
    with pytest.raises(OpenAPIViolation):
        validate_error_body("/contacts/v3/import", {"message": "nope"}, 400)
    with pytest.raises(OpenAPIViolation):
        validate_error_body("/v2/address-books", {"error": "nope"})
    assert validate_response(
        "GET", "/v2/contacts/deletion/x", 200, {"id": "x", "status": "Completed"}
    )
    assert not validate_response("GET", "/v2/address-books/1", 404, {"message": "x"})
    validate_request("GET", "/v2/contacts/a@example.com")
    # Pipe-delimited array parameters are split before their schema is checked.
    validate_request("GET", "/contacts/v3", query={"include": "lists|channelProperties"})
    with pytest.raises(OpenAPIViolation):
        validate_request("GET", "/contacts/v3", query={"include": "lists|bogus"})
    with pytest.raises(OpenAPIViolation):
        validate_request("GET", "/contacts/v3", query={"limit": "5001"})
    validate_request("POST", "/v2/address-books/5/contacts/delete", [1, 2])


# -- getContacts and contact times -----------------------------------------------------------


def test_id_index_walks_members_in_ascending_order_from_any_id() -> None:
    index = IdIndex()
    for id_ in (5, 9, 12):  # ascending: the common case of new contacts
        index.add(id_)
    index.add(7)  # an existing contact joining
    index.discard(9)
    index.add(9)
    index.discard(12)
    assert list(index.ascending()) == [5, 7, 9]
    assert list(index.ascending(5)) == [7, 9]
    assert list(index.ascending(6)) == [7, 9]
    assert list(index.ascending(9)) == []
    assert len(index) == 3
    assert 12 not in index
    assert 7 in index


def test_id_index_stays_right_through_many_discards() -> None:
    index = IdIndex()
    for id_ in range(1, 1001):
        index.add(id_)
    for id_ in range(1, 1001):
        if id_ % 10:
            index.discard(id_)
    index.add(5)
    assert list(index.ascending()) == [5, *range(10, 1001, 10)]
    assert list(index.ascending(500)) == list(range(510, 1001, 10))


def _items(*emails: str, lists: tuple[int, ...] = (1,), **extra: object) -> list[object]:
    return [
        {"matchIdentifier": "email", "identifiers": {"email": e}, "lists": list(lists), **extra}
        for e in emails
    ]


def _imported(account: AccountState, items: list[object]) -> list[int]:
    result = account.import_status(account.submit_import(items).id)
    return [c["contactId"] for c in result["created"] + result["updated"]]


def _page_through(
    account: AccountState, *, limit: int, list_id: int | None = None
) -> list[list[int]]:
    pages: list[list[int]] = []
    after = 0
    while True:
        page, more = account.list_contacts(ContactQuery(after=after, limit=limit, list_id=list_id))
        pages.append([c.id for c in page])
        if not more:
            return pages
        after = page[-1].id


def test_list_contacts_pages_every_member_once_in_ascending_order() -> None:
    state, _ = _state(import_delay_seconds=0)
    account = state.accounts["u"]
    book = account.create_book("Other", "Private").id
    outsiders = _imported(account, _items(*(f"o{i}@x.com" for i in range(5)), lists=(book,)))
    members = _imported(account, _items(*(f"m{i}@x.com" for i in range(23))))
    # Outsiders joining book 1 late are out of id order: the walk must still be ascending.
    _imported(account, _items("o1@x.com", "o3@x.com", lists=(1,)))
    expected = sorted([*members, outsiders[1], outsiders[3]])
    pages = _page_through(account, limit=10, list_id=1)
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [i for p in pages for i in p] == expected
    everyone = _page_through(account, limit=7)
    assert [i for p in everyone for i in p] == sorted([*outsiders, *members])
    exact = _page_through(account, limit=25, list_id=1)
    assert [len(p) for p in exact] == [25]  # no empty page after an exactly full one
    assert account.list_contacts(ContactQuery(list_id=424242)) == ([], False)
    assert account.list_contacts(ContactQuery(segment_id=1)) == ([], False)


def test_list_contacts_is_stable_while_members_change() -> None:
    state, _ = _state(import_delay_seconds=0)
    account = state.accounts["u"]
    ids = _imported(account, _items(*(f"m{i}@x.com" for i in range(30))))
    first, more = account.list_contacts(ContactQuery(list_id=1, limit=10))
    assert more
    # Between pages: one seen member and one unseen member leave, a newcomer joins.
    account.remove_member(1, ids[3], strict=True)
    account.remove_member(1, ids[20], strict=True)
    newcomer = _imported(account, _items("new@x.com"))[0]
    rest = _page_through_from(account, first[-1].id)
    seen = [c.id for c in first] + rest
    assert len(seen) == len(set(seen))
    assert set(seen) == (set(ids) - {ids[20]}) | {newcomer}


def _page_through_from(account: AccountState, after: int) -> list[int]:
    seen: list[int] = []
    while True:
        page, more = account.list_contacts(ContactQuery(list_id=1, limit=10, after=after))
        seen += [c.id for c in page]
        if not more:
            return seen
        after = page[-1].id


def test_created_is_set_once_and_updated_moves_only_on_change() -> None:
    state, clock = _state(import_delay_seconds=5, deletion_delay_seconds=5)
    account = state.accounts["u"]
    other = account.create_book("Other", "Private").id
    job = account.submit_import(_items("a@x.com", "b@x.com", dataFields={"N": 1}))
    clock.advance(65)  # settled a minute after it was due: times are those of the due moment
    account.settle()
    a, b = (c["contactId"] for c in account.import_status(job.id)["created"])
    created = START + 5

    def times(contact_id: int) -> tuple[float, float]:
        contact = account.contacts[contact_id]
        return contact.created, contact.updated

    assert times(a) == times(b) == (created, created)
    unchanged = account.submit_import(_items("a@x.com", dataFields={"N": 1}))
    clock.advance(5)
    account.settle()
    assert account.import_status(unchanged.id)["updated"][0]["contactId"] == a
    assert times(a) == (created, created)  # nothing changed, so not updated
    now = clock.time()
    account.submit_import(_items("a@x.com", lists=(other,)))
    account.submit_import(_items("b@x.com", dataFields={"N": 2}))
    clock.advance(5)
    account.settle()
    assert times(a) == times(b) == (created, now + 5)
    account.submit_deletion(other, [a, b])  # b is no member: it stays as it was
    clock.advance(10)  # due 5 s after it was submitted
    account.settle()
    assert times(a) == (created, now + 10)
    assert times(b) == (created, now + 5)
    clock.advance(1)
    account.remove_member(1, b, strict=True)
    assert times(b) == (created, now + 16)
    clock.advance(1)
    account.remove_member(1, b, strict=True)  # no longer a member: no change
    assert times(b) == (created, now + 16)
    old, new = account.recreate_contact("a@x.com", [1])
    assert old == a
    assert times(new) == (now + 17, now + 17)


def test_created_and_modified_filters_compare_whole_seconds() -> None:
    state, clock = _state(import_delay_seconds=0)
    account = state.accounts["u"]
    clock.advance(0.5)  # START + 10.5: shown as ...:20Z
    early = _imported(account, _items("early@x.com"))
    clock.advance(60)
    late = _imported(account, _items("late@x.com"))
    clock.advance(60)
    _imported(account, _items("early@x.com", dataFields={"N": 1}))
    created = int(START + 0.5 + 60)

    def ids(*, created_from: float | None = None, modified_from: float | None = None) -> list[int]:
        query = ContactQuery(created_from=created_from, modified_from=modified_from)
        page, _ = account.list_contacts(query)
        return [c.id for c in page]

    assert ids(created_from=created) == late
    assert ids(created_from=created + 0.001) == []
    assert ids(created_from=START) == early + late
    assert ids(modified_from=created + 1) == early
    assert ids(modified_from=created) == early + late
