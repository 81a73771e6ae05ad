"""Lag arithmetic, pure: what the ledger of open records knows of each partition, and read and
commit lag from an end offset, a position and a committable offset (:mod:`stream.kafka.lag`
samples them from the consumer and sets the gauges)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from stream.clock import Clock
from stream.core.offsets import TopicPartitionKey

__all__ = ["OpenRecords", "PartitionLag", "PartitionProgress", "partition_lag", "progress_of"]


class OpenRecords(Protocol):
    """What progress reads of the open records: a :class:`~stream.core.ledger.Ledger`, or the
    :class:`~stream.core.offsets.OffsetTracker` that keeps its watermark."""

    @property
    def owned(self) -> frozenset[TopicPartitionKey]: ...

    def position(self, tp: TopicPartitionKey) -> int | None: ...

    def oldest_open_since(self, tp: TopicPartitionKey) -> float | None: ...


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """What the ledger knows of one owned partition."""

    committable: int | None  # the offset a commit would take now; None before any record
    oldest_open_age: float  # seconds since the lowest open record was read; 0 when none


@dataclass(frozen=True, slots=True)
class PartitionLag:
    read: int
    commit: int


def progress_of(records: OpenRecords, clock: Clock) -> dict[TopicPartitionKey, PartitionProgress]:
    """Every owned partition's progress; call it on the ledger's thread. ``clock`` must be the
    ledger's, since ages compare its ``monotonic()`` times."""
    now = clock.monotonic()
    result: dict[TopicPartitionKey, PartitionProgress] = {}
    for tp in records.owned:
        since = records.oldest_open_since(tp)
        age = 0.0 if since is None else max(0.0, now - since)
        result[tp] = PartitionProgress(records.position(tp), age)
    return result


def partition_lag(
    end: int | None, position: int | None, committable: int | None
) -> PartitionLag | None:
    """Read and commit lag from the end offset, the consumer's position and the committable
    offset (negative values are librdkafka's "unknown"). ``None`` while the position is
    unknown. No record consumed since assignment (``committable`` unknown) is no commit lag;
    an end offset not known yet is taken as the position (no read lag claimed). Never
    negative: a position can pass a high watermark read a moment earlier."""
    if position is None or position < 0:
        return None
    read = 0 if end is None or end < 0 else max(0, end - position)
    commit = 0 if committable is None or committable < 0 else max(0, position - committable)
    return PartitionLag(read, commit)
