"""The open records of the owned partitions: their watermark, their originals, their revokes.

One structure where there were three that had to stay in step: the per-partition commit
watermark (:class:`~stream.core.offsets.OffsetTracker`), the original of each open record (what
a dead letter is made of), and the partitions being revoked. Every change goes through one
method here, so no caller can move one without the others.

A consumed record is *open* until its outcome is final (synced; superseded by a later record of
the same contact whose outcome is final; or on the dead-letter topic, acknowledged).

Contract:

* The watermark is :class:`~stream.core.offsets.OffsetTracker`'s, and keeps its contract:
  :meth:`Ledger.committable` never returns an offset past a record that is open, so after a
  crash the new reader starts at or before every record whose outcome is not final; per
  partition the position only moves forward while the partition stays assigned; only owned
  partitions are committable; :meth:`Ledger.open` takes offsets in increasing order per
  partition and refuses (``False``) a record already opened or of a partition not owned;
  :meth:`Ledger.settle` is idempotent and ignores a record not open (a late outcome after the
  partition was forgotten, or a stale one after it was assigned again).
* **Originals.** A record is opened with its original (key, value, headers), which the ledger
  keeps exactly as long as the record is open and its partition owned: :meth:`Ledger.original`
  returns it for a dead letter, and settling the record or forgetting its partition lets it go.
  Memory O(open records).
* **Revokes.** Inside :meth:`Ledger.revoking` the given partitions' records stay open (they are
  committed only as far as they are final when the revoke ends) but are no longer *held*
  (:meth:`Ledger.holds`): they are not ours to send any more, since the new owner reads them
  again. :meth:`Ledger.settle_kept` settles records of the other partitions only. The revoke
  takes its offsets with :meth:`Ledger.committable`, then forgets the partitions
  (:meth:`Ledger.forget`); they stop being revoked when the block ends, whether or not it
  ended normally.
* Pure: no I/O, time only from the injected clock (for :meth:`Ledger.oldest_open_since`).

Not thread-safe: call it from one thread (or one event loop).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeAlias

from stream.clock import Clock
from stream.core.offsets import OffsetTracker, RecordRef, TopicPartitionKey

__all__ = ["Header", "Ledger", "Original"]

Header: TypeAlias = tuple[str, str | bytes | None]
"""One Kafka header, as the Kafka backend hands it over (``stream.kafka.backend.Header``)."""

Original: TypeAlias = tuple[bytes | None, bytes | None, tuple[Header, ...]]
"""What a dead letter needs of its source record: key, value, headers."""


class Ledger:
    """The open records of the owned partitions. See the module docstring for the contract."""

    def __init__(self, clock: Clock | None = None) -> None:
        """``clock`` times consumption (for :meth:`oldest_open_since`); the system's if None."""
        self._watermark = OffsetTracker(clock)
        self._originals: dict[TopicPartitionKey, dict[int, Original]] = {}
        self._revoking: set[TopicPartitionKey] = set()

    # --- ownership -------------------------------------------------------------------------

    def assign(self, tp: TopicPartitionKey) -> None:
        """Own ``tp`` from now on; a no-op if it is already owned."""
        self._watermark.assign(tp)
        self._originals.setdefault(tp, {})

    def forget(self, tp: TopicPartitionKey) -> None:
        """Forget ``tp``, its open records and their originals: nothing of it is committable
        afterwards, so its next owner reads its open records again. A no-op if not owned.

        To commit on revoke, take ``committable([tp])`` *before* calling this."""
        self._watermark.revoke(tp)
        self._originals.pop(tp, None)

    def owns(self, tp: TopicPartitionKey) -> bool:
        return self._watermark.owns(tp)

    @property
    def owned(self) -> frozenset[TopicPartitionKey]:
        return self._watermark.owned

    # --- records ---------------------------------------------------------------------------

    def open(self, ref: RecordRef, original: Original) -> bool:
        """Open ``ref``, keeping its original. ``False`` (and nothing kept) if it is not ours
        or not new: the caller must not process it."""
        if not self._watermark.consumed(ref):
            return False
        self._originals[ref.tp][ref.offset] = original
        return True

    def settle(self, ref: RecordRef) -> None:
        """``ref``'s outcome is final: it no longer holds the commit back, and its original is
        let go. Ignored unless ``ref`` is open in an owned partition."""
        self._watermark.finished(ref)
        kept = self._originals.get(ref.tp)
        if kept is not None:
            kept.pop(ref.offset, None)

    def original(self, ref: RecordRef) -> Original | None:
        """The original of an open record (for its dead letter); None when it is not open."""
        kept = self._originals.get(ref.tp)
        return None if kept is None else kept.get(ref.offset)

    def is_open(self, ref: RecordRef) -> bool:
        return self._watermark.is_open(ref)

    @property
    def open_records(self) -> int:
        """Records opened and not yet settled, over all owned partitions."""
        return self._watermark.open_records

    def open_in(self, tp: TopicPartitionKey) -> int:
        return self._watermark.open_in(tp)

    def oldest_open_since(self, tp: TopicPartitionKey) -> float | None:
        """When ``tp``'s lowest open record was opened (``clock.monotonic()``, up to
        :data:`~stream.core.offsets.STAMP_RESOLUTION` early); ``None`` when nothing is open
        or ``tp`` is not owned."""
        return self._watermark.oldest_open_since(tp)

    # --- revokes ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def revoking(self, partitions: Iterable[TopicPartitionKey]) -> Iterator[None]:
        """While the block runs, ``partitions`` are being given up: their records stay open but
        are no longer held."""
        given_up = set(partitions)
        self._revoking |= given_up
        try:
            yield
        finally:
            self._revoking -= given_up

    def is_revoking(self, tp: TopicPartitionKey) -> bool:
        return tp in self._revoking

    def holds(self, ref: RecordRef) -> bool:
        """Whether ``ref`` is still ours to act on: open, and its partition not being revoked."""
        return ref.tp not in self._revoking and self._watermark.is_open(ref)

    def settle_kept(self, refs: Iterable[RecordRef]) -> None:
        """Settle those of ``refs`` whose partition is not being revoked (records superseded by
        a newer one that the new owner of a revoked partition reads again)."""
        for ref in refs:
            if ref.tp not in self._revoking:
                self.settle(ref)

    # --- commits ---------------------------------------------------------------------------

    def position(self, tp: TopicPartitionKey) -> int | None:
        """The offset that may be committed for ``tp`` now; ``None`` if not owned or unknown."""
        return self._watermark.position(tp)

    def committable(
        self, partitions: Iterable[TopicPartitionKey] | None = None
    ) -> dict[TopicPartitionKey, int]:
        """Offsets to commit: owned partitions whose position moved since :meth:`mark_committed`,
        never past an open record. ``partitions`` narrows the answer (the partitions being
        revoked)."""
        return self._watermark.committable(partitions)

    def mark_committed(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """The broker confirmed these commits; partitions no longer owned are ignored."""
        self._watermark.mark_committed(offsets)
