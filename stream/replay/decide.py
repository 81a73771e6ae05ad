"""The replay's decisions, pure: which dead-letter records to replay, and which a newer
transition of their contact supersedes (:mod:`stream.replay` states the whole contract).

* :class:`ReplayFilter` and :func:`decide` choose a record or say why not (filtered, refused at
  ``max_replays``, malformed).
* :class:`ReplayPlan`, :class:`SourceHistory` and :func:`supersession` keep "the last transition
  of each contact and book in partition order wins" true through a replay.

Nothing here knows Kafka: :mod:`stream.replay.runner` feeds it records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from stream.core.deadletter_format import H_VALUE_OMITTED, DeadLetter
from stream.core.events import InvalidRecord, decode_transition
from stream.core.reasons import Reason


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One consumed dead-letter record, as the replay needs it (headers normalised to bytes)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @property
    def where(self) -> str:
        return f"dead-letter [{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    """Which dead-letter records to replay. Each empty set means "any"; sets combine with AND."""

    reasons: frozenset[Reason] = frozenset()
    connector_ids: frozenset[str] = frozenset()
    address_book_ids: frozenset[int] = frozenset()
    source_topics: frozenset[str] = frozenset()

    def matches(self, letter: DeadLetter) -> bool:
        """True when ``letter`` passes every non-empty criterion.

        A record whose connector or address book is unknown (``None``, e.g. its value was not
        JSON) never matches a connector or address-book criterion.
        """
        if self.reasons and letter.reason not in self.reasons:
            return False
        if self.connector_ids and letter.connector_id not in self.connector_ids:
            return False
        if self.address_book_ids and letter.address_book_id not in self.address_book_ids:
            return False
        return not self.source_topics or letter.source_topic in self.source_topics

    def describe(self) -> str:
        """One line for the report, e.g. ``reason in {auth_failed}, connector in {eu-main}``."""
        parts = [
            f"{name} in {{{', '.join(sorted(str(v) for v in values))}}}"
            for name, values in (
                ("reason", self.reasons),
                ("connector", self.connector_ids),
                ("address book", self.address_book_ids),
                ("source topic", self.source_topics),
            )
            if values
        ]
        return ", ".join(parts) or "all records"


class Verdict(StrEnum):
    REPLAY = "replay"
    REFUSED = "refused"  # replayed max_replays times already
    FILTERED = "filtered"
    MALFORMED = "malformed"
    SUPERSEDED = "superseded"  # a newer transition of its contact and book follows it
    UNVERIFIABLE = "unverifiable"  # what follows it in its source partition cannot be read


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one dead-letter record. ``letter`` is None only when MALFORMED, and
    ``problem`` says why it is malformed, superseded or unverifiable (it names a header or a
    position, never a record value)."""

    verdict: Verdict
    letter: DeadLetter | None = None
    problem: str | None = None


def decide(
    headers: Iterable[tuple[str, bytes | str | None]] | None,
    record_filter: ReplayFilter,
    max_replays: int,
    dead_letter_topic: str,
) -> Decision:
    """Decide about one dead-letter record from its headers. Never raises.

    Order: malformed, then the filter, then the max-replays guard, so "refused" only counts
    records the operator actually chose.
    """
    pairs = list(headers or ())
    try:
        letter = DeadLetter.from_headers(pairs)
    except ValueError as exc:  # MalformedDeadLetter, or a value DeadLetter itself rejects
        return Decision(Verdict.MALFORMED, problem=str(exc))
    if not letter.source_topic:
        return Decision(Verdict.MALFORMED, letter, "header ddsync.source_topic is empty")
    if letter.source_topic == dead_letter_topic:
        # Producing it would put the record straight back where it is: a loop, not a replay.
        return Decision(Verdict.MALFORMED, letter, "its source topic is the dead-letter topic")
    if any(name == H_VALUE_OMITTED for name, _ in pairs):
        # Too large for the dead-letter topic: replaying it would produce an empty record.
        return Decision(
            Verdict.MALFORMED,
            letter,
            "it was written without its value (too large); replay the original from "
            f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}",
        )
    if not record_filter.matches(letter):
        return Decision(Verdict.FILTERED, letter)
    if letter.replay_count >= max_replays:
        return Decision(Verdict.REFUSED, letter)
    return Decision(Verdict.REPLAY, letter)


ContactKey: TypeAlias = tuple[str, int, str]
"""Connector id, address book id, normalised email: what ddsync coalesces on, so what "the same
contact and book" means."""
SourcePartition: TypeAlias = tuple[str, int]


class _AnyConnector:
    """Accepts every connector id: ordering transitions does not depend on which connectors this
    configuration knows (a newer record of an unknown connector still names its contact)."""

    def __contains__(self, _item: object) -> bool:
        return True


def contact_of(value: bytes | None) -> ContactKey | None:
    """The contact and book a record value is a transition of (the decoder's normalisation), or
    None when the value is not a valid transition. Never raises."""
    try:
        transition = decode_transition(value, _AnyConnector())
    except InvalidRecord:
        return None
    return (transition.connector_id, transition.address_book_id, transition.email)


class ReplayPlan:
    """What to read of the source partitions before replaying: for each, the lowest failed offset
    among the records to replay and the contacts they are transitions of. Memory: one entry per
    distinct contact to replay, whatever the size of the source partitions."""

    def __init__(self) -> None:
        self.starts: dict[SourcePartition, int] = {}
        self.contacts: dict[SourcePartition, set[ContactKey]] = {}

    def add(self, letter: DeadLetter, contact: ContactKey) -> None:
        where = (letter.source_topic, letter.source_partition)
        self.starts[where] = min(self.starts.get(where, letter.source_offset), letter.source_offset)
        self.contacts.setdefault(where, set()).add(contact)

    def history(self, where: SourcePartition, end: int) -> SourceHistory:
        """An empty history of ``where`` to fill by reading it from its start up to ``end``."""
        return SourceHistory(self.starts[where], end, frozenset(self.contacts[where]))


class SourceHistory:
    """What one read of a source partition, from ``start`` up to ``end`` (exclusive), showed:
    the latest offset of each contact asked about, and the highest offset whose record may be
    gone. ``unreadable`` says why the partition could not be read at all.

    A topic that is not ``compacted`` loses records only at its head (retention, DeleteRecords:
    :meth:`gone_below`), so offsets it skips further on are transaction markers or aborted
    records. In a compacted one (or one whose policy could not be read) a skipped offset may
    have been a newer transition removed by compaction: the reader cannot tell, so it counts.
    """

    def __init__(
        self, start: int, end: int, wanted: frozenset[ContactKey], unreadable: str | None = None
    ) -> None:
        self.start = start
        self.end = end
        # The end at the first read: a record at or past it belongs to an earlier incarnation of
        # the topic, whatever arrives later at that offset.
        self.first_end = end
        self.unreadable = unreadable
        self.latest: dict[ContactKey, int] = {}
        self.last_missing = -1
        self.compacted = True
        self._wanted = wanted
        self._next = start

    def gone_below(self, low: int) -> None:
        """Records below ``low`` (the partition's low watermark) were deleted."""
        if low > self.start:
            self.last_missing = max(self.last_missing, low - 1)

    def saw(self, offset: int, value: bytes | None) -> None:
        """A record read at ``offset``, in offset order."""
        if offset > self._next and self.compacted:
            self.last_missing = offset - 1
        self._next = offset + 1
        contact = contact_of(value)
        if contact is not None and contact in self._wanted:
            self.latest[contact] = offset

    def finish(self) -> None:
        """The read reached ``end``: offsets after the last record seen were not readable."""
        if self._next < self.end and self.compacted:
            self.last_missing = self.end - 1


def supersession(
    letter: DeadLetter,
    contact: ContactKey | None,
    history: SourceHistory | None,
    *,
    replay_unverifiable: bool = False,
) -> Decision:
    """Whether a record chosen for replay (``contact`` decoded from its value) is replayed, given
    what its source partition holds after it. Replaying puts it after everything in that
    partition, so it is replayed only when nothing there is newer for its contact and book:

    * a later transition of the same contact and book -> SUPERSEDED (it is certain, whatever
      else is missing; when that newer record failed too, its own letter is the one replayed);
    * the partition cannot be read, ends before the record, or has unreadable offsets after it
      -> UNVERIFIABLE (conservative: never risk making a book older), unless
      ``replay_unverifiable``;
    * a value that is not a transition (``contact`` None) touches no book: REPLAY.
    """
    if contact is None:
        return Decision(Verdict.REPLAY, letter)
    where = f"{letter.source_topic}[{letter.source_partition}]"
    problem: str | None
    if history is None:
        problem = f"{where} was not read"
    elif history.unreadable is not None:
        problem = f"{where} cannot be read: {history.unreadable}"
    elif letter.source_offset >= history.first_end:
        problem = (
            f"{where} ends at offset {history.first_end}, before the record: the topic was "
            "recreated or truncated"
        )
    else:
        newer = history.latest.get(contact, -1)
        if newer > letter.source_offset:
            return Decision(
                Verdict.SUPERSEDED, letter, f"a newer transition of its contact is at {newer}"
            )
        problem = None
        if history.last_missing > letter.source_offset:
            problem = (
                f"records of {where} after it are gone (up to offset {history.last_missing}: "
                "retention, compaction or transaction markers)"
            )
    if problem is None or replay_unverifiable:
        return Decision(Verdict.REPLAY, letter, problem)
    return Decision(Verdict.UNVERIFIABLE, letter, problem)
