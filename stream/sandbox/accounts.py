"""Sandbox accounts: who may call the sandbox, in which region, with which limits.

Contract:

* :class:`SandboxAccount` is immutable; the sandbox's mutable state lives in
  :mod:`stream.sandbox.state`.
* Passwords never appear in ``repr`` (``field(repr=False)``) nor in anything the sandbox prints;
  ``password_source`` says where a password came from, so the start-up banner can point to it.
* :func:`load_accounts` reads the JSON accounts file documented in
  ``accounts.example.json`` (next to this module) and rejects unknown keys by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

Region = Literal["r1", "r2", "r3"]
RateLimitScheme = Literal["tiered", "flat"]
TierLayout = Literal["separate", "shared"]

REGIONS: tuple[Region, ...] = ("r1", "r2", "r3")

DEMO_USERNAME = "demo@apiconnector.com"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - a documented demo credential of a local emulator
DEMO_R2_USERNAME = "demo-r2@apiconnector.com"

# Reserved by DotDigital in every account: creating a book with one of these names fails.
RESERVED_BOOK_NAMES = frozenset({"test", "all contacts"})


class AccountsError(ValueError):
    """The accounts file is missing or wrong; the message names the offending entry."""


@dataclass(frozen=True)
class SandboxAddressBook:
    """An address book that exists from the start (so demos can name fixed ids)."""

    id: int
    name: str
    visibility: Literal["Private", "Public"] = "Private"


@dataclass(frozen=True)
class SandboxAccount:
    """One DotDigital API user of the sandbox.

    ``add_per_minute`` budgets ``PUT /contacts/v3/import``; ``remove_per_minute`` budgets list
    removals (``POST /v2/address-books/{id}/contacts/delete`` and the single-contact ``DELETE``);
    ``other_per_minute`` budgets every other API call, ``GET /contacts/v3`` included. Windows
    are fixed calendar minutes. With ``rate_limit_scheme="flat"`` one budget of
    ``flat_per_hour`` calls per calendar hour covers every call instead.
    ``rate_limits_enabled=False`` lifts all limits (benchmarks).

    ``tier_layout`` says which calls share a per-minute budget (DotDigital does not document
    it): ``"separate"`` (the default) as above, scopes ``mediumCallRate`` (imports),
    ``lowCallRate`` (removals), ``highCallRate`` (the rest); ``"shared"``: imports, list
    removals and ``GET /contacts/v3`` all count against one ``lowCallRate`` budget of
    ``add_per_minute`` calls (``remove_per_minute`` unused), everything else against
    ``highCallRate``, ``other_per_minute`` (see :mod:`.ratelimits`).

    ``list_failures_keep_contact``: an import item naming a list id the account does not have
    still creates or updates its contact (with its other lists) and reports it in ``created`` or
    ``updated`` *and* in ``failures`` (``invalidAddressBookIds``), as DotDigital documents for a
    data set that fails while its contact is imported. Off: the item fails whole.

    ``import_delay_seconds`` is how long an import reports ``NotFinished``;
    ``deletion_delay_seconds`` how long a bulk removal reports ``Started`` (membership changes
    when the job completes, never before).
    """

    username: str
    password: str = field(repr=False)
    region: Region = "r1"
    account_id: int = 1
    rate_limit_scheme: RateLimitScheme = "tiered"
    tier_layout: TierLayout = "separate"
    add_per_minute: int = 75
    remove_per_minute: int = 35
    other_per_minute: int = 3000
    flat_per_hour: int = 2000
    rate_limits_enabled: bool = True
    import_delay_seconds: float = 0.2
    deletion_delay_seconds: float = 0.0
    list_failures_keep_contact: bool = False
    address_books: tuple[SandboxAddressBook, ...] = ()
    # Where the password came from, for the start-up banner (never the password itself).
    password_source: str = field(default="given in code", compare=False)

    def __post_init__(self) -> None:
        if not self.username:
            raise AccountsError("an account needs a username")
        if self.region not in REGIONS:
            raise AccountsError(f"account {self.username}: region must be one of r1, r2, r3")
        if self.rate_limit_scheme not in ("tiered", "flat"):
            raise AccountsError(
                f"account {self.username}: rate_limit_scheme must be 'tiered' or 'flat'"
            )
        if self.tier_layout not in ("separate", "shared"):
            raise AccountsError(
                f"account {self.username}: tier_layout must be 'separate' or 'shared', "
                f"not {self.tier_layout!r}"
            )
        for name in ("add_per_minute", "remove_per_minute", "other_per_minute", "flat_per_hour"):
            if getattr(self, name) <= 0:
                raise AccountsError(f"account {self.username}: {name} must be greater than 0")
        if self.import_delay_seconds < 0 or self.deletion_delay_seconds < 0:
            raise AccountsError(f"account {self.username}: delays must not be negative")


def default_accounts() -> tuple[SandboxAccount, ...]:
    """The accounts served when no accounts file is given: a demo account in r1 and one in r2.

    Both use the password ``demo-password``; the r1 account has address books 1001-1003 and
    the r2 account address book 2001, so a demo can name them without creating them first.
    """
    source = "the built-in demo password (see --help)"
    return (
        SandboxAccount(
            username=DEMO_USERNAME,
            password=DEMO_PASSWORD,
            region="r1",
            account_id=1,
            address_books=(
                SandboxAddressBook(1001, "Demo audience 1"),
                SandboxAddressBook(1002, "Demo audience 2"),
                SandboxAddressBook(1003, "Demo journey step"),
            ),
            password_source=source,
        ),
        SandboxAccount(
            username=DEMO_R2_USERNAME,
            password=DEMO_PASSWORD,
            region="r2",
            account_id=2,
            address_books=(SandboxAddressBook(2001, "Demo audience (North America)"),),
            password_source=source,
        ),
    )


_ACCOUNT_KEYS = {
    "username",
    "password",
    "password_env",
    "region",
    "account_id",
    "rate_limit_scheme",
    "tier_layout",
    "add_per_minute",
    "remove_per_minute",
    "other_per_minute",
    "flat_per_hour",
    "rate_limits_enabled",
    "import_delay_seconds",
    "deletion_delay_seconds",
    "address_books",
}


def load_accounts(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> tuple[SandboxAccount, ...]:
    """Read a JSON accounts file: ``{"accounts": [{...}, ...]}``.

    Each account takes the fields of :class:`SandboxAccount` (``address_books`` as a list of
    ``{"id", "name", "visibility"?}``) and exactly one of ``password`` (inline; fine for a
    local emulator) or ``password_env`` (the name of an environment variable).
    """
    environ = os.environ if environ is None else environ
    try:
        raw = orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise AccountsError(f"accounts file {path} does not exist") from None
    except orjson.JSONDecodeError as exc:
        raise AccountsError(f"accounts file {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("accounts"), list):
        raise AccountsError(f'accounts file {path}: expected {{"accounts": [...]}}')
    accounts = tuple(
        _parse_account(entry, f"{path}: accounts[{index}]", environ)
        for index, entry in enumerate(raw["accounts"])
    )
    if not accounts:
        raise AccountsError(f"accounts file {path}: no accounts")
    check_accounts(accounts)
    return accounts


def check_accounts(accounts: Sequence[SandboxAccount]) -> None:
    """Reject duplicate usernames and address-book ids used by two accounts."""
    seen_users: set[str] = set()
    seen_books: dict[int, str] = {}
    for account in accounts:
        key = account.username.lower()
        if key in seen_users:
            raise AccountsError(f"account {account.username} is defined twice")
        seen_users.add(key)
        for book in account.address_books:
            if book.id in seen_books:
                raise AccountsError(
                    f"address book id {book.id} is defined twice "
                    f"({seen_books[book.id]} and {account.username})"
                )
            seen_books[book.id] = account.username


def _parse_account(entry: Any, where: str, environ: Mapping[str, str]) -> SandboxAccount:
    if not isinstance(entry, dict):
        raise AccountsError(f"{where}: expected an object")
    for key in entry:
        if key not in _ACCOUNT_KEYS:
            raise AccountsError(
                f"{where}: unknown key {key!r}; known: {', '.join(sorted(_ACCOUNT_KEYS))}"
            )
    username = entry.get("username")
    if not isinstance(username, str) or not username:
        raise AccountsError(f"{where}.username is required")
    if ("password" in entry) == ("password_env" in entry):
        raise AccountsError(f"{where}: give exactly one of password or password_env")
    if "password" in entry:
        password = entry["password"]
        source = "accounts file"
    else:
        env_name = entry["password_env"]
        password = environ.get(env_name) if isinstance(env_name, str) else None
        if not password:
            raise AccountsError(f"{where}.password_env: environment variable {env_name} is not set")
        source = f"environment variable {env_name}"
    if not isinstance(password, str) or not password:
        raise AccountsError(f"{where}.password must be a non-empty string")
    kwargs: dict[str, Any] = {}
    typed: dict[str, tuple[type, ...]] = {
        "region": (str,),
        "account_id": (int,),
        "rate_limit_scheme": (str,),
        "tier_layout": (str,),
        "add_per_minute": (int,),
        "remove_per_minute": (int,),
        "other_per_minute": (int,),
        "flat_per_hour": (int,),
        "rate_limits_enabled": (bool,),
        "import_delay_seconds": (int, float),
        "deletion_delay_seconds": (int, float),
    }
    for key, kinds in typed.items():
        if key not in entry:
            continue
        value = entry[key]
        if isinstance(value, bool) and bool not in kinds:
            raise AccountsError(f"{where}.{key} has the wrong type: {value!r}")
        if not isinstance(value, kinds):
            raise AccountsError(f"{where}.{key} has the wrong type: {value!r}")
        kwargs[key] = float(entry[key]) if float in kinds else entry[key]
    books = entry.get("address_books", [])
    if not isinstance(books, list):
        raise AccountsError(f"{where}.address_books must be a list")
    parsed_books = []
    for index, book in enumerate(books):
        if (
            not isinstance(book, dict)
            or not isinstance(book.get("id"), int)
            or not isinstance(book.get("name"), str)
            or book.get("visibility", "Private") not in ("Private", "Public")
        ):
            raise AccountsError(
                f"{where}.address_books[{index}]: expected "
                '{"id": int, "name": str, "visibility": "Private"|"Public"}'
            )
        parsed_books.append(
            SandboxAddressBook(book["id"], book["name"], book.get("visibility", "Private"))
        )
    try:
        return SandboxAccount(
            username=username,
            password=password,
            address_books=tuple(parsed_books),
            password_source=source,
            **kwargs,
        )
    except AccountsError as exc:
        raise AccountsError(f"{where}: {exc}") from None
