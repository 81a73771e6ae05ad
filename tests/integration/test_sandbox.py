"""The sandbox over real HTTP: every endpoint's happy path and errors, validated against
DotDigital's published OpenAPI specs (every exchange in the journal is checked at teardown)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from stream.clock import FakeClock
from stream.sandbox import (
    Sandbox,
    SandboxAccount,
    SandboxAddressBook,
    SandboxSettings,
    run_sandbox,
)
from tests.support import Api, basic_auth, validate_journal
from tests.support.openapi import validate_error_body, validate_response

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

EU = "eu@apiconnector.com"
US = "us@apiconnector.com"
PASSWORD = "secret-pw"
AUTH_DENIED = {"message": "Authorization has been denied for this request."}
BOOK_NOT_FOUND = {"message": "Error: ERROR_ADDRESSBOOK_NOT_FOUND"}


def accounts(**eu: Any) -> list[SandboxAccount]:
    return [
        SandboxAccount(
            EU,
            PASSWORD,
            region="r1",
            account_id=11,
            address_books=(SandboxAddressBook(501, "Seeded"),),
            **eu,
        ),
        SandboxAccount(US, PASSWORD, region="r2", account_id=12, import_delay_seconds=0),
    ]


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox(SandboxSettings(accounts=accounts(import_delay_seconds=0.05))) as sb:
        yield sb
        # Every exchange the test made, checked against the specs.
        validate_journal(sb.journal)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def eu(sandbox: Sandbox, session: aiohttp.ClientSession) -> Api:
    return Api(session, sandbox.urls, EU, PASSWORD)


@pytest.fixture
def us(sandbox: Sandbox, session: aiohttp.ClientSession) -> Api:
    return Api(session, sandbox.urls, US, PASSWORD)


def contact(email: str, *lists: int, **extra: object) -> dict[str, object]:
    return {
        "matchIdentifier": "email",
        "identifiers": {"email": email},
        "lists": list(lists),
        **extra,
    }


async def create_book(api: Api, name: str) -> int:
    reply = await api.call("POST", "/v2/address-books", {"name": name})
    assert reply.status == 201, reply.text
    book_id: int = reply.body["id"]
    return book_id


async def import_and_wait(api: Api, contacts: list[dict[str, object]]) -> dict[str, Any]:
    reply = await api.call("PUT", "/contacts/v3/import", {"contacts": contacts})
    assert reply.status == 202, reply.text
    import_id = reply.body["importId"]
    for _ in range(200):
        status = await api.call("GET", f"/contacts/v3/import/{import_id}")
        assert status.status == 200
        if status.body["status"] == "Finished":
            report: dict[str, Any] = status.body
            return report
        await asyncio.sleep(0.01)
    raise AssertionError("import never finished")


# -- start-up and regions --------------------------------------------------------------------


async def test_starts_quickly_on_three_free_ports() -> None:
    started = time.perf_counter()
    async with run_sandbox(SandboxSettings(accounts=accounts())) as sb:
        elapsed = time.perf_counter() - started
        assert elapsed < 2.0
        assert set(sb.urls) == {"r1", "r2", "r3"}
        assert len(set(sb.urls.values())) == 3
        assert sb.discovery_url == sb.urls["r1"]
        async with aiohttp.ClientSession() as s:
            for url in sb.urls.values():
                async with s.get(url + "/_sandbox/health") as r:
                    assert r.status == 200


def _free_port_block() -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base: int = probe.getsockname()[1]
        if base > 65000:
            continue
        try:
            for offset in range(3):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise AssertionError("no free block of three ports")


async def test_fixed_port_binds_n_n1_n2() -> None:
    port = _free_port_block()
    async with run_sandbox(SandboxSettings(accounts=accounts(), port=port)) as sb:
        assert sb.urls == {
            "r1": f"http://127.0.0.1:{port}",
            "r2": f"http://127.0.0.1:{port + 1}",
            "r3": f"http://127.0.0.1:{port + 2}",
        }


async def test_account_info_detects_region_on_r1(sandbox: Sandbox, eu: Api, us: Api) -> None:
    for api, region, account_id in ((eu, "r1", 11), (us, "r2", 12)):
        reply = await api.call("GET", "/v2/account-info")
        assert reply.status == 200
        assert validate_response("GET", "/v2/account-info", 200, reply.body)
        assert reply.body["id"] == account_id
        props = {p["name"]: p["value"] for p in reply.body["properties"]}
        assert props["ApiEndpoint"] == sandbox.urls[region] + "/"
        assert props["MainEmail"] == api.username
    # On its own host too; on a third host it is refused.
    assert (await us.call("GET", "/v2/account-info", region="r2")).status == 200
    assert (await us.call("GET", "/v2/account-info", region="r3")).status == 403


async def test_wrong_region_is_403(us: Api, eu: Api) -> None:
    for api, region, path in (
        (us, "r1", "/v2/address-books"),
        (us, "r1", "/contacts/v3/email/a@example.com"),
        (eu, "r2", "/v2/address-books"),
        (eu, "r3", "/v2/account-info"),
    ):
        reply = await api.call("GET", path, region=region)
        assert reply.status == 403, (api.username, region, path)
        assert reply.body == {"message": "Forbidden: Access is denied."}
    assert (await us.call("GET", "/v2/address-books", region="r2")).status == 200


# -- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        "",
        basic_auth(EU, "wrong"),
        basic_auth("nobody@apiconnector.com", PASSWORD),
        "Basic not-base64!",
        "Bearer token",
        basic_auth(EU, ""),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/account-info"),
        ("GET", "/v2/address-books"),
        ("PUT", "/contacts/v3/import"),
        ("GET", "/contacts/v3/email/a@example.com"),
        ("POST", "/v2/address-books/501/contacts/delete"),
    ],
)
async def test_bad_credentials_are_401(eu: Api, auth: str, method: str, path: str) -> None:
    reply = await eu.call(method, path, auth=auth)
    assert reply.status == 401
    assert reply.body == AUTH_DENIED
    assert "X-RateLimit-Limit" not in reply.headers


async def test_username_is_case_insensitive(eu: Api) -> None:
    reply = await eu.call("GET", "/v2/account-info", auth=basic_auth(EU.upper(), PASSWORD))
    assert reply.status == 200


# -- address books ---------------------------------------------------------------------------


async def test_create_book_accepts_either_key_casing(eu: Api) -> None:
    reply = await eu.call("POST", "/v2/address-books", {"Name": "Pascal", "Visibility": "Public"})
    assert reply.status == 201
    assert reply.body == {
        "id": reply.body["id"],
        "name": "Pascal",
        "visibility": "Public",
        "contacts": 0,
    }
    reply = await eu.call("POST", "/v2/address-books", {"name": "camel"})
    assert reply.status == 201
    assert reply.body["visibility"] == "Private"
    got = await eu.call("GET", f"/v2/address-books/{reply.body['id']}")
    assert got.status == 200
    assert got.body == reply.body


@pytest.mark.parametrize("name", ["Seeded", "SEEDED", "Test", "all contacts"])
async def test_duplicate_or_reserved_name_is_400(eu: Api, name: str) -> None:
    reply = await eu.call("POST", "/v2/address-books", {"name": name})
    assert reply.status == 400
    assert reply.body == {
        "message": "That name is in use already, please choose another. ERROR_ADDRESSBOOK_DUPLICATE"
    }


@pytest.mark.parametrize(
    "body",
    [{}, {"name": ""}, {"name": "x" * 129}, {"name": "ok", "visibility": "Secret"}, [1], "x"],
)
async def test_invalid_create_is_400_parameter_invalid(eu: Api, body: object) -> None:
    reply = await eu.call("POST", "/v2/address-books", body)
    assert reply.status == 400
    assert reply.body["message"].endswith("ERROR_PARAMETER_INVALID")


async def test_same_name_in_another_account_is_fine(us: Api) -> None:
    reply = await us.call("POST", "/v2/address-books", {"name": "Seeded"}, region="r2")
    assert reply.status == 201


async def test_get_unknown_or_foreign_book_is_404(eu: Api, us: Api) -> None:
    us_book = await create_book_in(us, "US only")
    for path in ("/v2/address-books/999999", f"/v2/address-books/{us_book}", "/v2/address-books/x"):
        reply = await eu.call("GET", path)
        assert reply.status == 404
        assert reply.body == BOOK_NOT_FOUND


async def create_book_in(api: Api, name: str) -> int:
    region = "r2" if api.username == US else "r1"
    reply = await api.call("POST", "/v2/address-books", {"name": name}, region=region)
    assert reply.status == 201
    book_id: int = reply.body["id"]
    return book_id


async def test_list_books_pages_with_select_and_skip(eu: Api) -> None:
    ids = [501] + [await create_book(eu, f"Book {i}") for i in range(5)]
    public = await eu.call("POST", "/v2/address-books", {"name": "Pub", "visibility": "Public"})
    ids.append(public.body["id"])
    seen: list[int] = []
    skip = 0
    while True:
        reply = await eu.call("GET", f"/v2/address-books?select=3&skip={skip}")
        assert reply.status == 200
        if not reply.body:
            break
        assert len(reply.body) <= 3
        seen += [book["id"] for book in reply.body]
        skip += 3
    assert seen == sorted(ids)
    everything = await eu.call("GET", "/v2/address-books")
    assert [b["id"] for b in everything.body] == sorted(ids)
    assert [b["id"] for b in (await eu.call("GET", "/v2/address-books/public")).body] == [
        public.body["id"]
    ]
    private = await eu.call("GET", "/v2/address-books/private")
    assert public.body["id"] not in [b["id"] for b in private.body]


@pytest.mark.parametrize("query", ["select=0", "select=1001", "select=abc", "skip=-1"])
async def test_bad_paging_is_400(eu: Api, query: str) -> None:
    reply = await eu.call("GET", f"/v2/address-books?{query}")
    assert reply.status == 400
    assert reply.body["message"].endswith("ERROR_PARAMETER_INVALID")


async def test_select_1000_is_allowed(eu: Api) -> None:
    assert (await eu.call("GET", "/v2/address-books?select=1000")).status == 200
    assert (await eu.call("GET", "/v2/address-books?select=1")).status == 200


async def test_update_and_delete_book(sandbox: Sandbox, eu: Api) -> None:
    book = await create_book(eu, "Old name")
    await import_and_wait(eu, [contact("member@example.com", book)])
    reply = await eu.call("PUT", f"/v2/address-books/{book}", {"name": "New name"})
    assert reply.status == 200
    assert reply.body["name"] == "New name"
    assert reply.body["contacts"] == 1
    assert (await eu.call("PUT", f"/v2/address-books/{book}", {"name": "Seeded"})).status == 400
    assert (await eu.call("DELETE", f"/v2/address-books/{book}")).status == 204
    assert (await eu.call("GET", f"/v2/address-books/{book}")).status == 404
    assert (await eu.call("DELETE", f"/v2/address-books/{book}")).status == 404
    found = await eu.call("GET", "/contacts/v3/email/member@example.com")
    assert found.body["lists"] == []
    # The name is free again.
    assert (await eu.call("POST", "/v2/address-books", {"name": "New name"})).status == 201


# -- v3 import -------------------------------------------------------------------------------


@pytest.fixture
async def still() -> AsyncIterator[tuple[Sandbox, FakeClock]]:
    """A sandbox whose jobs end only when the test moves its clock (no race with real time)."""
    clock = FakeClock()
    settings = SandboxSettings(
        accounts=accounts(import_delay_seconds=0.05, deletion_delay_seconds=0.1), clock=clock
    )
    async with run_sandbox(settings) as sb:
        yield sb, clock
        validate_journal(sb.journal)


async def test_import_is_not_finished_then_finished(
    still: tuple[Sandbox, FakeClock], session: aiohttp.ClientSession
) -> None:
    sandbox, clock = still
    eu = Api(session, sandbox.urls, EU, PASSWORD)
    book = await create_book(eu, "Imports")
    reply = await eu.call(
        "PUT", "/contacts/v3/import", {"contacts": [contact("Jane@Example.com", book)]}
    )
    assert reply.status == 202
    import_id = reply.body["importId"]
    first = await eu.call("GET", f"/contacts/v3/import/{import_id}")
    assert first.body == {"importId": import_id, "status": "NotFinished"}
    assert sandbox.members(EU, book) == set()
    clock.advance(0.06)
    done = await eu.call("GET", f"/contacts/v3/import/{import_id}")
    assert done.body["status"] == "Finished"
    assert done.body["summary"] == {
        "newContacts": 1,
        "updatedContacts": 0,
        "globallySuppressed": 0,
        "invalidEntries": 0,
        "duplicateIdentifiers": 0,
    }
    assert done.body["created"] == [
        {
            "contactId": done.body["created"][0]["contactId"],
            "identifiers": {"email": "Jane@Example.com"},
        }
    ]
    assert done.body["updated"] == []
    assert done.body["failures"] == []
    assert sandbox.members(EU, book) == {"Jane@Example.com"}
    assert (await eu.call("GET", f"/v2/address-books/{book}")).body["contacts"] == 1


async def test_import_updates_existing_contacts_case_insensitively(
    sandbox: Sandbox, eu: Api
) -> None:
    a, b = await create_book(eu, "A"), await create_book(eu, "B")
    first = await import_and_wait(eu, [contact("x@example.com", a)])
    contact_id = first["created"][0]["contactId"]
    second = await import_and_wait(eu, [contact("X@EXAMPLE.COM", b)])
    assert second["created"] == []
    assert second["updated"] == [
        {"contactId": contact_id, "identifiers": {"email": "x@example.com"}}
    ]
    assert sandbox.members(EU, a) == sandbox.members(EU, b) == {"x@example.com"}
    found = await eu.call("GET", "/contacts/v3/email/x@example.com")
    assert {entry["id"] for entry in found.body["lists"]} == {a, b}


async def test_import_reports_per_contact_failures(sandbox: Sandbox, eu: Api) -> None:
    book = await create_book(eu, "Failures")
    result = await import_and_wait(
        eu,
        [
            contact("good@example.com", book),
            contact("bad@", book),
            contact("twice@example.com", book),
            contact("TWICE@example.com", book),
            contact("nolist@example.com", 987654),
            {"matchIdentifier": "email", "identifiers": {}},
            {"matchIdentifier": "shoeSize", "identifiers": {"shoeSize": "9"}},
        ],
    )
    codes = [
        (failure["identifiers"].get("email"), failure["failures"][0]["failureCode"])
        for failure in result["failures"]
    ]
    assert codes == [
        ("bad@", "invalidEmail"),
        ("twice@example.com", "duplicateIdentifier"),
        ("TWICE@example.com", "duplicateIdentifier"),
        ("nolist@example.com", "invalidAddressBookIds"),
        (None, "noValidIdentifiers"),
        (None, "invalidMatchIdentifier"),
    ]
    assert result["summary"]["duplicateIdentifiers"] == 2
    assert result["summary"]["invalidEntries"] == 4
    assert sandbox.members(EU, book) == {"good@example.com"}
    # A failed contact is not created at all.
    assert (await eu.call("GET", "/contacts/v3/email/nolist@example.com")).status == 404


async def test_import_stores_data_fields_and_null_clears(eu: Api) -> None:
    await import_and_wait(
        eu, [contact("df@example.com", dataFields={"firstName": "Ann", "lastName": "Lee"})]
    )
    await import_and_wait(eu, [contact("df@example.com", dataFields={"lastName": None})])
    found = await eu.call("GET", "/contacts/v3/email/df@example.com")
    assert found.body["dataFields"] == {"firstName": "Ann"}


async def test_import_by_contact_id(eu: Api) -> None:
    book = await create_book(eu, "ById")
    created = await import_and_wait(eu, [contact("byid@example.com")])
    contact_id = created["created"][0]["contactId"]
    result = await import_and_wait(
        eu,
        [
            {
                "matchIdentifier": "contactId",
                "identifiers": {"contactId": contact_id},
                "lists": [book],
            },
            {"matchIdentifier": "contactId", "identifiers": {"contactId": 1}, "lists": [book]},
        ],
    )
    assert [u["contactId"] for u in result["updated"]] == [contact_id]
    assert result["failures"][0]["failures"][0]["failureCode"] == "invalidContactId"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "contacts:badJson"),
        (b"[]", "contacts:badJson"),
        (b'{"contacts": []}', "contacts:noContactsSpecified"),
        (b'{"contacts": [{}], "mergeOption": "sometimes"}', "contacts:badJson"),
    ],
)
async def test_bad_import_request_is_400(eu: Api, body: bytes, code: str) -> None:
    reply = await eu.call("PUT", "/contacts/v3/import", data=body)
    assert reply.status == 400
    assert reply.body["errorCode"] == code
    validate_error_body("/contacts/v3/import", reply.body)


async def test_unknown_import_is_404(eu: Api) -> None:
    reply = await eu.call("GET", "/contacts/v3/import/00000000-0000-0000-0000-000000000000")
    assert reply.status == 404
    assert reply.body["errorCode"] == "contacts:importNotFound"
    assert validate_response("GET", "/contacts/v3/import/x", 404, reply.body)


async def test_import_of_another_account_is_not_visible(eu: Api, us: Api) -> None:
    reply = await us.call(
        "PUT", "/contacts/v3/import", {"contacts": [contact("u@example.com")]}, region="r2"
    )
    assert (await eu.call("GET", f"/contacts/v3/import/{reply.body['importId']}")).status == 404


# -- look-ups --------------------------------------------------------------------------------


async def test_lookup_by_email_and_contact_id(eu: Api) -> None:
    book = await create_book(eu, "Lookup")
    result = await import_and_wait(eu, [contact("look@example.com", book, 501)])
    contact_id = result["created"][0]["contactId"]
    for path in (
        "/contacts/v3/email/look@example.com",
        "/contacts/v3/email/LOOK@EXAMPLE.COM",
        f"/contacts/v3/contactId/{contact_id}",
    ):
        reply = await eu.call("GET", path)
        assert reply.status == 200, path
        assert reply.body["contactId"] == contact_id
        assert reply.body["identifiers"] == {"email": "look@example.com"}
        assert reply.body["lists"] == [
            {"id": 501, "name": "Seeded", "status": "subscribed"},
            {"id": book, "name": "Lookup", "status": "subscribed"},
        ]
    v2 = await eu.call("GET", "/v2/contacts/look@example.com")
    assert v2.status == 200
    assert v2.body["id"] == contact_id
    assert (await eu.call("GET", f"/v2/contacts/{contact_id}")).body["email"] == "look@example.com"


async def test_lookup_unknown_contact_is_404_with_details(eu: Api) -> None:
    reply = await eu.call("GET", "/contacts/v3/email/unknown@example.com")
    assert reply.status == 404
    assert reply.body == {
        "errorCode": "contacts:contactNotFound",
        "description": "The following contacts could not be found",
        "details": [
            {"item": "unknown@example.com", "description": "Not found using the identifier 'email'"}
        ],
    }
    assert (await eu.call("GET", "/v2/contacts/unknown@example.com")).body == {
        "message": "Error: ERROR_CONTACT_NOT_FOUND"
    }


async def test_lookup_malformed_email_is_400(eu: Api) -> None:
    reply = await eu.call("GET", "/contacts/v3/email/not-an-email")
    assert reply.status == 400
    assert reply.body["errorCode"] == "contacts:invalidId"


# -- removal ---------------------------------------------------------------------------------


async def test_bulk_removal_takes_membership_not_contacts(sandbox: Sandbox, eu: Api) -> None:
    book = await create_book(eu, "Removal")
    result = await import_and_wait(eu, [contact(f"r{i}@example.com", book, 501) for i in range(3)])
    ids = [c["contactId"] for c in result["created"]]
    reply = await eu.call(
        "POST", f"/v2/address-books/{book}/contacts/delete", [ids[0], ids[1], 424242]
    )
    assert reply.status == 202
    assert reply.body["status"] == "Started"
    status = await eu.call("GET", f"/v2/contacts/deletion/{reply.body['id']}")
    assert status.status == 200
    assert status.body == {"id": reply.body["id"], "status": "Completed"}
    assert sandbox.members(EU, book) == {"r2@example.com"}
    assert sandbox.members(EU, 501) == {f"r{i}@example.com" for i in range(3)}
    assert (await eu.call("GET", f"/v2/address-books/{book}")).body["contacts"] == 1
    kept = await eu.call("GET", "/contacts/v3/email/r0@example.com")
    assert kept.status == 200
    assert [entry["id"] for entry in kept.body["lists"]] == [501]
    # Removing again (no longer members) is fine.
    again = await eu.call("POST", f"/v2/address-books/{book}/contacts/delete", ids[:2])
    assert again.status == 202


async def test_bulk_removal_errors(eu: Api) -> None:
    reply = await eu.call("POST", "/v2/address-books/999999/contacts/delete", [1])
    assert reply.status == 404
    assert reply.body == BOOK_NOT_FOUND
    for body in ([{"id": 1}], {"ids": [1]}, ["1"]):
        bad = await eu.call("POST", "/v2/address-books/501/contacts/delete", body)
        assert bad.status == 400
        assert bad.body["message"].endswith("ERROR_PARAMETER_INVALID")
    unknown = await eu.call("GET", "/v2/contacts/deletion/00000000-0000-0000-0000-000000000000")
    assert unknown.status == 404


async def test_delayed_removal_is_started_until_done(
    still: tuple[Sandbox, FakeClock], session: aiohttp.ClientSession
) -> None:
    sb, clock = still
    api = Api(session, sb.urls, EU, PASSWORD)
    book = await create_book(api, "Slow")
    reply = await api.call("PUT", "/contacts/v3/import", {"contacts": [contact("s@x.com", book)]})
    clock.advance(0.06)
    result = await api.call("GET", f"/contacts/v3/import/{reply.body['importId']}")
    ids = [c["contactId"] for c in result.body["created"]]
    reply = await api.call("POST", f"/v2/address-books/{book}/contacts/delete", ids)
    status = await api.call("GET", f"/v2/contacts/deletion/{reply.body['id']}")
    assert status.body["status"] == "Started"
    assert sb.members(EU, book) == {"s@x.com"}
    clock.advance(0.11)
    status = await api.call("GET", f"/v2/contacts/deletion/{reply.body['id']}")
    assert status.body["status"] == "Completed"
    assert sb.members(EU, book) == set()


async def test_single_removal(sandbox: Sandbox, eu: Api) -> None:
    book = await create_book(eu, "Single")
    result = await import_and_wait(eu, [contact("one@example.com", book)])
    contact_id = result["created"][0]["contactId"]
    path = f"/v2/address-books/{book}/contacts/{contact_id}"
    assert (await eu.call("DELETE", path)).status == 204
    assert sandbox.members(EU, book) == set()
    assert (await eu.call("DELETE", path)).status == 204  # not a member: idempotent
    unknown = await eu.call("DELETE", f"/v2/address-books/{book}/contacts/999")
    assert unknown.status == 404
    assert unknown.body == {"message": "Error: ERROR_CONTACT_NOT_FOUND"}
    missing = await eu.call("DELETE", f"/v2/address-books/999999/contacts/{contact_id}")
    assert missing.body == BOOK_NOT_FOUND


async def test_single_removal_of_unknown_contact_can_be_204(
    session: aiohttp.ClientSession,
) -> None:
    settings = SandboxSettings(accounts=accounts(), unknown_contact_removal="204")
    async with run_sandbox(settings) as sb:
        api = Api(session, sb.urls, EU, PASSWORD)
        assert (await api.call("DELETE", "/v2/address-books/501/contacts/999")).status == 204


# -- control API and journal -----------------------------------------------------------------


async def test_control_members_stats_and_health(
    sandbox: Sandbox, eu: Api, session: aiohttp.ClientSession
) -> None:
    await import_and_wait(eu, [contact("b@example.com", 501), contact("a@example.com", 501)])
    base = sandbox.urls["r2"]  # control paths answer on every host, without auth
    async with session.get(f"{base}/_sandbox/accounts/{EU}/address-books/501/members") as r:
        assert r.status == 200
        assert await r.json() == {"emails": ["a@example.com", "b@example.com"]}
    async with session.get(f"{base}/_sandbox/accounts/{EU}/address-books/7/members") as r:
        assert r.status == 404
    async with session.get(f"{base}/_sandbox/accounts/nobody/address-books/501/members") as r:
        assert r.status == 404
    async with session.get(f"{base}/_sandbox/stats") as r:
        stats = await r.json()
        assert stats["calls"][EU]["add"] == 1
        assert stats["calls"][EU]["other"] >= 1
    async with session.get(f"{base}/_sandbox/health") as r:
        assert (await r.json())["urls"] == sandbox.urls


async def test_stats_count_sends_that_changed_nothing(
    sandbox: Sandbox, eu: Api, session: aiohttp.ClientSession
) -> None:
    """The chaos run reads re-sends from here: an import of a member, a removal of a
    non-member."""
    await import_and_wait(eu, [contact("n@example.com", 501)])
    await import_and_wait(eu, [contact("n@example.com", 501), contact("m@example.com", 501)])
    found = await eu.call("GET", "/v2/contacts/n@example.com")
    for _ in range(2):
        reply = await eu.call("POST", "/v2/address-books/501/contacts/delete", [found.body["id"]])
        assert reply.status == 202, reply.text
        for _ in range(200):
            status = await eu.call("GET", f"/v2/contacts/deletion/{reply.body['id']}")
            if status.body["status"] == "Completed":
                break
            await asyncio.sleep(0.01)
    async with session.get(f"{sandbox.urls['r1']}/_sandbox/stats") as r:
        stats = await r.json()
    assert stats["no_op_sends"][EU] == {"adds": 1, "removals": 1}
    assert stats["no_op_sends"][US] == {"adds": 0, "removals": 0}


async def test_journal_records_requests(sandbox: Sandbox, eu: Api) -> None:
    sandbox.journal.clear()
    await eu.call("PUT", "/contacts/v3/import", {"contacts": [contact("j@example.com", 501)]})
    await eu.call("GET", "/v2/address-books?select=5", auth=basic_auth(EU, "wrong"))
    first, second = sandbox.journal
    assert (first.method, first.path, first.account, first.region, first.status) == (
        "PUT",
        "/contacts/v3/import",
        EU,
        "r1",
        202,
    )
    assert first.body == {"contacts": [contact("j@example.com", 501)]}
    assert "importId" in first.response
    assert second.query == {"select": "5"}
    assert (second.account, second.status) == (None, 401)
    assert validate_journal(sandbox.journal) == 1


async def test_unknown_path_is_404_json(eu: Api) -> None:
    reply = await eu.call("GET", "/v2/nothing-here")
    assert reply.status == 404
    assert "message" in reply.body
    assert "X-RateLimit-Scope" in reply.headers


async def test_members_api(sandbox: Sandbox, eu: Api) -> None:
    with pytest.raises(KeyError):
        sandbox.members("nobody", 501)
    with pytest.raises(KeyError):
        sandbox.members(EU, 424242)
    assert sandbox.members(EU.upper(), 501) == set()
    assert sandbox.address_books(EU) == {501: "Seeded"}
