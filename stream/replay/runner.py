"""Replaying the dead-letter topic: re-produce chosen records to their source topic.

An operator fixes what made records fail (a password, an address book, a bug) and then replays
them: each chosen dead-letter record's original key and value go back, unchanged, to the topic
they came from (header ``ddsync.source_topic``), where ddsync consumes them like new records.

Contract:

* Choice: :class:`ReplayFilter` keeps records whose reason, connector, address book and source
  topic are each among the given values (an empty set accepts anything). Records it rejects are
  *skipped by filter*.
* Guard: a chosen record whose ``ddsync.replay_count`` has reached ``max_replays`` is *refused*
  (counted and logged, never produced), so a record that keeps failing cannot loop for ever.
* Malformed records (no or broken ``ddsync.*`` headers, or a source topic that is the dead-letter
  topic itself) are reported and skipped; they never stop the run.
* Never older (:func:`supersession`): a chosen record whose value is a transition is replayed only
  when no later transition of the same contact and book (connector, address book, email as
  :mod:`stream.core.events` normalises it) follows it in its source partition; otherwise it is
  *superseded* and skipped, so the last transition of each contact and book in partition order
  still wins. Of a record and its failed replay, or of two failed transitions, the latest in
  source order is the one replayed. When the records after it cannot be read (deleted by
  retention; in a compacted topic, or one whose ``cleanup.policy`` cannot be read, any offset
  without a record, as compaction and transaction markers look alike; a partition that ends
  before it, a topic or partition gone, not authorised) it is
  *unverifiable* and skipped, unless ``replay_unverifiable``: skipping may leave a book short of
  that transition, replaying may undo a newer one, and only the first is visible in the report.
  A value that is not a transition touches no book and is replayed unchecked.
* Cost: before producing, one read of the chosen dead-letter records (the plan) and one read of
  each source partition concerned, from its lowest failed offset to its end; before each batch
  of dead letters, what reached those partitions since (so a transition produced during the
  replay still supersedes). Memory holds one entry per distinct contact to replay, not the
  source's records.
* Where: a replayed record goes back to its source partition, after what the check read there
  (the original producer's partitioner may not be librdkafka's); to the partitioner only when
  that partition no longer exists. A transition produced to the source partition while one
  batch is being produced is not seen: a copy of that batch may then override it.
* A replayed record carries the original record's own headers plus ``ddsync.replay_count`` =
  previous + 1 (:func:`stream.core.deadletter_format.replay_headers`); no other ``ddsync.*`` header.
* Offsets: the replay has its own consumer group. It starts at the group's committed offsets (the
  earliest offset when there are none) and stops at the end offsets captured when it starts, so
  it terminates while new dead letters keep arriving. Offsets are committed batch by batch and
  only after every record produced in the batch was acknowledged (acks=all, idempotent
  producer); a partition whose record failed to deliver is committed only up to that record.
  An interrupted replay therefore resumes where it stopped: nothing is lost, and nothing is
  replayed twice except what was produced but not yet committed when it died (at-least-once).
  Skipped, refused, malformed, superseded and unverifiable records are committed past like
  replayed ones: a group's committed offset means "this replay has decided about everything
  before it".
* Dry run: the same decisions (the source partitions are read too), nothing produced and
  nothing committed.
* Reports never hold record values or error messages (either may be personal data); keys
  (profile ids), reasons, error codes and positions are enough to act on.
* Progress: after each batch consumed the run hands a :class:`ReplayProgress` to its
  ``on_progress`` callback; :class:`ProgressReporter` shows it (a bar on a terminal, a line every
  few seconds otherwise) and :func:`summary_json` is the report as one JSON object.

The pure part (:class:`ReplayFilter`, :func:`decide`, :class:`ReplayPlan`, :class:`SourceHistory`,
:func:`supersession`, :func:`format_summary`, :class:`ProgressReporter`) knows nothing of Kafka;
:class:`Replayer` is the thin Kafka edge around it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, TextIO, TypeAlias

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    ResourceType,
)

from stream.clock import Clock
from stream.config import Settings
from stream.core.deadletter_format import H_VALUE_OMITTED, DeadLetter, Reason, replay_headers
from stream.core.events import InvalidRecord, decode_transition
from stream.kafka.client_config import admin_config, consumer_config, producer_config
from stream.kafka.confluent import readable_headers

log = logging.getLogger(__name__)

BATCH_SIZE: Final = 500
SAMPLE_SIZE: Final = 5
KEY_PREVIEW_CHARS: Final = 64


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


# --------------------------------------------------------------------------- pure decisions


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


@dataclass(frozen=True, slots=True)
class Sample:
    """One record for the report: where it is, where it came from, why it failed."""

    dead_letter_partition: int
    dead_letter_offset: int
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    error_code: str
    replay_count: int
    key: str

    def describe(self) -> str:
        code = f" code={self.error_code}" if self.error_code else ""
        return (
            f"{self.source_topic}[{self.source_partition}]@{self.source_offset}"
            f" reason={self.reason}{code} key={self.key} replays={self.replay_count}"
            f" (dead-letter [{self.dead_letter_partition}]@{self.dead_letter_offset})"
        )


def key_preview(key: bytes | None) -> str:
    """A record key for humans: quoted, undecodable bytes replaced, cut to a bounded length."""
    if key is None:
        return "(none)"
    text = key.decode("utf-8", errors="replace")
    if len(text) > KEY_PREVIEW_CHARS:
        text = text[:KEY_PREVIEW_CHARS] + "…"
    return repr(text)


class StopReason(StrEnum):
    END = "end"  # reached the end offsets captured at start
    LIMIT = "limit"  # replayed --limit records
    INTERRUPTED = "interrupted"  # SIGINT/SIGTERM
    FAILED = "failed"  # a record could not be produced, or offsets could not be committed


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """What a replay did (or, dry run, would do)."""

    dry_run: bool
    group: str
    stopped: StopReason
    replayed: int = 0
    refused: int = 0
    filtered: int = 0
    malformed: int = 0
    superseded: int = 0
    unverifiable: int = 0
    # (reason, source topic) -> records replayed (would be, in a dry run).
    by_reason_and_topic: Mapping[tuple[str, str], int] = field(default_factory=dict)
    samples: tuple[Sample, ...] = ()
    malformed_samples: tuple[str, ...] = ()
    unverifiable_samples: tuple[str, ...] = ()


def format_summary(summary: ReplaySummary) -> list[str]:
    """The report's lines: per reason and source topic, samples (dry run), malformed, totals."""
    verb = "would replay" if summary.dry_run else "replayed"
    lines: list[str] = []
    if summary.by_reason_and_topic:
        lines.append(f"{verb} by reason and source topic:")
        for (reason, topic), count in sorted(summary.by_reason_and_topic.items()):
            lines.append(f"  {reason} -> {topic}: {count}")
    if summary.dry_run and summary.samples:
        lines.append(f"first {len(summary.samples)} to replay:")
        lines.extend(f"  {sample.describe()}" for sample in summary.samples)
    if summary.malformed_samples:
        lines.append(f"malformed (skipped), first {len(summary.malformed_samples)}:")
        lines.extend(f"  {text}" for text in summary.malformed_samples)
    if summary.unverifiable_samples:
        lines.append(f"unverifiable (skipped), first {len(summary.unverifiable_samples)}:")
        lines.extend(f"  {text}" for text in summary.unverifiable_samples)
    totals = (
        f"{verb} {summary.replayed}, refused (too many replays) {summary.refused}, "
        f"skipped by filter {summary.filtered}, malformed {summary.malformed}, "
        f"superseded {summary.superseded}, unverifiable {summary.unverifiable}"
    )
    if summary.dry_run:
        totals = f"dry run: {totals}; nothing produced, no offsets committed"
    lines.append(totals)
    if summary.stopped is StopReason.LIMIT:
        lines.append("stopped at --limit; run again to continue where this run stopped")
    elif summary.stopped is StopReason.INTERRUPTED:
        lines.append("interrupted; run again to continue where this run stopped")
    elif summary.stopped is StopReason.FAILED:
        lines.append("stopped by an error; fix it and run again to continue")
    return lines


def summary_json(summary: ReplaySummary, error: str | None = None) -> dict[str, Any]:
    """The report as one JSON object: the counts, how it stopped, ``error`` (the line printed on
    stderr when an error stopped it, else null), per reason and source topic, the samples."""
    return {
        "dry_run": summary.dry_run,
        "group": summary.group,
        "stopped": summary.stopped.value,
        "error": error,
        "replayed": summary.replayed,
        "refused": summary.refused,
        "filtered": summary.filtered,
        "malformed": summary.malformed,
        "superseded": summary.superseded,
        "unverifiable": summary.unverifiable,
        "by_reason_and_topic": [
            {"reason": reason, "source_topic": topic, "count": count}
            for (reason, topic), count in sorted(summary.by_reason_and_topic.items())
        ],
        "samples": [asdict(sample) for sample in summary.samples],
        "malformed_samples": list(summary.malformed_samples),
        "unverifiable_samples": list(summary.unverifiable_samples),
    }


@dataclass(frozen=True, slots=True)
class ReplayProgress:
    """How far a run is: ``looked_at`` of ``backlog`` records decided about, of which
    ``replayed`` replayed (would be, in a dry run) and ``skipped`` refused, filtered,
    malformed, superseded or unverifiable. ``backlog`` is the upper bound taken at the start."""

    looked_at: int
    backlog: int
    replayed: int
    skipped: int
    dry_run: bool = False

    def describe(self) -> str:
        """E.g. ``1200 / 5000 records (24%): replayed 900, skipped 300``."""
        verb = "would replay" if self.dry_run else "replayed"
        return (
            f"{self.looked_at} / {self.backlog} records ({self.percent}%): "
            f"{verb} {self.replayed}, skipped {self.skipped}"
        )

    @property
    def percent(self) -> int:
        if self.backlog <= 0:
            return 100
        return min(100, self.looked_at * 100 // self.backlog)


class ProgressReporter:
    """Shows :class:`ReplayProgress` on ``stream``. On a terminal (``tty``) a bar redrawn in
    place with ``\\r`` at most every ``redraw`` seconds; otherwise one line every ``every``
    seconds, so a log file gets a steady trickle. :meth:`finish` ends the bar's line."""

    BAR_WIDTH: Final = 30

    def __init__(
        self,
        stream: TextIO,
        clock: Clock,
        *,
        tty: bool,
        every: float = 5.0,
        redraw: float = 0.2,
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._tty = tty
        self._interval = redraw if tty else every
        self._started = clock.monotonic()
        self._shown_at: float | None = None
        self._drawn = False

    def update(self, progress: ReplayProgress) -> None:
        now = self._clock.monotonic()
        last = self._started if self._shown_at is None else self._shown_at
        if now - last < self._interval:
            return
        self._shown_at = now
        if self._tty:
            filled = self.BAR_WIDTH * progress.percent // 100
            bar = "#" * filled + "." * (self.BAR_WIDTH - filled)
            self._stream.write(f"\r[{bar}] {progress.describe()}\x1b[K")
            self._drawn = True
        else:
            self._stream.write(f"replay: {progress.describe()}\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


class _Tally:
    """The mutable counts behind a :class:`ReplaySummary` (one run, one thread)."""

    def __init__(self, sample_size: int) -> None:
        self.counts: Counter[Verdict] = Counter()
        self.by_reason_and_topic: Counter[tuple[str, str]] = Counter()
        self.samples: list[Sample] = []
        self.malformed_samples: list[str] = []
        self.unverifiable_samples: list[str] = []
        self._sample_size = sample_size

    def add(self, decision: Decision, record: DeadLetterRecord) -> None:
        self.counts[decision.verdict] += 1
        letter = decision.letter
        if decision.verdict is Verdict.MALFORMED:
            if len(self.malformed_samples) < self._sample_size:
                self.malformed_samples.append(f"{record.where}: {decision.problem}")
        elif decision.verdict is Verdict.UNVERIFIABLE:
            if len(self.unverifiable_samples) < self._sample_size:
                self.unverifiable_samples.append(f"{record.where}: {decision.problem}")
        elif decision.verdict is Verdict.REPLAY and letter is not None:
            self.by_reason_and_topic[(letter.reason.value, letter.source_topic)] += 1
            if len(self.samples) < self._sample_size:
                self.samples.append(
                    Sample(
                        dead_letter_partition=record.partition,
                        dead_letter_offset=record.offset,
                        source_topic=letter.source_topic,
                        source_partition=letter.source_partition,
                        source_offset=letter.source_offset,
                        reason=letter.reason.value,
                        error_code=letter.error_code,
                        replay_count=letter.replay_count,
                        key=key_preview(record.key),
                    )
                )

    def summary(self, dry_run: bool, group: str, stopped: StopReason) -> ReplaySummary:
        return ReplaySummary(
            dry_run=dry_run,
            group=group,
            stopped=stopped,
            replayed=self.counts[Verdict.REPLAY],
            refused=self.counts[Verdict.REFUSED],
            filtered=self.counts[Verdict.FILTERED],
            malformed=self.counts[Verdict.MALFORMED],
            superseded=self.counts[Verdict.SUPERSEDED],
            unverifiable=self.counts[Verdict.UNVERIFIABLE],
            by_reason_and_topic=dict(self.by_reason_and_topic),
            samples=tuple(self.samples),
            malformed_samples=tuple(self.malformed_samples),
            unverifiable_samples=tuple(self.unverifiable_samples),
        )


# --------------------------------------------------------------------------- the Kafka edge


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """One replay run. ``limit``: stop after this many records replayed (None: no limit).

    ``idle_timeout``: give up when no record arrives for this long although some partition has
    not reached its end offset (the broker is gone), instead of waiting for ever.
    ``replay_unverifiable``: replay records whose source partition cannot show whether a newer
    transition follows them, instead of skipping them.
    """

    group: str
    record_filter: ReplayFilter = ReplayFilter()
    dry_run: bool = False
    limit: int | None = None
    batch_size: int = BATCH_SIZE
    sample_size: int = SAMPLE_SIZE
    idle_timeout: float = 60.0
    flush_timeout: float = 60.0
    replay_unverifiable: bool = False

    def __post_init__(self) -> None:
        if not self.group:
            raise ValueError("the replay group must not be empty")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")


class ReplayError(Exception):
    """The replay stopped before its end. Offsets of what was done are committed (except in a
    dry run); ``summary`` says what was done."""

    def __init__(self, message: str, summary: ReplaySummary) -> None:
        super().__init__(message)
        self.summary = summary


def replay_group(settings: Settings, group: str | None = None) -> str:
    """The replay's consumer group: ``group`` if given, else ``<kafka.group_id>.replay``."""
    return group or f"{settings.kafka.group_id}.replay"


class Replayer:
    """Replays the dead-letter topic of ``settings`` once, from the group's committed offsets to
    the end offsets captured on :meth:`open` (or on entering the ``with`` block).

    Use::

        with Replayer(settings, options) as replayer:
            summary = replayer.run()

    :meth:`stop` may be called from another thread or a signal handler; the run then finishes
    the record in hand, commits what was acknowledged and returns with ``StopReason.INTERRUPTED``.
    """

    def __init__(
        self,
        settings: Settings,
        options: ReplayOptions,
        on_progress: Callable[[ReplayProgress], None] | None = None,
    ) -> None:
        self._settings = settings
        self._options = options
        self._on_progress = on_progress
        self._topic = settings.kafka.dead_letter_topic
        self._max_replays = settings.dead_letter.max_replays
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        # Reads the source partitions (assign only, never commits).
        self._source_consumer: Consumer | None = None
        self._admin: AdminClient | None = None
        self._compaction: dict[str, bool] = {}
        self._producer: Producer | None = None
        self._tally = _Tally(options.sample_size)
        self.start_offsets: dict[int, int] = {}
        self.end_offsets: dict[int, int] = {}
        # Next dead-letter offset to commit per partition: everything below it was decided and,
        # when replayed, handed to the producer.
        self._positions: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        # Lowest dead-letter offset per partition whose replay the broker refused.
        self._failed: dict[int, int] = {}
        self._failure: str | None = None
        # Source topic -> its partitions, once known to exist.
        self._known_topics: dict[str, frozenset[int]] = {}
        # What each source partition holds after the records to replay: read once per run.
        self._histories: dict[SourcePartition, SourceHistory] | None = None

    # -- lifecycle

    def __enter__(self) -> Replayer:
        try:
            self.open()
        except BaseException:
            # __exit__ does not run when __enter__ fails: leave no client behind.
            self.close()
            raise
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Connect, read the group's committed offsets and capture the end offsets.

        Raises :class:`ReplayError` when the dead-letter topic does not exist, and
        ``KafkaException`` when the cluster cannot be reached.
        """
        kafka = self._settings.kafka
        self._consumer = Consumer(consumer_config(kafka, group_id=self._options.group))
        if not self._options.dry_run:
            self._producer = Producer(producer_config(kafka))
        metadata = self._consumer.list_topics(self._topic, timeout=30)
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise ReplayError(f"dead-letter topic {self._topic} does not exist", self._summary())
        partitions = sorted(topic.partitions)
        committed = self._consumer.committed(
            [TopicPartition(self._topic, p) for p in partitions], timeout=30
        )
        for tp in committed:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=30, cached=False)
            # No commit yet: from the beginning. A commit below the low watermark: those records
            # were deleted by retention, so start at what is left.
            start = low if tp.offset == OFFSET_INVALID else max(tp.offset, low)
            self.start_offsets[tp.partition] = start
            self.end_offsets[tp.partition] = high
            self._positions[tp.partition] = start
            self._committed[tp.partition] = start
        log.debug(
            "replaying %s as group %s: %d record(s) before the end offsets",
            self._topic,
            self._options.group,
            self.backlog,
        )

    def close(self) -> None:
        if self._producer is not None:
            # Anything still queued was not committed; flushing only saves a duplicate later.
            self._producer.flush(self._options.flush_timeout)
            self._producer = None
        if self._consumer is not None:
            # Auto commit is off, so closing commits nothing (the dry run's promise).
            self._consumer.close()
            self._consumer = None
        if self._source_consumer is not None:
            self._source_consumer.close()
            self._source_consumer = None

    def stop(self) -> None:
        self._stop.set()

    @property
    def backlog(self) -> int:
        """Dead-letter records between the start and the end offsets (the upper bound of work)."""
        return sum(self.end_offsets[p] - self.start_offsets[p] for p in self.end_offsets)

    def progress(self) -> ReplayProgress:
        counts = self._tally.counts
        replayed = counts[Verdict.REPLAY]
        looked_at = sum(counts.values())
        return ReplayProgress(
            looked_at, self.backlog, replayed, looked_at - replayed, self._options.dry_run
        )

    # -- the run

    def run(self) -> ReplaySummary:
        """Replay until the end offsets, the limit, or :meth:`stop`. Raises :class:`ReplayError`
        when a record cannot be produced or offsets cannot be committed."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("Replayer.run() before open()")
        if self._histories is None and not self._read_histories():
            return self._summary(StopReason.INTERRUPTED)
        pending = {p for p in self.end_offsets if self._positions[p] < self.end_offsets[p]}
        if pending:
            consumer.assign([TopicPartition(self._topic, p, self._positions[p]) for p in pending])
        stopped = StopReason.END
        last_progress = time.monotonic()
        while pending:
            if self._stop.is_set():
                stopped = StopReason.INTERRUPTED
                break
            messages = consumer.consume(self._options.batch_size, timeout=0.5)
            if messages:
                self._catch_up()
            for message in messages:
                if self._stop.is_set():
                    stopped = StopReason.INTERRUPTED
                    break
                record = self._record(message)
                if record is None or record.partition not in pending:
                    continue
                partition = record.partition
                if record.offset >= self.end_offsets[partition]:
                    # Arrived after the start: the next replay's business.
                    self._finish_partition(partition, pending)
                    continue
                self._handle(record)
                last_progress = time.monotonic()
                if self._positions[partition] >= self.end_offsets[partition]:
                    self._finish_partition(partition, pending)
                if pending and self._limit_reached():
                    stopped = StopReason.LIMIT
                    break
            self._checkpoint()
            if self._on_progress is not None:
                self._on_progress(self.progress())
            if stopped is not StopReason.END:
                break
            if not messages:
                self._skip_gaps(pending)
                if pending and time.monotonic() - last_progress > self._options.idle_timeout:
                    raise ReplayError(
                        f"no dead-letter record arrived for {self._options.idle_timeout:.0f} s "
                        "before the end offsets",
                        self._summary(),
                    )
        return self._summary(stopped)

    def _handle(self, record: DeadLetterRecord) -> None:
        decision = decide(
            record.headers, self._options.record_filter, self._max_replays, self._topic
        )
        if decision.verdict is Verdict.REPLAY and decision.letter is not None:
            decision = self._check_newer(decision.letter, record)
        where = record.where
        letter = decision.letter
        if decision.verdict is Verdict.SUPERSEDED and letter is not None:
            log.info(
                "%s (from %s[%d]@%d) superseded, skipped: %s",
                where,
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                decision.problem,
            )
        elif decision.verdict is Verdict.UNVERIFIABLE and letter is not None:
            log.warning(
                "%s (from %s[%d]@%d) skipped, newer transitions cannot be ruled out: %s",
                where,
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                decision.problem,
            )
        elif decision.verdict is Verdict.REPLAY and letter is not None and decision.problem:
            log.warning("%s replayed although %s (--replay-unverifiable)", where, decision.problem)
        if decision.verdict is Verdict.MALFORMED:
            log.warning("%s is malformed, skipped: %s", where, decision.problem)
        elif decision.verdict is Verdict.REFUSED and letter is not None:
            log.warning(
                "%s (from %s[%d]@%d, %s) refused: replayed %d times, dead_letter.max_replays is %d",
                where,
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                letter.reason.value,
                letter.replay_count,
                self._max_replays,
            )
        elif (
            decision.verdict is Verdict.REPLAY and letter is not None and not self._options.dry_run
        ):
            self._produce(record, letter)
        self._tally.add(decision, record)
        self._positions[record.partition] = record.offset + 1

    def _produce(self, record: DeadLetterRecord, letter: DeadLetter) -> None:
        producer = self._producer
        assert producer is not None  # open() made one unless dry run
        self._require_topic(letter.source_topic)
        partition, offset = record.partition, record.offset

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                return
            # The idempotent producer already retried until delivery.timeout.ms: give up on this
            # partition from here, so the commit stops below this record.
            self._failed[partition] = min(self._failed.get(partition, offset), offset)
            self._failure = self._failure or (
                f"could not replay dead-letter [{partition}]@{offset} to "
                f"{letter.source_topic}: {error.str()}"
            )

        # confluent-kafka's produce() takes str-or-bytes values; the list type must say so.
        headers: list[tuple[str, str | bytes | None]] = list(replay_headers(letter, record.headers))
        # Back to the partition it came from, after everything the supersession check read
        # there: the partitioner of the original producer may not be librdkafka's.
        partition_to = (
            letter.source_partition
            if letter.source_partition in self._known_topics[letter.source_topic]
            else _ANY_PARTITION
        )
        while True:
            try:
                producer.produce(
                    letter.source_topic,
                    key=record.key,
                    value=record.value,
                    headers=headers,
                    partition=partition_to,
                    on_delivery=delivered,
                )
                break
            except BufferError:
                # The local queue is full: serve delivery reports to make room.
                producer.poll(0.1)
        producer.poll(0)

    def _require_topic(self, topic: str) -> None:
        """Refuse to produce to a topic that does not exist: the broker might create it with the
        wrong layout, or the record would wait in the queue until it times out."""
        if topic in self._known_topics:
            return
        assert self._consumer is not None
        metadata = self._consumer.list_topics(topic, timeout=30)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            self._checkpoint()
            raise ReplayError(
                f"source topic {topic} does not exist; create it, or leave its records out "
                f"with --source-topic; committed what was replayed before it",
                self._summary(),
            )
        self._known_topics[topic] = frozenset(found.partitions)

    def _check_newer(self, letter: DeadLetter, record: DeadLetterRecord) -> Decision:
        if not self._options.dry_run:
            # A missing source topic stops the run (as for every record), before any verdict.
            self._require_topic(letter.source_topic)
        histories = self._histories or {}
        return supersession(
            letter,
            contact_of(record.value),
            histories.get((letter.source_topic, letter.source_partition)),
            replay_unverifiable=self._options.replay_unverifiable,
        )

    def _read_histories(self) -> bool:
        """Read the dead-letter records to replay once, to learn which contacts of which source
        partitions they are, then each of those source partitions once, from its lowest failed
        offset to its current end. False when stopped meanwhile."""
        plan = ReplayPlan()

        def plan_letter(record: DeadLetterRecord) -> None:
            decision = decide(
                record.headers, self._options.record_filter, self._max_replays, self._topic
            )
            if decision.verdict is Verdict.REPLAY and decision.letter is not None:
                contact = contact_of(record.value)
                if contact is not None:
                    plan.add(decision.letter, contact)

        dead_letters = {
            (self._topic, p): (self.start_offsets[p], self.end_offsets[p]) for p in self.end_offsets
        }
        assert self._consumer is not None
        if not self._read_ranges(
            self._consumer, dead_letters, lambda _where, record: plan_letter(record)
        ):
            return False
        histories = self._open_histories(plan)
        ranges = {
            where: (history.start, history.end)
            for where, history in histories.items()
            if history.unreadable is None
        }

        def unreadable(where: SourcePartition, problem: str) -> None:
            histories[where].unreadable = problem

        self._source_consumer = Consumer(
            consumer_config(self._settings.kafka, group_id=self._options.group)
        )
        if not self._read_ranges(
            self._source_consumer,
            ranges,
            lambda where, record: histories[where].saw(record.offset, record.value),
            on_unreadable=unreadable,
        ):
            return False
        for where, history in histories.items():
            history.finish()
            if history.unreadable is None:
                # After the read: retention may have moved on while it ran.
                low, _high = self._source_consumer.get_watermark_offsets(
                    TopicPartition(*where), timeout=30, cached=False
                )
                history.gone_below(low)
        self._histories = histories
        log.debug("read %d source partition(s) for newer transitions", len(histories))
        return True

    def _catch_up(self) -> None:
        """Read what reached the source partitions since they were last read, before deciding
        about the next batch: a transition produced during a long replay still supersedes, and
        the window left open is one batch's production."""
        consumer = self._source_consumer
        if not self._histories or consumer is None:
            return
        ranges: dict[SourcePartition, tuple[int, int]] = {}
        for where, history in self._histories.items():
            if history.unreadable is not None:
                continue
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(*where), timeout=30, cached=False
            )
            if high > history.end:
                ranges[where] = (history.end, high)
                history.end = high
        histories = self._histories
        self._read_ranges(
            consumer,
            ranges,
            lambda where, record: histories[where].saw(record.offset, record.value),
        )
        for where in ranges:
            histories[where].finish()

    def _open_histories(self, plan: ReplayPlan) -> dict[SourcePartition, SourceHistory]:
        """An empty history of each source partition in ``plan``, ending at its current end
        offset, or marked unreadable (no such topic or partition, not authorised)."""
        assert self._consumer is not None
        histories: dict[SourcePartition, SourceHistory] = {}
        partitions: dict[str, frozenset[int] | str] = {}
        for where in plan.starts:
            topic, partition = where
            if topic not in partitions:
                found = self._consumer.list_topics(topic, timeout=30).topics.get(topic)
                if found is None or found.error is not None or not found.partitions:
                    error = found.error if found is not None else None
                    partitions[topic] = (
                        error.str() if isinstance(error, KafkaError) else "it does not exist"
                    )
                else:
                    partitions[topic] = frozenset(found.partitions)
            known = partitions[topic]
            if isinstance(known, str):
                histories[where] = plan.history(where, 0)
                histories[where].unreadable = f"topic {topic}: {known}"
                continue
            if partition not in known:
                histories[where] = plan.history(where, 0)
                histories[where].unreadable = "the partition does not exist"
                continue
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=30, cached=False
                )
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if not isinstance(error, KafkaError) or error.code() not in _UNREADABLE:
                    raise
                histories[where] = plan.history(where, 0)
                histories[where].unreadable = error.str()
                continue
            histories[where] = plan.history(where, high)
            histories[where].compacted = self._compacted(topic)
        return histories

    def _compacted(self, topic: str) -> bool:
        """Whether ``topic``'s ``cleanup.policy`` includes ``compact``; True when it cannot be
        read (no DESCRIBE_CONFIGS permission, say): the conservative answer."""
        if topic not in self._compaction:
            resource = ConfigResource(ResourceType.TOPIC, topic)
            try:
                if self._admin is None:
                    self._admin = AdminClient(admin_config(self._settings.kafka))
                configs = self._admin.describe_configs([resource], request_timeout=30)
                entry = configs[resource].result(timeout=60).get("cleanup.policy")
                policy = str(entry.value) if entry is not None else "compact"
            except (KafkaException, concurrent.futures.TimeoutError) as exc:
                log.info("cleanup.policy of %s unknown (%s): taken as compacted", topic, exc)
                policy = "compact"
            self._compaction[topic] = "compact" in policy
        return self._compaction[topic]

    def _read_ranges(
        self,
        consumer: Consumer,
        ranges: Mapping[SourcePartition, tuple[int, int]],
        visit: Callable[[SourcePartition, DeadLetterRecord], None],
        on_unreadable: Callable[[SourcePartition, str], None] | None = None,
    ) -> bool:
        """Read each (topic, partition) from its start up to its end offset (exclusive), in
        offset order, handing each record to ``visit``. False when stopped meanwhile; raises
        :class:`ReplayError` when nothing arrives for ``idle_timeout``."""
        pending = {where for where, (start, end) in ranges.items() if start < end}
        if not pending:
            return True
        assigned = [TopicPartition(t, p, ranges[(t, p)][0]) for t, p in pending]
        consumer.assign(assigned)
        last_progress = time.monotonic()

        def finish(where: SourcePartition) -> None:
            pending.discard(where)
            consumer.pause([TopicPartition(*where)])

        while pending:
            if self._stop.is_set():
                return False
            messages = consumer.consume(self._options.batch_size, timeout=0.5)
            for message in messages:
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                error = message.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    if error.code() in _UNREADABLE and on_unreadable is not None:
                        for where in [w for w in pending if w[0] == topic]:
                            if partition is None or partition < 0 or where[1] == partition:
                                on_unreadable(where, error.str())
                                finish(where)
                    elif error.code() != KafkaError._PARTITION_EOF:
                        log.warning("reading %s: %s", topic, error.str())
                    continue
                if topic is None or partition is None or offset is None:
                    continue
                where = (topic, partition)
                if where not in pending:
                    continue
                end = ranges[where][1]
                if offset < end:
                    visit(where, _to_record(message, partition, offset))
                    last_progress = time.monotonic()
                if offset + 1 >= end:
                    finish(where)
            if not messages and pending:
                # Offsets with no record up to the end (compaction, transaction markers).
                for tp in consumer.position([TopicPartition(*where) for where in pending]):
                    if tp.offset >= ranges[(tp.topic, tp.partition)][1]:
                        finish((tp.topic, tp.partition))
                if pending and time.monotonic() - last_progress > self._options.idle_timeout:
                    raise ReplayError(
                        f"no record arrived for {self._options.idle_timeout:.0f} s while "
                        "reading before the replay; nothing was replayed",
                        self._summary(),
                    )
        # librdkafka keeps a partition paused through a later assign(): undo it.
        consumer.resume(assigned)
        consumer.unassign()
        return True

    def _checkpoint(self) -> None:
        """Wait until every produced record is acknowledged, then commit the positions.

        Raises :class:`ReplayError` (after committing below the failed record) when the broker
        refused a record.
        """
        if self._options.dry_run:
            return
        assert self._producer is not None
        assert self._consumer is not None
        unacknowledged: int = self._producer.flush(self._options.flush_timeout)
        offsets = {
            p: min(position, self._failed.get(p, position))
            for p, position in self._positions.items()
        }
        if unacknowledged:
            # Not known to be on the source topic: commit nothing this round; a rerun re-reads.
            raise ReplayError(
                f"{unacknowledged} replayed record(s) not acknowledged within "
                f"{self._options.flush_timeout:.0f} s; offsets not committed",
                self._summary(),
            )
        moved = [
            TopicPartition(self._topic, p, offset)
            for p, offset in offsets.items()
            if offset > self._committed[p]
        ]
        if moved:
            try:
                self._consumer.commit(offsets=moved, asynchronous=False)
            except KafkaException as exc:
                raise ReplayError(
                    f"could not commit the replay's offsets: {exc}; a rerun replays this batch "
                    "again",
                    self._summary(),
                ) from None
            for tp in moved:
                self._committed[tp.partition] = tp.offset
            log.debug("committed %s", {tp.partition: tp.offset for tp in moved})
        if self._failure:
            raise ReplayError(self._failure, self._summary())

    def _skip_gaps(self, pending: set[int]) -> None:
        """Finish partitions whose position passed their end offset without a record to show
        for it (transaction markers, compaction): otherwise the run would wait for ever."""
        assert self._consumer is not None
        tps = [TopicPartition(self._topic, p) for p in pending]
        for tp in self._consumer.position(tps):
            if tp.offset >= self.end_offsets[tp.partition]:
                self._positions[tp.partition] = self.end_offsets[tp.partition]
                self._finish_partition(tp.partition, pending)

    def _finish_partition(self, partition: int, pending: set[int]) -> None:
        pending.discard(partition)
        self._positions[partition] = max(self._positions[partition], self.end_offsets[partition])
        assert self._consumer is not None
        # Stop fetching records that arrived after the start.
        self._consumer.pause([TopicPartition(self._topic, partition)])

    def _limit_reached(self) -> bool:
        limit = self._options.limit
        return limit is not None and self._tally.counts[Verdict.REPLAY] >= limit

    def _record(self, message: Message) -> DeadLetterRecord | None:
        """The record of a consumed message; None for an event (an error that is not fatal)."""
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return None
            if error.fatal():
                raise KafkaException(error)
            log.warning("consuming %s: %s", self._topic, error.str())
            return None
        partition, offset = message.partition(), message.offset()
        if partition is None or offset is None:
            return None
        return _to_record(message, partition, offset)

    def _summary(self, stopped: StopReason = StopReason.FAILED) -> ReplaySummary:
        return self._tally.summary(self._options.dry_run, self._options.group, stopped)


# librdkafka's RD_KAFKA_PARTITION_UA: the partitioner chooses.
_ANY_PARTITION: Final = -1

# Errors that say a source partition cannot be read by this client, as opposed to a broker that
# is away for a while (those stop the run: a rerun decides once it is back).
_UNREADABLE: Final = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
    }
)


def _to_record(message: Message, partition: int, offset: int) -> DeadLetterRecord:
    # None when a header name is not UTF-8: no ddsync.* headers read, so it counts as malformed.
    pairs = readable_headers(message) or ()
    return DeadLetterRecord(
        partition=partition,
        offset=offset,
        key=message.key(),
        value=message.value(),
        headers=tuple(
            (name, value.encode("utf-8") if isinstance(value, str) else value)
            for name, value in pairs
        ),
    )


def run_replay(
    settings: Settings,
    options: ReplayOptions,
    on_open: Callable[[Replayer], None] | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
) -> ReplaySummary:
    """Open, run and close a :class:`Replayer`; ``on_open`` sees it before the run starts (the
    CLI installs signal handlers there, tests add records after the end offsets were taken),
    ``on_progress`` after every batch."""
    with Replayer(settings, options, on_progress) as replayer:
        if on_open is not None:
            on_open(replayer)
        return replayer.run()
