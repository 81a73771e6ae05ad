"""``GET /contacts/v3`` (getContacts) over real HTTP: paging, filters, errors, and every
exchange validated against DotDigital's published OpenAPI specs at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

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
from tests.support import Api, validate_journal
from tests.support.openapi import validate_error_body, validate_response

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

USER = "lister@apiconnector.com"
OTHER = "other@apiconnector.com"
PASSWORD = "pw"
BOOK = 301
SIDE = 302
START = 1_700_000_000 - (1_700_000_000 % 3600) + 10.0


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[Sandbox, FakeClock]]:
    """Imports and removals finish at once; time moves only when the test says."""
    clock = FakeClock(START)
    accounts = [
        SandboxAccount(
            USER,
            PASSWORD,
            import_delay_seconds=0,
            address_books=(SandboxAddressBook(BOOK, "Listed"), SandboxAddressBook(SIDE, "Side")),
        ),
        SandboxAccount(
            OTHER, PASSWORD, import_delay_seconds=0, address_books=(SandboxAddressBook(9, "X"),)
        ),
    ]
    async with run_sandbox(SandboxSettings(accounts=accounts, clock=clock)) as sb:
        yield sb, clock
        validate_journal(sb.journal)


@pytest.fixture
def api(sandbox: tuple[Sandbox, FakeClock], session: aiohttp.ClientSession) -> Api:
    return Api(session, sandbox[0].urls, USER, PASSWORD)


def items(*emails: str, lists: tuple[int, ...] = (BOOK,), **extra: Any) -> list[dict[str, Any]]:
    return [
        {"matchIdentifier": "email", "identifiers": {"email": e}, "lists": list(lists), **extra}
        for e in emails
    ]


async def imported(api: Api, contacts: list[dict[str, Any]]) -> list[int]:
    """Import (finished at once: no delay) and return the contact ids, in the given order."""
    reply = await api.call("PUT", "/contacts/v3/import", {"contacts": contacts})
    assert reply.status == 202, reply.text
    status = await api.call("GET", f"/contacts/v3/import/{reply.body['importId']}")
    assert status.body["status"] == "Finished"
    assert status.body["failures"] == []
    by_email = {
        ref["identifiers"]["email"].lower(): ref["contactId"]
        for ref in status.body["created"] + status.body["updated"]
    }
    return [by_email[c["identifiers"]["email"].lower()] for c in contacts]


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def listing(api: Api, query: str) -> dict[str, Any]:
    reply = await api.call("GET", f"/contacts/v3?{query}")
    assert reply.status == 200, reply.text
    assert validate_response("GET", "/contacts/v3", 200, reply.body)
    body: dict[str, Any] = reply.body
    return body


def ids_of(body: dict[str, Any]) -> list[int]:
    return [item["contactId"] for item in body["_items"]]


async def test_a_book_of_12000_pages_in_three_ascending_pages(
    sandbox: tuple[Sandbox, FakeClock], api: Api
) -> None:
    journal = sandbox[0].journal
    members: list[int] = []
    for chunk in range(3):
        members += await imported(api, items(*(f"m{chunk}-{i}@x.com" for i in range(4000))))
    # Contacts of the account outside the book, one of them older than every member.
    outsiders = await imported(api, items("out1@x.com", "out2@x.com", lists=(SIDE,)))
    # An outsider joining the book late is out of id order: it must still come in order.
    members += await imported(api, items("out1@x.com"))
    # Validating these import bodies at teardown would take ~15 s; imports are checked by
    # other tests. The pages below are validated as they come (see listing()).
    journal.clear()
    pages = []
    body = await listing(api, f"~listId={BOOK}&limit=5000")
    first_marker = body["_links"]["first"]["marker"]
    assert body["_links"]["self"]["marker"] == first_marker
    pages.append(body)
    while "next" in body["_links"]:
        marker = body["_links"]["next"]["marker"]
        link = body["_links"]["next"]["link"]
        assert link.startswith(api.urls["r1"] + "/contacts/v3?")
        # Following the link gives the same page as sending the marker.
        body = await listing(api, link.split("?", 1)[1])
        assert body["_links"]["self"]["marker"] == marker
        assert body["_links"]["first"]["marker"] == first_marker
        pages.append(body)
    assert [len(p["_items"]) for p in pages] == [5000, 5000, 2001]
    seen = [i for p in pages for i in ids_of(p)]
    assert seen == sorted(seen)
    assert seen == sorted(members)
    assert outsiders[1] not in seen
    first = pages[0]["_items"][0]
    assert set(first) == {"contactId", "status", "created", "updated", "identifiers"}
    everyone = await listing(api, "limit=100")
    assert ids_of(everyone) == sorted([*members, *outsiders])[:100]
    assert "next" in everyone["_links"]
    journal.clear()  # validated above; no need to spend seconds again at teardown


async def test_paging_is_stable_while_members_come_and_go(api: Api) -> None:
    ids = await imported(api, items(*(f"s{i}@x.com" for i in range(30))))
    first = await listing(api, f"~listId={BOOK}&limit=10")
    seen = ids_of(first)
    assert seen == ids[:10]
    # Between pages: a seen member and an unseen one leave, a newcomer joins.
    for gone in (ids[2], ids[25]):
        assert (await api.call("DELETE", f"/v2/address-books/{BOOK}/contacts/{gone}")).status == 204
    (newcomer,) = await imported(api, items("newcomer@x.com"))
    body = first
    while "next" in body["_links"]:
        marker = body["_links"]["next"]["marker"]
        body = await listing(api, f"~listId={BOOK}&limit=10&marker={marker}")
        seen += ids_of(body)
    assert len(seen) == len(set(seen))
    assert set(seen) == (set(ids) - {ids[25]}) | {newcomer}


async def test_created_finds_a_recreated_contact(
    sandbox: tuple[Sandbox, FakeClock], api: Api, session: aiohttp.ClientSession
) -> None:
    sb, clock = sandbox
    old = await imported(api, items("back@x.com", "stays@x.com"))
    clock.advance(120)
    since = clock.time()
    url = f"{sb.urls['r1']}/_sandbox/accounts/{USER}/contacts/back@x.com/recreate"
    async with session.post(url, json={"lists": [BOOK]}) as r:
        assert r.status == 200
        recreated = await r.json()
    assert recreated["previousContactId"] == old[0]
    for query in (
        f"~created=gte::{iso(since)}",
        f"~created=gte::{iso(since)[:-1]}.000Z",
        f"~listId={BOOK}&~created=gte::{iso(since)}",
    ):
        body = await listing(api, query)
        assert ids_of(body) == [recreated["contactId"]], query
        assert body["_items"][0]["created"] == iso(since)
    assert ids_of(await listing(api, f"~created=gte::{iso(since + 1)}")) == []
    everyone = await listing(api, f"~created=gte::{iso(START)}")
    assert ids_of(everyone) == [old[1], recreated["contactId"]]


async def test_modified_finds_what_an_import_or_a_removal_changed(
    sandbox: tuple[Sandbox, FakeClock], api: Api
) -> None:
    _, clock = sandbox
    a, b, c, d = await imported(api, items("a@x.com", "b@x.com", "c@x.com", "d@x.com"))
    clock.advance(300)
    since = clock.time()
    await imported(
        api,
        [
            *items("a@x.com", dataFields={"FIRSTNAME": "Ann"}),  # a data field changes
            *items("b@x.com", lists=(BOOK, SIDE)),  # joins a list
            *items("d@x.com"),  # nothing changes
        ],
    )
    removal = await api.call("POST", f"/v2/address-books/{BOOK}/contacts/delete", [c])
    assert removal.status == 202
    body = await listing(api, f"~modified=gte::{iso(since)}")
    assert ids_of(body) == [a, b, c]
    assert {item["updated"] for item in body["_items"]} == {iso(since)}
    assert {item["created"] for item in body["_items"]} == {iso(START)}
    assert ids_of(await listing(api, f"~listId={BOOK}&~modified=gte::{iso(since)}")) == [a, b]
    assert d not in ids_of(await listing(api, f"~modified=gte::{iso(since)}"))


async def test_include_lists_and_data_fields(api: Api) -> None:
    (contact_id,) = await imported(
        api, items("df@x.com", lists=(BOOK, SIDE), dataFields={"FIRSTNAME": "Di", "AGE": 40})
    )
    body = await listing(api, "include=lists|channelProperties&data-fields=firstname")
    (item,) = body["_items"]
    single = await api.call("GET", f"/contacts/v3/contactId/{contact_id}")
    assert item["lists"] == single.body["lists"]
    assert [entry["id"] for entry in item["lists"]] == [BOOK, SIDE]
    assert item["channelProperties"] == single.body["channelProperties"]
    assert item["dataFields"] == {"FIRSTNAME": "Di"}
    everything = await listing(api, f"data-fields={quote('[[ALL]]')}")
    assert everything["_items"][0]["dataFields"] == {"FIRSTNAME": "Di", "AGE": 40}
    plain = await listing(api, "include=preferences")
    assert set(plain["_items"][0]) == {"contactId", "status", "created", "updated", "identifiers"}


async def test_unknown_or_foreign_list_has_no_contacts(api: Api) -> None:
    await imported(api, items("someone@x.com"))
    for query in ("~listId=424242", "~listId=9", "~segmentId=5"):
        body = await listing(api, query)
        assert body["_items"] == []
        assert set(body["_links"]) == {"self", "first"}


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("~created=gte::2022-08-01T00:00:00Z&~modified=gte::2022-08-01T00:00:00Z", "invalidFilter"),
        ("~listId=1&~segmentId=2", "invalidFilter"),
        ("~created=2022-08-01T00:00:00Z", "invalidFilter"),
        ("~created=gte::2022-08-01", "invalidFilter"),
        ("~modified=gte::2022-13-01T00:00:00Z", "invalidFilter"),
        ("~modified=gte::2022-08-01T00:00:00.1Z", "invalidFilter"),
        ("~listId=abc", "invalidFilter"),
        ("~listId=", "invalidFilter"),
        ("limit=0", "invalidLimit"),
        ("limit=5001", "invalidLimit"),
        ("limit=ten", "invalidLimit"),
        ("marker=not-a-marker", "invalidMarker"),
        ("marker=" + "aGVsbG8", "invalidMarker"),  # base64 of "hello"
        ("include=lists|everything", "invalidInclude"),
    ],
)
async def test_bad_query_is_400_with_a_v3_error(api: Api, query: str, code: str) -> None:
    reply = await api.call("GET", f"/contacts/v3?{query}")
    assert reply.status == 400, reply.text
    assert reply.body["errorCode"] == f"contacts:{code}"
    validate_error_body("/contacts/v3", reply.body, 400)
    validate_response("GET", "/contacts/v3", 400, reply.body)


async def test_limits_at_the_edges_and_the_default(api: Api) -> None:
    await imported(api, items("one@x.com", "two@x.com"))
    assert len((await listing(api, "limit=1"))["_items"]) == 1
    assert len((await listing(api, "limit=5000"))["_items"]) == 2
    body = await listing(api, "")
    assert len(body["_items"]) == 2
    assert "next" not in body["_links"]
