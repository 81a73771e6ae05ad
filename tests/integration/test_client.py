"""The DotDigital client against the sandbox, over real HTTP.

The client and the sandbox share one FakeClock: rate-limit windows, job delays, backoff and
polling all run on it, so a test that waits out a minute's budget takes milliseconds (the
``clock`` and ``sandbox`` fixtures and the accounts are in ``tests/support/client_sandbox.py``).
HTTP is real (aiohttp over localhost sockets). Every request the client sends is checked against
DotDigital's published OpenAPI specifications (``tests/support/openapi.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from stream.clock import FakeClock, SystemClock
from stream.dotdigital import (
    AddressBookNotFoundError,
    AuthenticationError,
    DotDigitalClient,
    DuplicateAddressBookError,
    ImportFailedError,
    PermanentError,
    RetriesExhausted,
    ThrottledError,
    TransientError,
    UnrecognizedNotFoundError,
    WrongRegionError,
)
from stream.pipeline.clients import client_config
from stream.sandbox import (
    JournalEntry,
    Sandbox,
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    run_sandbox,
)
from stream.settings import ConnectorSettings, Secret
from tests.support.client_accounts import (
    BOOK_A,
    BOOK_B,
    FLAT,
    PASSWORD,
    STUCK,
    STUCK_BOOK,
    TIGHT,
    TIGHT_BOOK,
    USER,
    connect,
    connector,
    fast_retry,
)
from tests.support.openapi import validate_exchange, validate_request

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]


def calls(sb: Sandbox, method: str, prefix: str) -> list[JournalEntry]:
    return [e for e in sb.journal if e.method == method and e.path.startswith(prefix)]


def member_pages(sb: Sandbox) -> list[JournalEntry]:
    """The client's ``GET /contacts/v3`` calls (pages of a book's members)."""
    return [e for e in sb.journal if e.method == "GET" and e.path == "/contacts/v3"]


def assert_requests_follow_the_specs(sb: Sandbox) -> None:
    assert len(sb.journal) > 0
    for entry in sb.journal:
        validate_request(entry.method, entry.path, entry.body, query=entry.query)


# -- connecting ------------------------------------------------------------------------------


async def test_detects_the_region_and_strips_the_trailing_slash(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        assert client.endpoint == sandbox.urls["r2"]
        books = await client.list_address_books()
    assert {b.id for b in books} >= {BOOK_A, BOOK_B}
    detection = calls(sandbox, "GET", "/v2/account-info")
    assert [(e.region, e.status) for e in detection] == [("r1", 200)]
    assert calls(sandbox, "GET", "/v2/address-books")[0].region == "r2"
    for entry in sandbox.journal:
        validate_exchange(entry)


async def test_an_explicit_endpoint_overrides_detection(sandbox: Sandbox, clock: FakeClock) -> None:
    async with await connect(sandbox, clock, api_endpoint=sandbox.urls["r2"] + "/") as client:
        assert client.endpoint == sandbox.urls["r2"]
        await client.get_address_book(BOOK_A)
    assert calls(sandbox, "GET", "/v2/account-info") == []


async def test_the_wrong_region_is_a_wrong_region_error(sandbox: Sandbox, clock: FakeClock) -> None:
    async with await connect(sandbox, clock, api_endpoint=sandbox.urls["r1"]) as client:
        with pytest.raises(WrongRegionError) as caught:
            await client.list_address_books()
    assert caught.value.status == 403
    assert len(calls(sandbox, "GET", "/v2/address-books")) == 1  # not retried


async def test_bad_credentials_fail_at_once_and_never_show_the_password(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    settings = connector(sandbox, password=Secret("wrong-" + PASSWORD))
    with pytest.raises(AuthenticationError) as caught:
        await DotDigitalClient.connect(client_config(settings), clock=clock, retry=fast_retry())
    error = caught.value
    assert error.status == 401
    for text in (str(error), repr(error), error.message):
        assert PASSWORD not in text
        assert "Basic " not in text
    assert len(sandbox.journal) == 1


async def test_the_pipeline_retries_401_until_its_deadline(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    settings = connector(sandbox, password=Secret("rotating"), api_endpoint=sandbox.urls["r2"])
    client = DotDigitalClient(
        client_config(settings),
        clock=clock,
        retry=fast_retry(retry_authentication=True, total_seconds=30),
    )
    async with client:
        with pytest.raises(RetriesExhausted) as caught:
            await client.import_contacts(BOOK_A, ["a@example.com"])
    assert isinstance(caught.value.last_error, AuthenticationError)
    assert caught.value.attempts > 2
    assert "rotating" not in str(caught.value)
    assert "rotating" not in repr(client)


# -- address books ---------------------------------------------------------------------------


async def test_address_books_list_pages_until_a_short_page(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        for i in range(3):
            await client.create_address_book(f"Extra {i}")
        books = await client.list_address_books(page_size=2)
    assert [b.name for b in books] == ["Audience A", "Audience B", "Extra 0", "Extra 1", "Extra 2"]
    assert books[1].visibility == "Public"
    pages = [dict(e.query) for e in calls(sandbox, "GET", "/v2/address-books")]
    assert pages == [
        {"select": "2", "skip": "0"},
        {"select": "2", "skip": "2"},
        {"select": "2", "skip": "4"},
    ]
    assert_requests_follow_the_specs(sandbox)


async def test_create_get_and_duplicates(sandbox: Sandbox, clock: FakeClock) -> None:
    async with await connect(sandbox, clock) as client:
        created = await client.create_address_book("New audience", "Public")
        assert created.name == "New audience"
        assert created.visibility == "Public"
        assert created.contacts == 0
        assert await client.get_address_book(created.id) == created
        with pytest.raises(DuplicateAddressBookError, match="'New audience' already exists"):
            await client.create_address_book("New audience")
        again = await client.create_address_book("New audience", exist_ok=True)
        assert again == created
        # DotDigital reserves these names in every account; not listed, so not "existing".
        with pytest.raises(DuplicateAddressBookError, match="not by an address book"):
            await client.create_address_book("Test", exist_ok=True)
        with pytest.raises(AddressBookNotFoundError) as caught:
            await client.get_address_book(987654)
        assert caught.value.code == "ERROR_ADDRESSBOOK_NOT_FOUND"
        with pytest.raises(PermanentError) as invalid:
            await client.create_address_book("   ")
        assert invalid.value.code == "ERROR_PARAMETER_INVALID"
        assert invalid.value.status == 400
    assert len(calls(sandbox, "POST", "/v2/address-books")) == 5  # one per call: none retried
    assert_requests_follow_the_specs(sandbox)


async def test_account_info(sandbox: Sandbox, clock: FakeClock) -> None:
    async with await connect(sandbox, clock) as client:
        info = await client.account_info()
    assert info.id == 10
    assert info.api_endpoint == sandbox.urls["r2"]
    assert info.properties["MainEmail"] == USER
    assert "x-ratelimit-limit" in info.rate_limit_headers


# -- imports ---------------------------------------------------------------------------------


async def test_import_reports_every_contact(sandbox: Sandbox, clock: FakeClock) -> None:
    emails = ["Jane@Example.com", "john@example.com", "not-an-email", " JANE@example.COM", ""]
    async with await connect(sandbox, clock) as client:
        outcome = await client.import_contacts(BOOK_A, emails)
        assert set(outcome.imported) == {
            "Jane@Example.com",
            " JANE@example.COM",
            "john@example.com",
        }
        assert outcome.imported["Jane@Example.com"] == outcome.imported[" JANE@example.COM"]
        assert set(outcome.rejected) == {"not-an-email", ""}
        assert outcome.rejected["not-an-email"].failure_code == "invalidEmail"
        assert client.known_contact_id("jane@example.com") == outcome.imported["Jane@Example.com"]
    members = sandbox.members(USER, BOOK_A)
    assert {m.lower() for m in members} == {"jane@example.com", "john@example.com"}
    assert len(members) == 2
    (put,) = calls(sandbox, "PUT", "/contacts/v3/import")
    # One contact per distinct email: no duplicateIdentifier failure of our own making.
    assert put.body == {
        "mergeOption": "overwrite",
        "contacts": [
            {"matchIdentifier": "email", "identifiers": {"email": e}, "lists": [BOOK_A]}
            for e in ("Jane@Example.com", "john@example.com", "not-an-email")
        ],
    }
    polls = calls(sandbox, "GET", "/contacts/v3/import/")
    assert [p.response["status"] for p in polls][-1] == "Finished"
    assert len(polls) >= 2  # the sandbox answered NotFinished first
    for entry in sandbox.journal:
        validate_exchange(entry)


async def test_import_into_a_missing_book_is_address_book_not_found(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        with pytest.raises(AddressBookNotFoundError) as caught:
            await client.import_contacts(999999, ["a@example.com", "b@example.com"])
    assert caught.value.code == "ERROR_ADDRESSBOOK_NOT_FOUND"
    # The import said invalidAddressBookIds per contact; the book itself was then asked after.
    assert len(calls(sandbox, "PUT", "/contacts/v3/import")) == 1
    polls = calls(sandbox, "GET", "/contacts/v3/import/")
    failures = polls[-1].response["failures"]
    assert {f["failures"][0]["failureCode"] for f in failures} == {"invalidAddressBookIds"}
    assert [e.status for e in calls(sandbox, "GET", "/v2/address-books/999999")] == [404]
    assert_requests_follow_the_specs(sandbox)


async def test_import_with_nothing_to_send_sends_nothing(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        outcome = await client.import_contacts(BOOK_A, [" "])
    assert outcome.import_id is None
    assert set(outcome.rejected) == {" "}
    assert calls(sandbox, "PUT", "/contacts/v3/import") == []


async def test_at_most_max_active_imports_are_in_flight(sandbox: Sandbox, clock: FakeClock) -> None:
    async with await connect(sandbox, clock, max_active_imports=25) as client:
        outcomes = await asyncio.gather(
            *(client.import_contacts(BOOK_A, [f"c{i}@example.com"]) for i in range(40))
        )
    assert all(len(o.imported) == 1 for o in outcomes)
    assert [e for e in calls(sandbox, "PUT", "/contacts/v3/import") if e.status == 429] == []


async def test_too_many_active_imports_is_throttling_and_retried(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    # Configured above DotDigital's cap of 25, the 26th concurrent import meets a 429.
    async with await connect(sandbox, clock, max_active_imports=30) as client:
        outcomes = await asyncio.gather(
            *(client.import_contacts(BOOK_A, [f"c{i}@example.com"]) for i in range(30))
        )
    assert all(len(o.imported) == 1 for o in outcomes)
    refused = [e for e in calls(sandbox, "PUT", "/contacts/v3/import") if e.status == 429]
    assert refused
    assert refused[0].response["errorCode"] == "contacts:tooManyActiveImports"
    assert len(sandbox.members(USER, BOOK_A)) == 30


# -- removals --------------------------------------------------------------------------------


async def test_remove_uses_remembered_ids_and_keeps_the_contacts(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        imported = await client.import_contacts(
            BOOK_A, ["a@example.com", "b@example.com", "c@example.com"]
        )
        outcome = await client.remove_contacts(BOOK_A, ["A@example.com", "b@example.com"])
    assert outcome.removed == {"A@example.com", "b@example.com"}
    assert outcome.not_found == frozenset()
    assert outcome.rejected == {}
    assert sandbox.members(USER, BOOK_A) == {"c@example.com"}
    # Nothing resolved before the removal; after it completed, one page of the book's members
    # created since the ids were learnt checks none came back under another id.
    (post,) = calls(sandbox, "POST", f"/v2/address-books/{BOOK_A}/contacts/delete")
    assert calls(sandbox, "GET", "/contacts/v3/email/") == []
    (check,) = member_pages(sandbox)
    assert sandbox.journal.index(check) > sandbox.journal.index(post)
    assert check.query["~listId"] == str(BOOK_A)
    assert check.query["~created"].startswith("gte::")
    assert sorted(post.body) == sorted(
        [imported.imported["a@example.com"], imported.imported["b@example.com"]]
    )
    polls = calls(sandbox, "GET", "/v2/contacts/deletion/")
    assert polls[-1].response["status"] == "Completed"
    # Membership only: nothing deletes contacts.
    assert not [e for e in sandbox.journal if e.method == "DELETE" or "/v3/delete" in e.path]
    for entry in sandbox.journal:
        validate_exchange(entry)


async def test_remove_pages_the_book_for_unknown_ids_and_treats_non_members_as_removed(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        await client.import_contacts(BOOK_A, ["a+tag@example.com", "b@example.com"])
        await client.import_contacts(BOOK_B, ["elsewhere@example.com"])
    # A fresh client (as after a restart) knows no contact ids. Four emails: one page of the
    # book (and its size) costs less than four look-ups.
    async with await connect(sandbox, clock) as client:
        outcome = await client.remove_contacts(
            BOOK_A,
            ["A+tag@example.com", "nobody@example.com", "elsewhere@example.com", "not an email"],
        )
    everyone = {"A+tag@example.com", "nobody@example.com", "elsewhere@example.com", "not an email"}
    assert outcome.removed == everyone
    assert outcome.not_found == everyone - {"A+tag@example.com"}
    assert outcome.rejected == {}
    assert sandbox.members(USER, BOOK_A) == {"b@example.com"}
    assert sandbox.members(USER, BOOK_B) == {"elsewhere@example.com"}
    assert calls(sandbox, "GET", "/contacts/v3/email/") == []
    (page,) = member_pages(sandbox)
    assert page.query["~listId"] == str(BOOK_A)
    assert "~created" not in page.query
    (post,) = calls(sandbox, "POST", f"/v2/address-books/{BOOK_A}/contacts/delete")
    assert len(post.body) == 1
    assert_requests_follow_the_specs(sandbox)
    for entry in sandbox.journal:
        validate_exchange(entry)


async def test_a_couple_of_unknown_ids_are_looked_up_one_by_one(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        await client.import_contacts(BOOK_A, ["a+tag@example.com", "b@example.com"])
    async with await connect(sandbox, clock) as client:
        outcome = await client.remove_contacts(BOOK_A, ["A+tag@example.com", "not an email"])
        again = await client.remove_contacts(BOOK_A, ["nobody@example.com"])
    # Two look-ups cost less than the book's size and a page; an address DotDigital refuses
    # to look up cannot be in the book, so its removal is done, as when the book is paged.
    assert outcome.removed == {"A+tag@example.com", "not an email"}
    assert outcome.not_found == {"not an email"}
    assert again.not_found == {"nobody@example.com"}
    assert sandbox.members(USER, BOOK_A) == {"b@example.com"}
    lookups = {e.path: e.status for e in calls(sandbox, "GET", "/contacts/v3/email/")}
    assert lookups["/contacts/v3/email/A+tag@example.com"] == 200
    assert lookups["/contacts/v3/email/nobody@example.com"] == 404
    assert lookups["/contacts/v3/email/not an email"] == 400
    assert member_pages(sandbox) == []
    assert_requests_follow_the_specs(sandbox)


async def test_removing_only_unknown_contacts_sends_no_removal(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        outcome = await client.remove_contacts(BOOK_A, ["ghost@example.com"])
    assert outcome.removed == outcome.not_found == {"ghost@example.com"}
    assert calls(sandbox, "POST", "/v2/address-books/") == []


async def test_removing_from_a_missing_book_is_address_book_not_found(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        await client.import_contacts(BOOK_A, ["a@example.com"])
        with pytest.raises(AddressBookNotFoundError):
            await client.remove_contacts(424242, ["a@example.com"])
    # A fresh client looks the contacts up: none is in the missing book, so no removal is
    # sent; the book is asked after rather than the removal taken for done.
    async with await connect(sandbox, clock) as client:
        with pytest.raises(AddressBookNotFoundError):
            await client.remove_contacts(424242, ["a@example.com", "nobody@example.com"])


async def test_a_contact_re_created_with_a_new_id_still_leaves_the_book(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        imported = await client.import_contacts(BOOK_A, ["back@example.com", "stays@example.com"])
        old_id = imported.imported["back@example.com"]
        assert client.known_contact_id("back@example.com") == old_id
        # Someone deletes the contact in DotDigital; it comes back, with a new id, in the book.
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{sandbox.urls['r1']}/_sandbox/accounts/{USER}/contacts/back@example.com/recreate",
                json={"lists": [BOOK_A]},
            ) as response,
        ):
            assert response.status == 200
            ids = await response.json()
        assert ids["previousContactId"] == old_id
        new_id = ids["contactId"]
        assert new_id != old_id
        assert sandbox.members(USER, BOOK_A) == {"back@example.com", "stays@example.com"}

        outcome = await client.remove_contacts(BOOK_A, ["back@example.com"])
        assert client.known_contact_id("back@example.com") == new_id
    assert outcome.removed == {"back@example.com"}
    assert sandbox.members(USER, BOOK_A) == {"stays@example.com"}
    # The removal of the stale id completed (DotDigital does not object); the page of members
    # created since found the contact still a member under its new id, and removed that.
    posts = calls(sandbox, "POST", f"/v2/address-books/{BOOK_A}/contacts/delete")
    assert [p.body for p in posts] == [[old_id], [new_id]]
    assert len(outcome.deletion_ids) == 2
    assert_requests_follow_the_specs(sandbox)


async def test_a_removal_by_a_fresh_remembered_id_is_checked_once_and_sent_once(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        await client.import_contacts(BOOK_A, ["a@example.com"])
        await client.remove_contacts(BOOK_A, ["a@example.com"])
    assert sandbox.members(USER, BOOK_A) == set()
    assert len(calls(sandbox, "POST", f"/v2/address-books/{BOOK_A}/contacts/delete")) == 1
    (check,) = member_pages(sandbox)
    (poll,) = [e for e in calls(sandbox, "GET", "/v2/contacts/deletion/")][-1:]
    assert sandbox.journal.index(check) > sandbox.journal.index(poll)  # after it completed


async def test_many_stale_ids_are_found_by_one_page_not_a_look_up_each(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    emails = [f"m{i}@example.com" for i in range(300)]
    async with await connect(sandbox, clock) as client:
        await client.import_contacts(BOOK_A, emails)
        clock.advance(600)  # the ids are ten minutes old; contacts re-created since are newer
        async with aiohttp.ClientSession() as session:
            for email in emails[:3]:
                url = f"{sandbox.urls['r1']}/_sandbox/accounts/{USER}/contacts/{email}/recreate"
                async with session.post(url, json={"lists": [BOOK_A]}) as response:
                    assert response.status == 200
        outcome = await client.remove_contacts(BOOK_A, emails)
    assert outcome.removed == set(emails)
    assert sandbox.members(USER, BOOK_A) == set()
    assert len(member_pages(sandbox)) == 1
    assert calls(sandbox, "GET", "/contacts/v3/email/") == []
    posts = calls(sandbox, "POST", f"/v2/address-books/{BOOK_A}/contacts/delete")
    assert [len(p.body) for p in posts] == [300, 3]
    for entry in sandbox.journal:
        validate_exchange(entry)


async def test_the_check_of_remembered_ids_costs_at_most_twice_the_cheaper_way(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    emails = [f"busy{i}@example.com" for i in range(12_000)]
    async with await connect(sandbox, clock) as client:
        for start in range(0, len(emails), 1000):
            await client.import_contacts(BOOK_A, emails[start : start + 1000])
        recreate = (
            f"{sandbox.urls['r1']}/_sandbox/accounts/{USER}/contacts/busy11999@example.com/recreate"
        )
        async with (
            aiohttp.ClientSession() as session,
            session.post(recreate, json={"lists": [BOOK_A]}) as response,
        ):
            assert response.status == 200
        sent_before = len(sandbox.journal)
        # Two remembered ids, in a book where 12,000 members were created since they were
        # learnt: two look-ups are as cheap as one page, so after two pages the rest is looked up.
        outcome = await client.remove_contacts(BOOK_A, emails[-2:])
    assert outcome.removed == set(emails[-2:])
    assert sandbox.members(USER, BOOK_A) == set(emails[:-2])
    later = sandbox.journal[sent_before:]
    assert len([e for e in later if e.method == "GET" and e.path == "/contacts/v3"]) == 2
    assert len([e for e in later if e.path.startswith("/contacts/v3/email/")]) == 2
    posts = [e for e in later if e.path == f"/v2/address-books/{BOOK_A}/contacts/delete"]
    assert [len(p.body) for p in posts] == [2, 1]  # the re-created one removed again


async def test_removals_after_a_restart_page_a_large_book_instead_of_looking_up_each(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    emails = [f"big{i}@example.com" for i in range(12_000)]
    async with await connect(sandbox, clock) as client:
        for start in range(0, len(emails), 1000):
            await client.import_contacts(BOOK_A, emails[start : start + 1000])
    clock.advance(3600)
    sent_before = len(sandbox.journal)
    async with await connect(sandbox, clock) as client:  # a restart: no id is remembered
        first = await client.remove_contacts(BOOK_A, emails[:1000])
        # Paging remembered the members it read: the next batch needs no resolving, only the
        # check that none of those ids went stale.
        second = await client.remove_contacts(BOOK_A, emails[1000:2000])
    assert first.removed == set(emails[:1000])
    assert first.not_found == frozenset()
    assert second.removed == set(emails[1000:2000])
    assert sandbox.members(USER, BOOK_A) == set(emails[2000:])
    assert calls(sandbox, "GET", "/contacts/v3/email/") == []
    pages = member_pages(sandbox)
    # The first batch's emails were imported first (lowest ids): found on the first page.
    assert [p.query.get("~created") is None for p in pages] == [True, False]
    assert all(p.query["limit"] == "5000" for p in pages)
    requests = [e for e in sandbox.journal[sent_before:] if e.path not in ("/v2/account-info",)]
    non_polls = [e for e in requests if not e.path.startswith("/v2/contacts/deletion/")]
    # The book's size, one page, two removals and one check: 5 calls for 2,000 removals.
    assert len(non_polls) == 5
    for entry in sandbox.journal:
        validate_exchange(entry)


async def test_remembered_ids_expire_and_the_cache_is_bounded(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(
        sandbox, clock, contact_cache_size=2, contact_cache_ttl_seconds=60.0
    ) as client:
        await client.import_contacts(BOOK_A, ["a@example.com"])
        await client.import_contacts(BOOK_A, ["b@example.com"])
        await client.import_contacts(BOOK_A, ["c@example.com"])
        assert client.known_contact_id("a@example.com") is None  # the oldest went first
        assert client.known_contact_id("c@example.com") is not None
        clock.advance(60.0)
        assert client.known_contact_id("c@example.com") is None
        # An expired id is looked up before the removal, not sent and checked after.
        await client.remove_contacts(BOOK_A, ["c@example.com"])
    lookup = calls(sandbox, "GET", "/contacts/v3/email/")
    (post,) = calls(sandbox, "POST", f"/v2/address-books/{BOOK_A}/contacts/delete")
    assert len(lookup) == 1
    assert sandbox.journal.index(lookup[0]) < sandbox.journal.index(post)
    assert sandbox.members(USER, BOOK_A) == {"a@example.com", "b@example.com"}


async def test_a_proxys_404_is_never_taken_for_a_contact_already_removed(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        await client.import_contacts(BOOK_A, ["kept@example.com"])
    # A fresh client must look the contact up; a proxy in front answers 404 in HTML.
    sandbox.faults.update({"proxy_404_rate": 1.0})
    async with await connect(
        sandbox, clock, api_endpoint=sandbox.urls["r2"], retry=fast_retry(total_seconds=30)
    ) as client:
        with pytest.raises(RetriesExhausted) as caught:
            await client.remove_contacts(BOOK_A, ["kept@example.com"])
        # The bare 404 on an address-book path is no "address book not found" either.
        with pytest.raises(RetriesExhausted) as book:
            await client.get_address_book(BOOK_A, deadline=clock.monotonic() + 5)
    assert isinstance(caught.value.last_error, UnrecognizedNotFoundError)
    assert caught.value.attempts > 1  # retried within the budget, then given up on
    assert "without DotDigital's error body" in str(caught.value)
    assert "kept@example.com" not in str(caught.value)
    assert isinstance(book.value.last_error, UnrecognizedNotFoundError)
    sandbox.faults.update({"proxy_404_rate": 0.0})
    assert sandbox.members(USER, BOOK_A) == {"kept@example.com"}
    lookups = calls(sandbox, "GET", "/contacts/v3/email/")
    assert lookups
    assert {e.status for e in lookups} == {404}


async def test_a_removal_waits_for_an_import_given_up_on_in_its_book(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    # The import outlives its caller's budget (the sandbox finishes it after 0.4 s). Were the
    # removal to go first, its look-up would find no contact, and the import would then add
    # the contact for good: the earlier change overtaking the later one.
    async with await connect(sandbox, clock) as client:
        with pytest.raises(RetriesExhausted, match="still NotFinished"):
            await client.import_contacts(
                BOOK_A, ["late@example.com"], retry=fast_retry(total_seconds=0.1)
            )
        outcome = await client.remove_contacts(BOOK_A, ["late@example.com"])
    assert outcome.removed == {"late@example.com"}
    assert outcome.not_found == frozenset()
    assert sandbox.members(USER, BOOK_A) == set()
    order = [e for e in sandbox.journal if e.method in ("GET", "POST") and "contacts" in e.path]
    finished = next(
        n for n, e in enumerate(order)
        if e.path.startswith("/contacts/v3/import/") and e.response["status"] == "Finished"
    )  # fmt: skip
    first_removal_step = next(
        n for n, e in enumerate(order)
        if e.path.startswith(("/contacts/v3/email/", f"/v2/address-books/{BOOK_A}/contacts/delete"))
    )  # fmt: skip
    assert finished < first_removal_step


async def test_a_job_still_running_holds_back_its_book_only(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        with pytest.raises(RetriesExhausted):
            await client.import_contacts(
                BOOK_A, ["slow@example.com"], retry=fast_retry(total_seconds=0.1)
            )
        (put,) = calls(sandbox, "PUT", "/contacts/v3/import")
        slow_import = put.response["importId"]
        # Its own book waits for it: a call whose deadline comes first fails without sending
        # anything but polls of that import.
        sent = len(sandbox.journal)
        with pytest.raises(RetriesExhausted, match=r"earlier import .* not overtaking it"):
            await client.remove_contacts(
                BOOK_A, ["slow@example.com"], deadline=clock.monotonic() + 0.1
            )
        assert {e.path for e in sandbox.journal[sent:]} == {f"/contacts/v3/import/{slow_import}"}
        # Another book does not wait for it.
        sent = len(sandbox.journal)
        await client.import_contacts(BOOK_B, ["other@example.com"])
        assert not [e for e in sandbox.journal[sent:] if slow_import in e.path]
        # Once the job ended, the book moves again.
        outcome = await client.remove_contacts(BOOK_A, ["slow@example.com"])
    assert outcome.removed == {"slow@example.com"}
    assert sandbox.members(USER, BOOK_A) == set()
    assert sandbox.members(USER, BOOK_B) == {"other@example.com"}


async def test_a_job_that_never_ends_holds_its_book_back_one_budget_only(
    sandbox: Sandbox, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    budget = fast_retry(total_seconds=30.0)
    async with await connect(sandbox, clock, STUCK, retry=budget) as client:
        with pytest.raises(RetriesExhausted):
            await client.import_contacts(STUCK_BOOK, ["stuck@example.com"])
        given_up = clock.monotonic()
        outcome = await client.remove_contacts(STUCK_BOOK, ["stuck@example.com"])
        # It waited for the stuck import a whole budget, no longer, then went on.
        assert clock.monotonic() - given_up >= 30.0
        assert clock.monotonic() - given_up < 60.0
        assert "has not ended a whole retry budget" in caplog.text
        # Forgotten: the next call does not wait again.
        started = clock.monotonic()
        await client.remove_contacts(STUCK_BOOK, ["nobody@example.com"])
        assert clock.monotonic() - started < 5.0
    assert outcome.removed == {"stuck@example.com"}


# -- rate limits -----------------------------------------------------------------------------


SHARED = "apiuser-shared@apiconnector.com"  # r1: imports, removals and pages share one tier
SHARED_BOOK = 801


@pytest.fixture
async def shared_tier(clock: FakeClock) -> AsyncIterator[Sandbox]:
    account = SandboxAccount(
        SHARED,
        PASSWORD,
        region="r1",
        account_id=14,
        tier_layout="shared",
        add_per_minute=4,
        address_books=(SandboxAddressBook(SHARED_BOOK, "Shared"),),
    )
    async with run_sandbox(SandboxSettings(accounts=[account], clock=clock)) as sb:
        yield sb


async def test_imports_and_removals_that_share_a_tier_share_one_budget(
    shared_tier: Sandbox, clock: FakeClock
) -> None:
    started = clock.time()
    async with await connect(shared_tier, clock, SHARED) as client:
        await client.import_contacts(SHARED_BOOK, ["a@example.com", "b@example.com"])
        # The removal by a remembered id and its check (a page of members) are in the tier too.
        await client.remove_contacts(SHARED_BOOK, ["a@example.com"])
        budgets = client.budgets
        assert budgets.name_of("import") == "lowCallRate"
        assert budgets.for_operation("removal") is budgets.for_operation("import")
        assert budgets.for_operation("contact_list") is budgets.for_operation("import")
        assert budgets.for_operation("import").limit == 4  # not 75 + 35
        for i in range(3):
            await client.import_contacts(SHARED_BOOK, [f"later{i}@example.com"])
    shared = [e for e in shared_tier.journal if e.status is not None and e.account == SHARED]
    assert [e for e in shared if e.status == 429] == []
    # Six calls of a tier of four a (calendar) minute: the client waited for the next minute.
    assert clock.time() // 60 > started // 60
    assert shared_tier.members(SHARED, SHARED_BOOK) == {
        "b@example.com",
        "later0@example.com",
        "later1@example.com",
        "later2@example.com",
    }


async def test_the_cheaper_way_to_resolve_is_weighed_by_the_learnt_tiers(
    shared_tier: Sandbox, clock: FakeClock
) -> None:
    emails = [f"w{i}@example.com" for i in range(5)]
    async with await connect(shared_tier, clock, SHARED) as importer:
        await importer.import_contacts(SHARED_BOOK, [*emails, "kept@example.com"])
    async with await connect(shared_tier, clock, SHARED) as client:
        await client.import_contacts(SHARED_BOOK, ["x@example.com"])
        await client.remove_contacts(SHARED_BOOK, ["x@example.com"])  # learns the pages' tier
        pages_before = len(member_pages(shared_tier))
        # Five unknown contacts: by count a page (and the book's size) is cheaper than five
        # look-ups, but a page costs a quarter of a minute of this tier, five look-ups far less.
        outcome = await client.remove_contacts(SHARED_BOOK, emails)
    assert outcome.removed == set(emails)
    assert len(member_pages(shared_tier)) == pages_before
    looked_up = {e.path for e in calls(shared_tier, "GET", "/contacts/v3/email/")}
    assert {f"/contacts/v3/email/{email}" for email in emails} <= looked_up
    assert shared_tier.members(SHARED, SHARED_BOOK) == {"kept@example.com"}


async def test_headers_slow_the_client_down_before_any_429(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    started = clock.monotonic()
    async with await connect(sandbox, clock, TIGHT) as client:
        for i in range(5):
            await client.import_contacts(TIGHT_BOOK, [f"x{i}@example.com"])
        # Learnt from X-RateLimit-Limit, for the tier the responses name.
        assert client.budgets.for_operation("import").limit == 2
    puts = calls(sandbox, "PUT", "/contacts/v3/import")
    assert [e.status for e in puts] == [202] * 5
    # 5 imports at 2 a minute span at least two window boundaries.
    assert clock.monotonic() - started >= 60.0


async def test_waiting_for_the_limiter_does_not_use_the_retry_budget(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    budget = fast_retry(total_seconds=30.0)
    async with await connect(sandbox, clock, TIGHT) as client:
        for i in range(2):
            await client.import_contacts(TIGHT_BOOK, [f"q{i}@example.com"], retry=budget)
        # The third waits most of a minute for the limiter, longer than its 30 s budget; one
        # 503 after that is a first failure, retried, not a budget already spent.
        sandbox.faults.update({"fail_next": 1})
        started = clock.monotonic()
        outcome = await client.import_contacts(TIGHT_BOOK, ["q2@example.com"], retry=budget)
        assert clock.monotonic() - started > 30.0
    assert set(outcome.imported) == {"q2@example.com"}
    statuses = [e.status for e in calls(sandbox, "PUT", "/contacts/v3/import")]
    assert statuses == [202, 202, 503, 202]


async def test_429_waits_for_the_reset_and_retries(sandbox: Sandbox, clock: FakeClock) -> None:
    async with await connect(sandbox, clock, TIGHT) as client:
        # All three are sent before any answer tells the client that the budget is 2.
        outcomes = await asyncio.gather(
            *(client.import_contacts(TIGHT_BOOK, [f"y{i}@example.com"]) for i in range(3))
        )
    assert all(len(o.imported) == 1 for o in outcomes)
    statuses = [e.status for e in calls(sandbox, "PUT", "/contacts/v3/import")]
    assert statuses.count(429) == 1
    assert statuses.count(202) == 3
    # After the 429 nothing else went out until the window reset: exactly one refused call.
    assert sandbox.members(TIGHT, TIGHT_BOOK) == {f"y{i}@example.com" for i in range(3)}


async def test_429_until_the_deadline_is_retries_exhausted(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock, TIGHT) as client:
        await client.import_contacts(TIGHT_BOOK, ["z0@example.com"])
        await client.import_contacts(TIGHT_BOOK, ["z1@example.com"])
    # Another instance, which has not seen any header yet, meets the spent budget.
    async with await connect(sandbox, clock, TIGHT) as client:
        with pytest.raises(RetriesExhausted) as caught:
            await client.import_contacts(
                TIGHT_BOOK, ["z2@example.com"], deadline=clock.monotonic() + 1.0
            )
    assert isinstance(caught.value.last_error, ThrottledError)
    assert caught.value.last_error.status == 429


async def test_flat_scheme_apiusage_exceeded_is_throttling(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(
        sandbox, clock, FLAT, retry=fast_retry(total_seconds=300), api_endpoint=sandbox.urls["r1"]
    ) as client:
        for _ in range(3):
            await client.list_address_books()
        with pytest.raises(RetriesExhausted) as caught:
            await client.list_address_books()
        last = caught.value.last_error
        assert isinstance(last, ThrottledError)
        assert last.code == "ERROR_APIUSAGE_EXCEEDED"
        assert last.status == 400
        # With a budget beyond the hour the call goes through once the hour rolls over.
        books = await client.list_address_books(deadline=clock.monotonic() + 4000)
    assert books == []


# -- faults ----------------------------------------------------------------------------------


async def test_server_errors_and_dropped_connections_are_retried(
    sandbox: Sandbox, clock: FakeClock
) -> None:
    async with await connect(sandbox, clock) as client:
        sandbox.faults.update({"fail_next": 2})
        assert len(await client.list_address_books()) == 2
        sandbox.faults.update({"drop_next": 2})
        outcome = await client.import_contacts(BOOK_A, ["d@example.com"])
        assert set(outcome.imported) == {"d@example.com"}
        sandbox.faults.update({"drop_next": 1, "fail_next": 1})
        removed = await client.remove_contacts(BOOK_A, ["d@example.com"])
        assert removed.removed == {"d@example.com"}
    statuses = [e.status for e in sandbox.journal]
    assert statuses.count(503) == 3
    assert statuses.count(None) == 3
    assert sandbox.members(USER, BOOK_A) == set()


async def test_persistent_failures_exhaust_the_budget(sandbox: Sandbox, clock: FakeClock) -> None:
    async with await connect(sandbox, clock) as client:
        sandbox.faults.update({"fail_next": 10_000})
        started = clock.monotonic()
        with pytest.raises(RetriesExhausted) as caught:
            await client.import_contacts(
                BOOK_A, ["e@example.com"], deadline=clock.monotonic() + 120
            )
        assert clock.monotonic() - started <= 120
    error = caught.value.last_error
    assert isinstance(error, TransientError)
    assert error.status == 503
    assert caught.value.attempts > 3


async def test_an_unreachable_host_is_transient(clock: FakeClock) -> None:
    settings = ConnectorSettings(
        name="x", username=USER, password=Secret(PASSWORD), api_endpoint="http://127.0.0.1:9"
    )
    async with DotDigitalClient(
        client_config(settings),
        endpoint=settings.api_endpoint,
        clock=clock,
        retry=fast_retry(total_seconds=5),
    ) as client:
        with pytest.raises(RetriesExhausted) as caught:
            await client.list_address_books()
    assert isinstance(caught.value.last_error, TransientError)
    assert "cannot connect" in caught.value.message


# -- outcomes the sandbox cannot produce, from a scripted DotDigital ---------------------------


class Scripted:
    """A tiny DotDigital stand-in answering imports from a script (what the sandbox can't)."""

    def __init__(self, statuses: Sequence[dict[str, Any]]) -> None:
        self.statuses = list(statuses)
        self.puts = 0
        self.book_gets = 0

    async def put_import(self, request: web.Request) -> web.Response:
        self.puts += 1
        if self.puts == 1:
            return web.json_response(
                {"errorCode": "contacts:tooManyActiveImports", "description": "wait"}, status=429
            )
        return web.json_response({"importId": "job-1"}, status=202)

    async def get_book(self, request: web.Request) -> web.Response:
        self.book_gets += 1
        book = {"id": 7, "name": "Seven", "visibility": "Private", "contacts": 0}
        return web.json_response(book)

    async def get_import(self, request: web.Request) -> web.Response:
        return web.json_response(
            self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        )


@pytest.fixture
async def scripted_url() -> AsyncIterator[tuple[str, list[Scripted]]]:
    holder: list[Scripted] = []
    app = web.Application()

    async def put(request: web.Request) -> web.Response:
        return await holder[0].put_import(request)

    async def get(request: web.Request) -> web.Response:
        return await holder[0].get_import(request)

    app.router.add_put("/contacts/v3/import", put)
    app.router.add_get("/contacts/v3/import/{id}", get)

    async def get_book(request: web.Request) -> web.Response:
        return await holder[0].get_book(request)

    app.router.add_get("/v2/address-books/{id}", get_book)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", holder
    finally:
        await runner.cleanup()


async def test_result_mapping_duplicates_partial_failures_and_missing_contacts(
    scripted_url: tuple[str, list[Scripted]], clock: FakeClock
) -> None:
    url, holder = scripted_url
    holder.append(
        Scripted(
            [
                {"importId": "job-1", "status": "NotFinished"},
                {
                    "importId": "job-1",
                    "status": "Finished",
                    "created": [{"contactId": 1, "identifiers": {"email": "a@example.com"}}],
                    "updated": [{"contactId": 2, "identifiers": {"email": "B@EXAMPLE.COM"}}],
                    "failures": [
                        {  # imported, but a data set of it failed: not known to be a member
                            "contactId": 2,
                            "matchIdentifier": "email",
                            "identifiers": {"email": "b@example.com"},
                            "failures": [
                                {"failureCode": "consentRecordsNotApplied", "description": "x"}
                            ],
                        },
                        {
                            "matchIdentifier": "email",
                            "identifiers": {"email": "c@example.com"},
                            "failures": [
                                {
                                    "failureCode": "duplicateIdentifier",
                                    "description": "Duplicate identifier detected",
                                }
                            ],
                        },
                    ],
                },
            ]
        )
    )
    settings = ConnectorSettings(
        name="s", username=USER, password=Secret(PASSWORD), api_endpoint=url
    )
    async with await DotDigitalClient.connect(
        client_config(settings), clock=clock, retry=fast_retry()
    ) as client:
        outcome = await client.import_contacts(
            7, ["A@example.com", "b@example.com", "c@example.com", "d@example.com"]
        )
    assert outcome.imported == {"A@example.com": 1}
    # ddsync sends no data set but the list: a contact imported and failed is rejected.
    assert outcome.rejected["b@example.com"].failure_code == "consentRecordsNotApplied"
    assert client.known_contact_id("b@example.com") == 2
    assert outcome.rejected["c@example.com"].failure_code == "duplicateIdentifier"
    assert outcome.rejected["d@example.com"].failure_code == "missingFromResult"
    assert holder[0].puts == 2  # the first answer was 429 tooManyActiveImports


@pytest.mark.parametrize("status", ["RejectedByWatchdog", "Failed", "ExceedsAllowedContactLimit"])
async def test_a_failed_import_is_import_failed_error(
    scripted_url: tuple[str, list[Scripted]], clock: FakeClock, status: str
) -> None:
    url, holder = scripted_url
    holder.append(Scripted([{"importId": "job-1", "status": status}]))
    settings = ConnectorSettings(
        name="s", username=USER, password=Secret(PASSWORD), api_endpoint=url
    )
    async with await DotDigitalClient.connect(
        client_config(settings), clock=clock, retry=fast_retry()
    ) as client:
        with pytest.raises(ImportFailedError) as caught:
            await client.import_contacts(7, ["a@example.com"])
    assert caught.value.import_status == status
    assert caught.value.import_id == "job-1"


# -- volume ----------------------------------------------------------------------------------


async def test_an_unknown_list_id_of_an_existing_book_stays_a_rejection(
    scripted_url: tuple[str, list[Scripted]], clock: FakeClock
) -> None:
    url, holder = scripted_url
    failure = {"failureCode": "InvalidAddressBookIds", "description": "odd"}
    holder.append(
        Scripted(
            [
                {
                    "importId": "job-1",
                    "status": "Finished",
                    "failures": [
                        {
                            "matchIdentifier": "email",
                            "identifiers": {"email": "a@example.com"},
                            "failures": [failure],
                        }
                    ],
                }
            ]
        )
    )
    settings = ConnectorSettings(
        name="s", username=USER, password=Secret(PASSWORD), api_endpoint=url
    )
    async with await DotDigitalClient.connect(
        client_config(settings), clock=clock, retry=fast_retry()
    ) as client:
        outcome = await client.import_contacts(7, ["a@example.com"])
    assert outcome.rejected["a@example.com"].failure_code == "InvalidAddressBookIds"
    assert holder[0].book_gets == 1


async def test_twenty_thousand_contacts_in_and_out_with_the_real_clock() -> None:
    account = SandboxAccount(
        USER,
        PASSWORD,
        region="r1",
        rate_limits_enabled=False,
        import_delay_seconds=0.05,
        address_books=(SandboxAddressBook(BOOK_A, "Big"),),
    )
    settings_kwargs: dict[str, Any] = {"accounts": [account], "journal_limit": 1000}
    async with run_sandbox(SandboxSettings(**settings_kwargs)) as sb:
        # Every removed contact is looked up (after its removal by remembered id): the sandbox's
        # limits are off, so the client's 'other' budget is raised too.
        settings = connector(
            sb,
            add_requests_per_minute=10_000,
            remove_requests_per_minute=10_000,
            other_requests_per_minute=1_000_000,
        )
        emails = [f"user{i}@example.com" for i in range(20_000)]
        started = time.monotonic()
        async with await DotDigitalClient.connect(
            client_config(settings), clock=SystemClock()
        ) as client:
            outcomes = await asyncio.gather(
                *(
                    client.import_contacts(BOOK_A, emails[i : i + 1000])
                    for i in range(0, len(emails), 1000)
                )
            )
            assert sum(len(o.imported) for o in outcomes) == 20_000
            assert len(sb.members(USER, BOOK_A)) == 20_000
            removals = await asyncio.gather(
                *(
                    client.remove_contacts(BOOK_A, emails[i : i + 1000])
                    for i in range(0, 10_000, 1000)
                )
            )
        elapsed = time.monotonic() - started
    assert sum(len(r.removed) for r in removals) == 10_000
    assert len(sb.members(USER, BOOK_A)) == 10_000
    assert elapsed < 20, f"20,000 adds and 10,000 removes took {elapsed:.1f}s"


def test_error_messages_carry_no_email_address() -> None:
    from stream.dotdigital.http import path_for_messages

    assert path_for_messages("/contacts/v3/email/jane%40example.com") == (
        "/contacts/v3/email/{email}"
    )
    assert path_for_messages("/v2/address-books?select=1000&skip=0") == "/v2/address-books"
