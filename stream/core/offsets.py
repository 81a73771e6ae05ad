"""Which offsets may be committed: a per-partition watermark over records that are not final.

A consumed record is *open* until its outcome is final (synced; superseded by a later record of
the same contact whose outcome is final; or on the dead-letter topic, acknowledged). Kafka
commits the *next* offset to read, so a partition's commit position is the offset of its lowest
open record, or the last consumed offset + 1 when none is open.

Contract:

* :meth:`OffsetTracker.committable` never returns an offset past a record that is open: after
  a crash, the new reader starts at or before every record whose outcome is not final.
* Per partition, the position only moves forward while the partition stays assigned.
* Only owned partitions appear in :meth:`committable`: after :meth:`revoke` a partition's state
  is forgotten, and late :meth:`finished` calls for it (an HTTP call completing after the
  rebalance) are ignored. A partition assigned again starts from nothing: its position is unknown
  until a record of it is consumed, and a stale ``finished`` for an offset not open in the new
  assignment is ignored.
* :meth:`consumed` takes offsets in increasing order per partition (as a Kafka consumer delivers
  them; gaps are fine, e.g. compacted topics or transaction markers). A record at or below the
  last consumed offset, or of a partition not owned, is refused (returns ``False``): the caller
  must not process it, since it is either already being processed or not ours.
* :meth:`finished` is idempotent.
* :meth:`oldest_open_since` is the ``clock.monotonic()`` time at which the partition's lowest
  open record was consumed, read at most :data:`STAMP_RESOLUTION` seconds early (never late:
  an age computed from it may be overstated by that much, never understated); ``None`` when
  nothing is open.
* Costs: ``consumed`` O(1); ``finished`` amortised O(1) (lazy deletion from a deque: finished
  records leave the front only once everything below them is final); ``committable``
  O(assigned partitions); ``oldest_open_since`` amortised O(1). Memory O(open records): the
  consumption times are kept as one stamp per :data:`STAMP_RESOLUTION` of reading, not one per
  record.

The pipeline keeps it inside :class:`stream.core.ledger.Ledger`, which holds each open record's
original and the partitions being revoked in step with it.

Not thread-safe: call it from one thread (or one event loop).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from stream.clock import Clock, SystemClock

TopicPartitionKey: TypeAlias = tuple[str, int]
"""``(topic, partition)``; a plain tuple, unlike confluent-kafka's mutable ``TopicPartition``."""

STAMP_RESOLUTION = 0.1
"""Seconds of reading that share one consumption-time stamp (ages serve alerts in minutes)."""


@dataclass(frozen=True, slots=True, order=True)
class RecordRef:
    """Where a consumed record came from: enough to track, commit and dead-letter it."""

    topic: str
    partition: int
    offset: int

    @property
    def tp(self) -> TopicPartitionKey:
        return (self.topic, self.partition)

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class _Partition:
    __slots__ = ("committed", "next_offset", "open", "order", "stamps")

    def __init__(self) -> None:
        # Open offsets in consumption order (hence ascending); finished ones are dropped from the
        # front lazily, so ``order[0]`` is the lowest open offset once the front is cleaned.
        self.order: deque[int] = deque()
        self.open: set[int] = set()
        # (first offset, monotonic time it was consumed), ascending in both: each record was
        # consumed at or after the time of the last stamp at or below its offset.
        self.stamps: deque[tuple[int, float]] = deque()
        self.next_offset: int | None = None
        self.committed: int | None = None

    def position(self) -> int | None:
        if self.order:
            return self.order[0]
        return self.next_offset


class OffsetTracker:
    """Per-partition commit watermark. See the module docstring for the contract."""

    def __init__(self, clock: Clock | None = None) -> None:
        """``clock`` times consumption (for :meth:`oldest_open_since`); the system's if None."""
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._partitions: dict[TopicPartitionKey, _Partition] = {}
        self._open = 0

    # --- ownership -------------------------------------------------------------------------

    def assign(self, tp: TopicPartitionKey) -> None:
        """Start tracking ``tp``; a no-op if it is already owned."""
        if tp not in self._partitions:
            self._partitions[tp] = _Partition()

    def revoke(self, tp: TopicPartitionKey) -> None:
        """Forget ``tp``: its offsets are never returned again. A no-op if not owned.

        To commit on revoke, take ``committable([tp])`` *before* calling this.
        """
        state = self._partitions.pop(tp, None)
        if state is not None:
            self._open -= len(state.open)

    def owns(self, tp: TopicPartitionKey) -> bool:
        return tp in self._partitions

    @property
    def owned(self) -> frozenset[TopicPartitionKey]:
        return frozenset(self._partitions)

    # --- records ---------------------------------------------------------------------------

    def consumed(self, ref: RecordRef) -> bool:
        """Open ``ref``. ``False`` (and nothing tracked) if it is not ours or not new."""
        state = self._partitions.get(ref.tp)
        if state is None:
            return False
        if state.next_offset is not None and ref.offset < state.next_offset:
            return False
        now = self._clock.monotonic()
        stamps = state.stamps
        if not stamps or now - stamps[-1][1] >= STAMP_RESOLUTION:
            stamps.append((ref.offset, now))
        state.order.append(ref.offset)
        state.open.add(ref.offset)
        state.next_offset = ref.offset + 1
        self._open += 1
        return True

    def finished(self, ref: RecordRef) -> None:
        """``ref``'s outcome is final. Ignored unless ``ref`` is open in an owned partition."""
        state = self._partitions.get(ref.tp)
        if state is None or ref.offset not in state.open:
            return
        state.open.remove(ref.offset)
        self._open -= 1
        order = state.order
        while order and order[0] not in state.open:
            order.popleft()
        stamps = state.stamps
        if not order:
            stamps.clear()
        else:
            # Keep the last stamp at or below the lowest open offset: it dates that record.
            while len(stamps) > 1 and stamps[1][0] <= order[0]:
                stamps.popleft()

    def is_open(self, ref: RecordRef) -> bool:
        state = self._partitions.get(ref.tp)
        return state is not None and ref.offset in state.open

    @property
    def open_records(self) -> int:
        """Records consumed and not yet final, over all owned partitions."""
        return self._open

    def open_in(self, tp: TopicPartitionKey) -> int:
        state = self._partitions.get(tp)
        return 0 if state is None else len(state.open)

    def oldest_open_since(self, tp: TopicPartitionKey) -> float | None:
        """When ``tp``'s lowest open record was consumed (``clock.monotonic()``, up to
        :data:`STAMP_RESOLUTION` early); ``None`` when nothing is open or ``tp`` is not owned."""
        state = self._partitions.get(tp)
        if state is None or not state.order:
            return None
        return state.stamps[0][1]

    # --- commits ---------------------------------------------------------------------------

    def position(self, tp: TopicPartitionKey) -> int | None:
        """The offset that may be committed for ``tp`` now; ``None`` if not owned or unknown."""
        state = self._partitions.get(tp)
        return None if state is None else state.position()

    def committable(
        self, partitions: Iterable[TopicPartitionKey] | None = None
    ) -> dict[TopicPartitionKey, int]:
        """Offsets to commit: owned partitions whose position moved since :meth:`mark_committed`.

        ``partitions`` narrows the answer (e.g. to the partitions being revoked).
        """
        if partitions is None:
            items: Iterable[tuple[TopicPartitionKey, _Partition]] = self._partitions.items()
        else:
            items = [(tp, self._partitions[tp]) for tp in partitions if tp in self._partitions]
        result: dict[TopicPartitionKey, int] = {}
        for tp, state in items:
            position = state.position()
            if position is not None and position != state.committed:
                result[tp] = position
        return result

    def mark_committed(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """The broker confirmed these commits; partitions no longer owned are ignored."""
        for tp, offset in offsets.items():
            state = self._partitions.get(tp)
            if state is not None and (state.committed is None or offset > state.committed):
                state.committed = offset
