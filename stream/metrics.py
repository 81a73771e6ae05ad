"""Prometheus metrics of ddsync, in one registry.

Contract: metric names and label sets below are a public interface (dashboards and the alert
rules in ``deploy/prometheus/`` use them). Labels carry connector names, operations, reasons,
topics and partitions: never contact data and never credentials. Each :class:`Metrics` owns its
own registry, so tests and several pipelines in one process do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 750, 1000, 2500)
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """Every metric ddsync exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records_consumed = Counter(
            "ddsync_records_consumed", "Records read from the source topics.", ["topic"], registry=r
        )
        self.records_synced = Counter(
            "ddsync_records_synced",
            "Records whose outcome is in DotDigital (including those superseded by them).",
            ["connector", "operation"],
            registry=r,
        )
        self.records_dead_lettered = Counter(
            "ddsync_records_dead_lettered",
            "Records written to the dead-letter topic and acknowledged by the broker.",
            ["reason"],
            registry=r,
        )
        self.batches_flushed = Counter(
            "ddsync_batches_flushed",
            "Batches sent to DotDigital, by what closed them.",
            ["connector", "trigger"],
            registry=r,
        )
        self.batch_contacts = Histogram(
            "ddsync_batch_contacts",
            "Contacts per DotDigital call (one operation of one batch).",
            ["operation"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.flush_seconds = Histogram(
            "ddsync_flush_seconds",
            "Time from a batch's flush to its final outcome, retries included.",
            ["connector"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.dispatch_failures = Counter(
            "ddsync_dispatch_failures",
            "Batch operations that failed for good (their records go to the dead-letter topic).",
            ["connector", "operation", "reason"],
            registry=r,
        )
        self.dead_letter_errors = Counter(
            "ddsync_dead_letter_errors",
            "Dead-letter records the producer could not write yet (kept open, tried again).",
            registry=r,
        )
        self.buffered_records = Gauge(
            "ddsync_buffered_records",
            "Records consumed and not yet final (buffered or in flight).",
            registry=r,
        )
        self.paused = Gauge(
            "ddsync_consumer_paused",
            "1 while the consumer is paused by backpressure or the circuit breaker.",
            registry=r,
        )
        self.circuit_open = Gauge(
            "ddsync_dead_letter_circuit_open",
            "1 once most recent records were dead-lettered and consuming stopped.",
            registry=r,
        )
        self.commits = Counter(
            "ddsync_offset_commits", "Offset commits sent to Kafka.", ["result"], registry=r
        )
        self.committed_offset = Gauge(
            "ddsync_committed_offset",
            "Last committed offset per partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.rebalances = Counter(
            "ddsync_rebalances", "Partitions assigned or revoked.", ["event"], registry=r
        )

    def serve(self, host: str, port: int) -> None:
        """Expose ``/metrics`` over HTTP in a background thread."""
        start_http_server(port, addr=host, registry=self.registry)
