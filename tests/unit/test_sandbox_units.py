"""The sandbox's pure parts without HTTP: accounts, faults, rate limiter, state, and the
OpenAPI helpers' ability to catch a wrong shape."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from stream.clock import FakeClock
from stream.dotdigital.sandbox import (
    AccountsError,
    Faults,
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    load_accounts,
)
from stream.dotdigital.sandbox.app import tier_of
from stream.dotdigital.sandbox.ratelimits import RateLimiter
from stream.dotdigital.sandbox.state import SandboxError, SandboxState
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


@pytest.mark.parametrize(
    ("method", "path", "tier"),
    [
        ("PUT", "/contacts/v3/import", "add"),
        ("GET", "/contacts/v3/import/x", "other"),
        ("POST", "/v2/address-books/1/contacts/delete", "remove"),
        ("DELETE", "/v2/address-books/1/contacts/2", "remove"),
        ("DELETE", "/v2/address-books/1", "other"),
        ("GET", "/v2/account-info", "other"),
    ],
)
def test_tiers(method: str, path: str, tier: str) -> None:
    assert tier_of(method, path) == tier


def test_rate_limiter_windows_are_calendar_minutes() -> None:
    clock = FakeClock(START)
    limiter = RateLimiter(clock)
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


def _state(**kwargs: object) -> tuple[SandboxState, FakeClock]:
    clock = FakeClock(START)
    account = SandboxAccount(
        "u",
        "p",
        address_books=(SandboxAddressBook(1, "B"),),
        **kwargs,  # type: ignore[arg-type]
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
    validate_request("POST", "/v2/address-books/5/contacts/delete", [1, 2])
