"""The emails of one bulk call: the caller's spellings, and DotDigital's in its answers.

Contract: emails compare as :func:`~stream.dotdigital.models.normalize_email` makes them
(case-insensitively); one contact is sent per distinct email, under the first spelling seen
(stripped), and every spelling the caller used gets the outcome of its contact. An empty email
is never sent: it is rejected as ``invalidEmail``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from stream.dotdigital.models import Rejection, normalize_email

__all__ = ["Names", "email_of"]


class Names:
    """Maps the caller's email spellings to normalized emails and back, in O(n)."""

    def __init__(self, emails: Iterable[str]) -> None:
        # normalized -> the spellings the caller used (several when they differ in case)
        self.spellings: dict[str, list[str]] = {}
        # normalized -> the spelling sent to DotDigital (first seen, stripped)
        self.sent: dict[str, str] = {}
        self.empty: list[str] = []
        for email in emails:
            key = normalize_email(email)
            if not key:
                self.empty.append(email)
                continue
            if key not in self.spellings:
                self.spellings[key] = []
                self.sent[key] = email.strip()
            self.spellings[key].append(email)

    def expand(self, keys: Iterable[str]) -> Iterator[str]:
        for key in keys:
            yield from self.spellings[key]

    def empty_rejections(self) -> dict[str, Rejection]:
        return {
            email: Rejection(email, "invalidEmail", "the email address is empty")
            for email in self.empty
        }


def email_of(item: object) -> str | None:
    """The normalized email of a contact in DotDigital's v3 answers (``identifiers.email``)."""
    if not isinstance(item, Mapping):
        return None
    identifiers = item.get("identifiers")
    email = identifiers.get("email") if isinstance(identifiers, Mapping) else None
    return normalize_email(email) if isinstance(email, str) else None
