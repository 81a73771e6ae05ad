"""The endpoints: DotDigital's v2 and v3 calls ddsync uses, and the ``/_sandbox`` control API.

Handlers run after the middleware of :mod:`.app` has authenticated the account, charged its
rate budget and settled its due jobs; they translate :class:`.state.SandboxError` into
DotDigital's error bodies (v2 ``message`` or v3 ``errorCode``).

``GET /contacts/v3`` (``getContacts``), as the sandbox serves it:

* Query: ``~listId`` (integer: only that address book's members), ``~segmentId`` (integer; the
  sandbox has no segments, so no contacts), ``~created=gte::<time>`` / ``~modified=gte::<time>``
  (time ``YYYY-MM-DDTHH:MM:SS[.fff]Z``; a contact matches when its ``created`` / ``updated``,
  in whole seconds as shown, is at or after it), ``limit`` 1..5000 (default 5000), ``marker``
  (from a previous answer's ``_links``), ``include`` (pipe-delimited: ``lists`` and
  ``channelProperties`` add those parts as the single-contact look-up shows them;
  ``preferences`` and ``consentRecords`` are accepted and add nothing, the sandbox has neither),
  ``data-fields`` (pipe-delimited names, matched case-insensitively, or ``[[ALL]]``; without it
  there is no ``dataFields``).
* 200 ``{"_items": [...], "_links": {"self", "first", "next"?}}``: contacts in ascending
  ``contactId`` order, each at least ``contactId``, ``status``, ``created``, ``updated``,
  ``identifiers``; each link ``{"link": <URL of that page>, "marker": ...}``; ``next`` only when
  another page follows. A marker means "the contacts after contactId N" (base64url, opaque to
  clients), so paging neither repeats nor skips a contact that stays a member while others
  come and go; contacts created meanwhile get higher ids and so appear on later pages.
* 400 v3 errors: ``contacts:invalidFilter`` for ``~created`` with ``~modified``, ``~listId``
  with ``~segmentId``, or a malformed filter value (the code the spec's example shows);
  ``contacts:invalidLimit``, ``contacts:invalidMarker``, ``contacts:invalidInclude`` for the
  others (the sandbox's choice of codes: DotDigital's are not documented).
* An unknown ``~listId`` (or another account's) answers 200 with no items: the sandbox's
  choice, unconfirmed (DotDigital does not document it).

Control endpoints (no authentication: the sandbox is a local tool, and tests and demos read
them without credentials):

* ``GET /_sandbox/health`` -> ``{"status": "ok", "urls": {...}}``
* ``GET /_sandbox/faults`` -> the current switches; ``POST /_sandbox/faults`` with a JSON
  object of some of the :class:`.faults.Faults` fields (``error_rate``, ``latency_seconds``,
  ``drop_rate``, ``throttle_rate``, ``proxy_404_rate``, ``fail_next``, ``drop_next``,
  ``proxy_404_next``, ...) changes them and returns the result (400 on a bad value, nothing
  changed).
* ``GET /_sandbox/accounts/{username}/address-books/{id}/members`` -> ``{"emails": [...]}``
  (sorted; 404 for an unknown account or book).
* ``POST /_sandbox/accounts/{username}/contacts/{email}/recreate`` with ``{"lists": [ids]}``
  deletes the contact and creates it again with a new id in those books (a contact deleted in
  DotDigital and come back) -> ``{"previousContactId": old, "contactId": new}``; 404 for an
  unknown account, contact or book.
* ``POST /_sandbox/accounts/{username}/lock`` with ``{"locked": true|false}`` locks or unlocks
  the account's API user: while locked every API call with its credentials answers 401, as
  DotDigital does for a locked user or a disabled account -> ``{"locked": bool}``; 404 for an
  unknown account.
* ``GET /_sandbox/stats`` -> calls per account and tier, 429s served, faults served, and
  ``no_op_sends`` per account: imports of a contact into a book it was in, removals of
  non-members (re-sends of what was applied show there).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from stream.sandbox import bodies
from stream.sandbox.core import (
    CORE,
    CURRENT_ACCOUNT,
    CURRENT_BODY,
    INVALID_JSON,
    REGION,
)
from stream.sandbox.state import AccountState, Contact, ContactQuery, SandboxError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_SELECT = 1000
MAX_LIMIT = 5000
INCLUDES = frozenset({"channelProperties", "lists", "preferences", "consentRecords"})
ALL_DATA_FIELDS = "[[ALL]]"
_SINCE = re.compile(r"^gte::(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{3})?)Z$")
_MARKER = re.compile(r"^after:(0|[1-9][0-9]{0,17})$")


def add_routes(app: web.Application) -> None:
    """Register every route; fixed paths before the parametrised ones they would shadow."""
    r = app.router
    r.add_get("/v2/account-info", account_info)
    r.add_get("/v2/address-books", list_books)
    r.add_get("/v2/address-books/private", list_private_books)
    r.add_get("/v2/address-books/public", list_public_books)
    r.add_post("/v2/address-books", create_book)
    r.add_get("/v2/address-books/{id}", get_book)
    r.add_put("/v2/address-books/{id}", update_book)
    r.add_delete("/v2/address-books/{id}", delete_book)
    r.add_get("/v2/address-books/{id}/contacts", list_book_contacts)
    r.add_post("/v2/address-books/{id}/contacts/delete", bulk_remove)
    r.add_delete("/v2/address-books/{id}/contacts/{contact_id}", remove_one)
    r.add_get("/v2/contacts/deletion/{id}", deletion_status)
    r.add_get("/v2/contacts/{key}", get_v2_contact)
    r.add_get("/contacts/v3", list_contacts)
    r.add_put("/contacts/v3/import", submit_import)
    r.add_get("/contacts/v3/import/{id}", import_status)
    r.add_get("/contacts/v3/{identifier}/{value}", get_v3_contact)
    r.add_get("/_sandbox/health", control_health)
    r.add_get("/_sandbox/faults", control_get_faults)
    r.add_post("/_sandbox/faults", control_set_faults)
    r.add_get("/_sandbox/stats", control_stats)
    r.add_get("/_sandbox/accounts/{username}/address-books/{id}/members", control_members)
    r.add_post("/_sandbox/accounts/{username}/contacts/{email}/recreate", control_recreate)
    r.add_post("/_sandbox/accounts/{username}/lock", control_lock)


def _account(request: web.Request) -> AccountState:
    return CURRENT_ACCOUNT.get()


def _book_id(request: web.Request, key: str = "id") -> int | None:
    text = request.match_info[key]
    return int(text) if text.isdigit() else None


def _page(request: web.Request) -> tuple[int, int] | web.Response:
    """``select``/``skip`` from the query; DotDigital allows select 1..1000."""
    try:
        select = int(request.query.get("select", str(MAX_SELECT)))
        skip = int(request.query.get("skip", "0"))
    except ValueError:
        return bodies.v2_invalid("select and skip must be whole numbers.")
    if not 1 <= select <= MAX_SELECT:
        return bodies.v2_invalid(
            "0 is not a valid number for select, and the maximum is 1000."
            if select < 1
            else "The maximum value of select is 1000."
        )
    if skip < 0:
        return bodies.v2_invalid("skip must not be negative.")
    return select, skip


# -- v2 account ------------------------------------------------------------------------------


async def account_info(request: web.Request) -> web.Response:
    state = _account(request)
    account = state.account
    core = request.app[CORE]
    used = core.limiter.calls_in_last_hour(account)
    remaining = max(0, account.flat_per_hour - used)
    properties = [
        ("Name", "String", account.username.split("@", 1)[0]),
        ("MainEmail", "String", account.username),
        ("APILocale", "String", "en-GB"),
        ("ApiCallsInLastHour", "Int", str(used)),
        ("ApiCallsRemaining", "Int", str(remaining)),
        # The documented example carries a trailing slash, so the sandbox does too: clients
        # must strip it.
        ("ApiEndpoint", "String", core.urls[account.region] + "/"),
        ("CurrencyCode", "String", "GBP"),
        ("TimeZoneIana", "String", "Europe/London"),
    ]
    return bodies.json_response(
        200,
        {
            "id": account.account_id,
            "properties": [{"name": n, "type": t, "value": v} for n, t, v in properties],
        },
    )


# -- v2 address books ------------------------------------------------------------------------


async def list_books(request: web.Request) -> web.Response:
    return _list_books(request, None)


async def list_private_books(request: web.Request) -> web.Response:
    return _list_books(request, "Private")


async def list_public_books(request: web.Request) -> web.Response:
    return _list_books(request, "Public")


def _list_books(request: web.Request, visibility: str | None) -> web.Response:
    page = _page(request)
    if isinstance(page, web.Response):
        return page
    select, skip = page
    return bodies.json_response(200, _account(request).list_books(select, skip, visibility))


def _book_fields(body: Any) -> tuple[str, str] | web.Response:
    """``name``/``visibility`` from a create/update body, keys matched case-insensitively
    (DotDigital's own integrations send ``Name``/``Visibility``)."""
    if body is INVALID_JSON or not isinstance(body, dict):
        return bodies.v2_invalid("The request body must be a JSON object.")
    fields = {str(key).lower(): value for key, value in body.items()}
    name = fields.get("name")
    if not isinstance(name, str) or not name.strip():
        return bodies.v2_invalid("Name is required.")
    visibility = fields.get("visibility", "Private")
    if not isinstance(visibility, str) or visibility.lower() not in ("private", "public"):
        return bodies.v2_invalid("Visibility must be Private or Public.")
    return name, visibility.capitalize()


def _book_error(exc: SandboxError) -> web.Response:
    if exc.kind == "book_not_found":
        return bodies.v2_error(404, bodies.BOOK_NOT_FOUND)
    if exc.kind == "duplicate_name":
        return bodies.v2_error(400, bodies.DUPLICATE_BOOK)
    if exc.kind == "contact_not_found":
        return bodies.v2_error(404, bodies.CONTACT_NOT_FOUND)
    return bodies.v2_invalid(exc.detail)


async def create_book(request: web.Request) -> web.Response:
    fields = _book_fields(CURRENT_BODY.get())
    if isinstance(fields, web.Response):
        return fields
    try:
        book = _account(request).create_book(*fields)
    except SandboxError as exc:
        return _book_error(exc)
    return bodies.json_response(201, book.as_api())


async def get_book(request: web.Request) -> web.Response:
    book_id = _book_id(request)
    if book_id is None:
        return bodies.v2_error(404, bodies.BOOK_NOT_FOUND)
    try:
        return bodies.json_response(200, _account(request).get_book(book_id).as_api())
    except SandboxError as exc:
        return _book_error(exc)


async def update_book(request: web.Request) -> web.Response:
    book_id = _book_id(request)
    fields = _book_fields(CURRENT_BODY.get())
    if isinstance(fields, web.Response):
        return fields
    if book_id is None:
        return bodies.v2_error(404, bodies.BOOK_NOT_FOUND)
    try:
        return bodies.json_response(200, _account(request).update_book(book_id, *fields).as_api())
    except SandboxError as exc:
        return _book_error(exc)


async def delete_book(request: web.Request) -> web.Response:
    book_id = _book_id(request)
    if book_id is None:
        return bodies.v2_error(404, bodies.BOOK_NOT_FOUND)
    try:
        _account(request).delete_book(book_id)
    except SandboxError as exc:
        return _book_error(exc)
    return bodies.empty_response(204)


def _v2_contact(contact: Contact) -> dict[str, Any]:
    return {
        "id": contact.id,
        "email": contact.email or "",
        "optInType": "Single",
        "emailType": "Html",
        "dataFields": [{"key": k, "value": v} for k, v in contact.data_fields.items()],
        "status": "Subscribed",
    }


async def list_book_contacts(request: web.Request) -> web.Response:
    book_id = _book_id(request)
    page = _page(request)
    if isinstance(page, web.Response):
        return page
    if book_id is None:
        return bodies.v2_error(404, bodies.BOOK_NOT_FOUND)
    try:
        contacts = _account(request).book_member_contacts(book_id, *page)
    except SandboxError as exc:
        return _book_error(exc)
    return bodies.json_response(200, [_v2_contact(c) for c in contacts])


# -- v2 removal ------------------------------------------------------------------------------


async def bulk_remove(request: web.Request) -> web.Response:
    book_id = _book_id(request)
    body = CURRENT_BODY.get()
    if (
        body is INVALID_JSON
        or not isinstance(body, list)
        or any(isinstance(i, bool) or not isinstance(i, int) for i in body)
    ):
        return bodies.v2_invalid("The request body must be a JSON array of contact ids.")
    if book_id is None:
        return bodies.v2_error(404, bodies.BOOK_NOT_FOUND)
    try:
        job = _account(request).submit_deletion(book_id, body)
    except SandboxError as exc:
        return _book_error(exc)
    # The answer to the request itself always says Started, as DotDigital's does.
    return bodies.json_response(202, {"id": job.id, "status": "Started"})


async def remove_one(request: web.Request) -> web.Response:
    book_id = _book_id(request)
    contact_id = _book_id(request, "contact_id")
    if book_id is None:
        return bodies.v2_error(404, bodies.BOOK_NOT_FOUND)
    strict = request.app[CORE].settings.unknown_contact_removal == "404"
    try:
        if contact_id is None:
            _account(request).get_book(book_id)
            if strict:
                return bodies.v2_error(404, bodies.CONTACT_NOT_FOUND)
        else:
            _account(request).remove_member(book_id, contact_id, strict=strict)
    except SandboxError as exc:
        return _book_error(exc)
    return bodies.empty_response(204)


async def deletion_status(request: web.Request) -> web.Response:
    try:
        return bodies.json_response(
            200, _account(request).deletion_status(request.match_info["id"])
        )
    except SandboxError:
        return bodies.v2_error(404, bodies.DELETION_NOT_FOUND)


async def get_v2_contact(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    identifier = "contactId" if key.isdigit() else "email"
    try:
        contact = _account(request).find_contact(identifier, key)
    except SandboxError as exc:
        if exc.kind == "invalid":
            return bodies.v2_invalid("Email is not a valid email address.")
        return bodies.v2_error(404, bodies.CONTACT_NOT_FOUND)
    return bodies.json_response(200, _v2_contact(contact))


# -- v3 contacts -----------------------------------------------------------------------------


async def submit_import(request: web.Request) -> web.Response:
    body = CURRENT_BODY.get()
    if body is INVALID_JSON or not isinstance(body, dict):
        return bodies.v3_error(400, "badJson", "The request JSON is badly formed")
    contacts = body.get("contacts")
    if not isinstance(contacts, list) or not contacts:
        return bodies.v3_error(400, "noContactsSpecified", "No contacts were specified")
    merge = body.get("mergeOption", "overwrite")
    if merge not in ("overwrite", "overwriteIfNotEmpty", "overwriteIfEmpty"):
        return bodies.v3_error(400, "badJson", "The request JSON is badly formed")
    try:
        job = _account(request).submit_import(contacts)
    except SandboxError:
        request.app[CORE].stats.too_many_imports += 1
        return bodies.v3_error(429, "tooManyActiveImports", bodies.TOO_MANY_IMPORTS)
    return bodies.json_response(202, {"importId": job.id})


async def import_status(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    try:
        return bodies.json_response(200, _account(request).import_status(job_id))
    except SandboxError:
        return bodies.v3_error(
            404, "importNotFound", f"The import request '{job_id}' could not be found!"
        )


async def get_v3_contact(request: web.Request) -> web.Response:
    identifier = request.match_info["identifier"]
    value = request.match_info["value"]
    state = _account(request)
    try:
        contact = state.find_contact(identifier, value)
    except SandboxError as exc:
        if exc.kind == "invalid":
            return bodies.v3_error(
                400,
                "invalidId",
                f"The id value '{value}' is invalid for the identifier '{identifier}'",
            )
        return bodies.v3_error(
            404,
            "contactNotFound",
            "The following contacts could not be found",
            [{"item": value, "description": f"Not found using the identifier '{identifier}'"}],
        )
    return bodies.json_response(200, state.contact_as_api(contact))


def _invalid_filter(value: str) -> web.Response:
    return bodies.v3_error(400, "invalidFilter", f"The filter value '{value}' is invalid")


def _since(value: str) -> float | None:
    """Unix time of a ``gte::<ISO 8601>`` filter value; ``None`` when malformed."""
    match = _SINCE.match(value)
    if match is None:
        return None
    try:
        return datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC).timestamp()
    except ValueError:  # the right shape but no such date, e.g. month 13
        return None


def _encode_marker(after: int) -> str:
    return base64.urlsafe_b64encode(f"after:{after}".encode()).decode("ascii").rstrip("=")


def _decode_marker(marker: str) -> int | None:
    try:
        text = base64.b64decode(marker + "=" * (-len(marker) % 4), b"-_", validate=True)
        match = _MARKER.match(text.decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(match.group(1)) if match else None


def _pipe_list(request: web.Request, name: str) -> list[str]:
    """A pipe-delimited query parameter's values (none when absent)."""
    return [part.strip() for part in request.query.get(name, "").split("|") if part.strip()]


def _contacts_query(request: web.Request) -> ContactQuery | web.Response:
    """``getContacts``'s filters, ``limit`` and ``marker`` from the query (see the module
    docstring for the errors)."""
    query = request.query
    for first, second in (("~listId", "~segmentId"), ("~created", "~modified")):
        if first in query and second in query:
            return bodies.v3_error(
                400, "invalidFilter", f"The filters '{first}' and '{second}' cannot be combined"
            )
    ids: dict[str, int | None] = {}
    for name in ("~listId", "~segmentId"):
        text = query.get(name)
        if text is not None and not re.fullmatch(r"-?[0-9]{1,18}", text):
            return _invalid_filter(text)
        ids[name] = int(text) if text is not None else None
    times: dict[str, float | None] = {}
    for name in ("~created", "~modified"):
        text = query.get(name)
        since = _since(text) if text is not None else None
        if text is not None and since is None:
            return _invalid_filter(text)
        times[name] = since
    limit_text = query.get("limit", str(MAX_LIMIT))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
        return bodies.v3_error(
            400, "invalidLimit", f"The limit '{limit_text}' must be between 1 and {MAX_LIMIT}"
        )
    after = 0
    if "marker" in query:
        decoded = _decode_marker(query["marker"])
        if decoded is None:
            return bodies.v3_error(
                400, "invalidMarker", f"The marker '{query['marker']}' is invalid"
            )
        after = decoded
    return ContactQuery(
        after=after,
        limit=int(limit_text),
        list_id=ids["~listId"],
        segment_id=ids["~segmentId"],
        created_from=times["~created"],
        modified_from=times["~modified"],
    )


def _page_link(request: web.Request, after: int) -> dict[str, str]:
    marker = _encode_marker(after)
    return {"link": str(request.url.update_query(marker=marker)), "marker": marker}


async def list_contacts(request: web.Request) -> web.Response:
    parsed = _contacts_query(request)
    if isinstance(parsed, web.Response):
        return parsed
    include = _pipe_list(request, "include")
    unknown = [name for name in include if name not in INCLUDES]
    if unknown:
        return bodies.v3_error(
            400, "invalidInclude", f"The include value '{unknown[0]}' is invalid"
        )
    fields = _pipe_list(request, "data-fields")
    data_fields: frozenset[str] | None = frozenset(name.lower() for name in fields)
    if ALL_DATA_FIELDS in fields:
        data_fields = None  # contact_as_api's "all of them"
    state = _account(request)
    contacts, more = state.list_contacts(parsed)
    items = [
        state.contact_as_api(
            contact,
            data_fields=data_fields,
            lists="lists" in include,
            channel_properties="channelProperties" in include,
        )
        for contact in contacts
    ]
    links = {"self": _page_link(request, parsed.after), "first": _page_link(request, 0)}
    if more:
        links["next"] = _page_link(request, contacts[-1].id)
    return bodies.json_response(200, {"_items": items, "_links": links})


# -- control ---------------------------------------------------------------------------------


async def control_health(request: web.Request) -> web.Response:
    core = request.app[CORE]
    return bodies.json_response(
        200, {"status": "ok", "region": request.app[REGION], "urls": core.urls}
    )


async def control_get_faults(request: web.Request) -> web.Response:
    return bodies.json_response(200, request.app[CORE].faults.as_dict())


async def control_set_faults(request: web.Request) -> web.Response:
    faults = request.app[CORE].faults
    try:
        changes = await request.json(loads=_loads)
    except ValueError:
        return bodies.json_response(400, {"message": "The body must be a JSON object."})
    if not isinstance(changes, dict):
        return bodies.json_response(400, {"message": "The body must be a JSON object."})
    try:
        faults.update(changes)
    except ValueError as exc:
        return bodies.json_response(400, {"message": str(exc)})
    return bodies.json_response(200, faults.as_dict())


async def control_stats(request: web.Request) -> web.Response:
    core = request.app[CORE]
    no_ops = {
        state.account.username: {"adds": state.no_op_adds, "removals": state.no_op_removals}
        for state in core.state.accounts.values()
    }
    return bodies.json_response(200, {**core.stats.as_dict(), "no_op_sends": no_ops})


async def control_members(request: web.Request) -> web.Response:
    state = request.app[CORE].state.account(request.match_info["username"])
    book_id = _book_id(request)
    if state is None:
        return bodies.json_response(404, {"message": "No such account."})
    state.settle()
    try:
        emails = state.member_emails(book_id if book_id is not None else -1)
    except SandboxError:
        return bodies.v2_error(404, bodies.BOOK_NOT_FOUND)
    return bodies.json_response(200, {"emails": sorted(emails)})


async def control_recreate(request: web.Request) -> web.Response:
    state = request.app[CORE].state.account(request.match_info["username"])
    if state is None:
        return bodies.json_response(404, {"message": "No such account."})
    try:
        body = await request.json(loads=_loads) if request.can_read_body else {}
    except ValueError:
        body = None
    lists = body.get("lists", []) if isinstance(body, dict) else None
    if not isinstance(lists, list) or any(
        isinstance(i, bool) or not isinstance(i, int) for i in lists
    ):
        return bodies.json_response(400, {"message": 'The body must be {"lists": [ids]}.'})
    state.settle()
    try:
        old, new = state.recreate_contact(request.match_info["email"], lists)
    except SandboxError as exc:
        if exc.kind == "book_not_found":
            return bodies.v2_error(404, bodies.BOOK_NOT_FOUND)
        return bodies.v2_error(404, bodies.CONTACT_NOT_FOUND)
    return bodies.json_response(200, {"previousContactId": old, "contactId": new})


async def control_lock(request: web.Request) -> web.Response:
    state = request.app[CORE].state.account(request.match_info["username"])
    if state is None:
        return bodies.json_response(404, {"message": "No such account."})
    try:
        body = await request.json(loads=_loads) if request.can_read_body else None
    except ValueError:
        body = None
    locked = body.get("locked") if isinstance(body, dict) else None
    if not isinstance(locked, bool):
        return bodies.json_response(400, {"message": 'The body must be {"locked": true|false}.'})
    state.locked = locked
    return bodies.json_response(200, {"locked": locked})


def _loads(text: str) -> Any:
    return orjson.loads(text)
