"""Prometheus metrics of ddsync, in one registry.

Contract: metric names and label sets below are a public interface (dashboards and the alert
rules in ``deploy/prometheus/`` use them). Labels carry connector names, operations, reasons,
topics and partitions: never contact data and never credentials. Each :class:`Metrics` owns its
own registry, so tests and several pipelines in one process do not collide. The registry also
holds prometheus-client's ``process_*`` (CPU, memory, file descriptors; Linux only) and
``python_info`` series, and ``ddsync_build_info{version}`` = 1.
:mod:`stream.observability.http_server` serves it.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from stream import __version__

BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 750, 1000, 2500)
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """Every metric ddsync exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Info("ddsync_build", "The running ddsync's version.", registry=r)
        self.build_info.info({"version": __version__})
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
        self.connector_suspended = Gauge(
            "ddsync_connector_suspended",
            "1 while the connector's account fails (credentials refused, access denied, every "
            "book gone) and its records are dead-lettered as connector_suspended.",
            ["connector"],
            registry=r,
        )
        self.connector_suspensions = Counter(
            "ddsync_connector_suspensions",
            "Times a connector was suspended, by the failure that suspended it.",
            ["connector", "cause"],
            registry=r,
        )
        self.records_planned = Counter(
            "ddsync_records_planned",
            "Records of a connector in shadow mode, decided and recorded as planned, not sent.",
            ["connector", "operation"],
            registry=r,
        )
        self.outcomes_published = Counter(
            "ddsync_outcomes_published",
            "Outcomes the broker acknowledged on the outcomes topic, by the contact's state.",
            ["state"],
            registry=r,
        )
        self.outcome_errors = Counter(
            "ddsync_outcome_errors",
            "Outcome records the producer refused or the broker did not acknowledge (retried; "
            "their source records stay uncommitted meanwhile).",
            registry=r,
        )
        self.removals_held = Counter(
            "ddsync_removals_held",
            "Removals the mass-removal guard held (dead-lettered as removal_guard) instead of "
            "sending them; replaying them releases them.",
            ["connector"],
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

        # -- Kafka: ownership and lag (per assigned partition; series of a partition are
        # removed when it is revoked, so label values stay bounded by the assignment) --------
        self.assigned_partitions = Gauge(
            "ddsync_assigned_partitions",
            "Partitions assigned to this instance.",
            registry=r,
        )
        self.partition_end_offset = Gauge(
            "ddsync_partition_end_offset",
            "The partition's end offset (high watermark) as last seen by the consumer.",
            ["topic", "partition"],
            registry=r,
        )
        self.read_lag = Gauge(
            "ddsync_partition_read_lag_records",
            "Records in the partition not yet read: end offset minus the consumer's position.",
            ["topic", "partition"],
            registry=r,
        )
        self.commit_lag = Gauge(
            "ddsync_partition_commit_lag_records",
            "Records read but not final: the consumer's position minus the committable offset.",
            ["topic", "partition"],
            registry=r,
        )
        self.oldest_open_age = Gauge(
            "ddsync_oldest_open_record_age_seconds",
            "Seconds since the partition's oldest open (read, not final) record was read; "
            "0 when none is open.",
            ["topic", "partition"],
            registry=r,
        )
        self.window_seconds = Gauge(
            "ddsync_window_seconds",
            "batching.window_seconds: alert thresholds are multiples of it.",
            registry=r,
        )
        # -- DotDigital traffic ------------------------------------------------------------
        self.api_requests = Counter(
            "ddsync_dotdigital_requests",
            "HTTP requests sent to DotDigital, by operation and outcome "
            "(status_class 2xx/3xx/4xx/5xx, or 'network' when no response came).",
            ["connector", "operation", "status_class"],
            registry=r,
        )
        self.api_throttled = Counter(
            "ddsync_dotdigital_throttled",
            "Responses that throttled a request: kind http_429, apiusage_exceeded "
            "(ERROR_APIUSAGE_EXCEEDED) or concurrency_cap (too many active imports).",
            ["connector", "kind"],
            registry=r,
        )
        self.api_retries = Counter(
            "ddsync_dotdigital_retries",
            "Requests sent again after a throttled or transient failure.",
            ["connector", "operation"],
            registry=r,
        )
        self.limiter_wait = Counter(
            "ddsync_rate_limiter_wait_seconds",
            "Seconds requests spent queued for the connector's own rate limiter.",
            ["connector", "limiter"],
            registry=r,
        )
        self.limiter_budget = Gauge(
            "ddsync_rate_limit_budget_per_minute",
            "Requests a minute the limiter allows now (configured, then learnt from headers).",
            ["connector", "limiter"],
            registry=r,
        )
        self.active_imports = Gauge(
            "ddsync_dotdigital_active_imports",
            "Imports DotDigital accepted that ddsync is still polling.",
            ["connector"],
            registry=r,
        )
        self.import_contacts = Counter(
            "ddsync_import_contacts",
            "Contacts in finished imports, by outcome (created, updated, failed).",
            ["connector", "outcome"],
            registry=r,
        )


class ReconcileMetrics:
    """What one ``ddsync reconcile`` found, in a registry of its own: the command runs apart from
    the service (a CronJob), so these go to a node-exporter textfile (``--metrics-file``), not
    to the service's endpoint."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.drift = Gauge(
            "ddsync_reconcile_drift_contacts",
            "Contacts out of step in an address book at the last reconcile, after its repair if "
            "it repaired, by kind: missing and unexpected (drift), unmanaged (never seen by "
            "ddsync; not drift).",
            ["connector", "address_book", "kind"],
            registry=r,
        )
        self.finished = Gauge(
            "ddsync_reconcile_last_run_timestamp_seconds",
            "When the last reconcile ended (Unix time).",
            registry=r,
        )
