"""The replay's Kafka edge: :class:`Replayer` reads the dead-letter topic and the source
partitions, asks :mod:`stream.replay.decide`, produces, and commits batch by batch
(:mod:`stream.replay` states the whole contract).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

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

from stream.core.deadletter_format import DeadLetter, replay_headers
from stream.kafka.client_config import admin_config, consumer_config, producer_config
from stream.kafka.confluent import readable_headers
from stream.replay.decide import (
    DeadLetterRecord,
    Decision,
    ReplayFilter,
    ReplayPlan,
    SourceHistory,
    SourcePartition,
    Verdict,
    contact_of,
    decide,
    supersession,
)
from stream.replay.report import SAMPLE_SIZE, ReplayProgress, ReplaySummary, StopReason, Tally
from stream.settings import Settings

log = logging.getLogger(__name__)

BATCH_SIZE: Final = 500


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """One replay run. ``limit``: stop after this many records replayed (None: no limit).

    ``idle_timeout``: give up when no record arrives for this long although some partition has
    not reached its end offset (the broker is gone), instead of waiting for ever.
    ``replay_unverifiable``: replay records whose source partition cannot show whether a newer
    transition follows them, instead of skipping them.
    """

    group: str
    record_filter: ReplayFilter = field(default_factory=ReplayFilter)
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
        self._tally = Tally(options.sample_size)
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
