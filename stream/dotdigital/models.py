"""Values the DotDigital client returns. All frozen: safe to share between tasks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AccountInfo",
    "AddressBook",
    "ImportOutcome",
    "Rejection",
    "RemovalOutcome",
    "normalize_email",
]

# Failure code for a contact the import result did not mention at all: never assume success.
MISSING_FROM_RESULT = "missingFromResult"


def normalize_email(email: str) -> str:
    """The form in which emails are compared: DotDigital treats them case-insensitively."""
    return email.strip().lower()


@dataclass(frozen=True)
class AddressBook:
    """A DotDigital address book ("list")."""

    id: int
    name: str
    visibility: str
    contacts: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AddressBook:
        # v2 binds JSON case-insensitively and old accounts answer in PascalCase.
        def get(key: str, default: Any) -> Any:
            return data.get(key, data.get(key[:1].upper() + key[1:], default))

        return cls(
            id=int(get("id", 0)),
            name=str(get("name", "")),
            visibility=str(get("visibility", "")),
            contacts=int(get("contacts", 0) or 0),
        )


@dataclass(frozen=True)
class Rejection:
    """Why DotDigital did not take one contact (a dead-letter reason)."""

    email: str
    failure_code: str
    description: str


@dataclass(frozen=True)
class ImportOutcome:
    """Per-contact result of :meth:`DotDigitalClient.import_contacts`.

    Every email passed in appears in exactly one of ``imported`` (email -> contactId) and
    ``rejected`` (email -> :class:`Rejection`), keyed by the caller's own spelling. ``created``
    names those of ``imported`` that the import created (DotDigital's ``created`` section); the
    others existed already (``updated``).
    """

    import_id: str | None
    imported: Mapping[str, int] = field(default_factory=dict)
    rejected: Mapping[str, Rejection] = field(default_factory=dict)
    created: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RemovalOutcome:
    """Per-contact result of :meth:`DotDigitalClient.remove_contacts`.

    Every email passed in appears in exactly one of ``removed`` and ``rejected``. ``removed``
    includes the contacts DotDigital does not know or that were not in the book (listed again
    in ``not_found``): their membership is gone, which is what was asked.
    """

    removed: frozenset[str] = frozenset()
    not_found: frozenset[str] = frozenset()
    rejected: Mapping[str, Rejection] = field(default_factory=dict)
    deletion_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccountInfo:
    """``GET /v2/account-info``: the account id and its named properties (values as strings)."""

    id: int
    properties: Mapping[str, str]
    # The X-RateLimit-* headers of the response (lower-case names), if any: the budget of the
    # tier account-info counts against, for ``ddsync check``.
    rate_limit_headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def api_endpoint(self) -> str | None:
        """The regional base URL, without a trailing slash."""
        value = self.properties.get("ApiEndpoint")
        return value.rstrip("/") if value else None

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], *, rate_limit_headers: Mapping[str, str] | None = None
    ) -> AccountInfo:
        properties: dict[str, str] = {}
        for item in data.get("properties") or ():
            if isinstance(item, Mapping) and isinstance(item.get("name"), str):
                value = item.get("value")
                properties[item["name"]] = "" if value is None else str(value)
        raw_id = data.get("id")
        try:
            account_id = int(raw_id) if isinstance(raw_id, int | str) else 0
        except ValueError:
            account_id = 0
        return cls(
            id=account_id, properties=properties, rate_limit_headers=dict(rate_limit_headers or {})
        )
