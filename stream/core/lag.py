"""Lag arithmetic, pure: what the offset tracker knows of each partition, and read and commit
lag from an end offset, a position and a committable offset (:mod:`stream.kafka.lag` samples
them from the consumer and sets the gauges)."""

from __future__ import annotations

from dataclasses import dataclass

from stream.clock import Clock
from stream.core.offsets import OffsetTracker, TopicPartitionKey

__all__ = ["PartitionLag", "PartitionProgress", "partition_lag", "progress_of"]


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """What the offset tracker knows of one owned partition."""

    committable: int | None  # the offset a commit would take now; None before any record
    oldest_open_age: float  # seconds since the lowest open record was read; 0 when none


@dataclass(frozen=True, slots=True)
class PartitionLag:
    read: int
    commit: int


def progress_of(tracker: OffsetTracker, clock: Clock) -> dict[TopicPartitionKey, PartitionProgress]:
    """Every owned partition's progress; call it on the tracker's thread. ``clock`` must be
    the tracker's, since ages compare its ``monotonic()`` times."""
    now = clock.monotonic()
    result: dict[TopicPartitionKey, PartitionProgress] = {}
    for tp in tracker.owned:
        since = tracker.oldest_open_since(tp)
        age = 0.0 if since is None else max(0.0, now - since)
        result[tp] = PartitionProgress(tracker.position(tp), age)
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
