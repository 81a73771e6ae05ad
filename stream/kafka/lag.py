"""Consumer lag per assigned partition, sampled from the consumer thread into the metrics.

Three numbers per partition, all in records except the age:

* read lag: the end offset (high watermark) minus the consumer's position, i.e. records in the
  partition not yet read;
* commit lag: the consumer's position minus the committable offset of the
  :class:`~stream.core.offsets.OffsetTracker`, i.e. records read but not final;
* the age of the oldest open record (0 when none is open).

Where the end offsets come from: ``get_watermark_offsets(tp, cached=True)`` for partitions being
fetched. librdkafka refreshes that high watermark from every fetch response (an idle partition's
long-poll fetch answers at least every ``fetch.wait.max.ms``), so it costs no request and is at
most a fetch old. A paused partition is not fetched and its cached value would freeze, hiding
exactly the lag that pausing builds up; for those (and for partitions not fetched yet) the broker
is asked (``cached=False``, one ListOffsets round trip each), within a time bound per sample so
that an unreachable broker cannot hold the consumer loop. librdkafka's statistics
(``statistics.interval.ms`` + ``stats_cb``) were the alternative: they carry the same fetch-fed
high watermark, so paused partitions would need the broker query anyway, and they cost a JSON
document of every partition each interval plus a setting users may already use themselves.

Contract:

* :class:`LagMonitor` is called from the consumer thread only (like every consumer call):
  :meth:`LagMonitor.maybe_sample` from the poll loop, :meth:`LagMonitor.assigned` and
  :meth:`LagMonitor.forget` from the rebalance callbacks.
* A revoked or lost partition's series are removed, so label values stay bounded by the
  assignment; a partition whose position is not known yet has no lag series until it is.
* The ledger is read through ``progress``, a callable that runs on the ledger's own thread
  (the pipeline's event loop) and returns :func:`stream.core.lag.progress_of`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

from stream.core.lag import PartitionProgress, partition_lag
from stream.core.offsets import TopicPartitionKey
from stream.kafka.backend import BackendException, Consumer
from stream.observability.metrics import Metrics

__all__ = ["LagMonitor"]

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 5.0
# Bounds of the broker queries for paused partitions: per query, and for one whole sample.
QUERY_TIMEOUT_SECONDS = 1.0
QUERY_BUDGET_SECONDS = 2.0


class LagMonitor:
    """Samples lag every ``interval`` seconds and sets the per-partition gauges."""

    def __init__(
        self,
        consumer: Consumer,
        progress: Callable[[], Mapping[TopicPartitionKey, PartitionProgress]],
        metrics: Metrics,
        *,
        interval: float = SAMPLE_SECONDS,
    ) -> None:
        self._consumer = consumer
        self._progress = progress
        self._metrics = metrics
        self._interval = interval
        self._owned: set[TopicPartitionKey] = set()
        self._ends: dict[TopicPartitionKey, int] = {}
        self._next = 0.0

    def assigned(self, keys: Iterable[TopicPartitionKey]) -> None:
        self._owned.update(keys)
        self._metrics.assigned_partitions.set(len(self._owned))
        self._next = 0.0  # show the new partitions at the next loop, not an interval later

    def forget(self, keys: Iterable[TopicPartitionKey]) -> None:
        """The partitions were revoked or lost: drop their series."""
        m = self._metrics
        for tp in keys:
            self._owned.discard(tp)
            self._ends.pop(tp, None)
            labels = (tp[0], str(tp[1]))
            for gauge in (m.partition_end_offset, m.read_lag, m.commit_lag, m.oldest_open_age):
                gauge.remove(*labels)
        m.assigned_partitions.set(len(self._owned))

    def maybe_sample(self, now: float, *, paused: bool) -> None:
        """Sample if ``interval`` passed since the last sample (``now``: monotonic seconds)."""
        if now < self._next or not self._owned:
            return
        self._next = now + self._interval
        try:
            self.sample(paused=paused)
        except BackendException as exc:
            log.warning("could not sample consumer lag (tried again later): %s", exc)

    def sample(self, *, paused: bool) -> None:
        """Read positions, end offsets and the ledger's progress; set the gauges."""
        keys = sorted(self._owned)
        positions = self._consumer.position(keys)
        self._refresh_ends(keys, paused=paused)
        progress = self._progress()
        m = self._metrics
        for tp in keys:
            labels = (tp[0], str(tp[1]))
            end = self._ends.get(tp)
            if end is not None:
                m.partition_end_offset.labels(*labels).set(end)
            known = progress.get(tp)
            lag = partition_lag(end, positions.get(tp), known.committable if known else None)
            if lag is not None:
                m.read_lag.labels(*labels).set(lag.read)
                m.commit_lag.labels(*labels).set(lag.commit)
            m.oldest_open_age.labels(*labels).set(known.oldest_open_age if known else 0.0)

    def _refresh_ends(self, keys: list[TopicPartitionKey], *, paused: bool) -> None:
        ask: list[TopicPartitionKey] = []
        for tp in keys:
            cached = None if paused else self._watermark(tp, cached=True)
            if cached is None:
                ask.append(tp)
            else:
                self._ends[tp] = cached
        started = time.monotonic()
        for tp in ask:
            if time.monotonic() - started > QUERY_BUDGET_SECONDS:
                log.debug("lag: %d end offsets not refreshed this time", len(ask))
                return
            try:
                fresh = self._watermark(tp, cached=False)
            except BackendException as exc:
                log.debug("lag: end offset of %s[%d] unknown: %s", tp[0], tp[1], exc)
                continue
            if fresh is not None:
                self._ends[tp] = fresh

    def _watermark(self, tp: TopicPartitionKey, *, cached: bool) -> int | None:
        answer = self._consumer.get_watermark_offsets(
            tp, timeout=QUERY_TIMEOUT_SECONDS, cached=cached
        )
        if answer is None:
            return None
        high = answer[1]
        return high if high >= 0 else None
