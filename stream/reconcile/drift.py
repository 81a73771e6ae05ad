"""What an address book should hold, by the outcomes topic, against what it holds.

Contract:

* :class:`Expected` folds outcomes (in the order of their partition, the latest per contact
  last) into what the stream says each book should hold. Only a contact's latest outcome counts:
  ``member`` and ``would_add`` expect it in the book, ``not_member`` and ``would_remove`` expect
  it out, ``dead_lettered`` expects nothing (its transition waits in the dead-letter topic, and
  replaying it decides).
* :func:`compare` gives a book's :class:`Drift`: ``missing`` (expected in, not in the book),
  ``unexpected`` (in the book although the latest outcome took it out), ``unmanaged`` (in the
  book, never seen by ddsync for that book), ``held`` (dead-lettered, left alone). The sets
  are disjoint; ``in_step`` means nothing is missing or unexpected (unmanaged contacts are
  someone else's and never count as drift).
* Pure: no I/O. Memory O(contacts and books seen), whatever the topic's length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stream.core.outcome_format import Outcome

__all__ = ["Book", "Drift", "Expected", "compare"]

Book = tuple[str, int]
"""(connector, address book id)."""


@dataclass
class Expected:
    """Per book, the latest outcome's verdict on each contact seen (True: in, False: out,
    None: held in the dead-letter topic)."""

    books: dict[Book, dict[str, bool | None]] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        book = (outcome.connector, outcome.address_book_id)
        self.books.setdefault(book, {})[outcome.email] = outcome.expected_member

    def of(self, book: Book) -> dict[str, bool | None]:
        return self.books.get(book, {})


@dataclass(frozen=True)
class Drift:
    book: Book
    members: int
    expected: int
    missing: frozenset[str]
    unexpected: frozenset[str]
    unmanaged: frozenset[str]
    held: frozenset[str]

    @property
    def in_step(self) -> bool:
        return not self.missing and not self.unexpected


def compare(book: Book, verdicts: dict[str, bool | None], members: set[str]) -> Drift:
    expected_in = {email for email, verdict in verdicts.items() if verdict is True}
    expected_out = {email for email, verdict in verdicts.items() if verdict is False}
    held = {email for email, verdict in verdicts.items() if verdict is None}
    return Drift(
        book=book,
        members=len(members),
        expected=len(expected_in),
        missing=frozenset(expected_in - members),
        unexpected=frozenset(expected_out & members),
        unmanaged=frozenset(members - verdicts.keys()),
        held=frozenset(held),
    )
