"""The DotDigital clients' traffic as Prometheus metrics: a client observer per connector.

:class:`MetricsObserver` maps :class:`~stream.dotdigital.observe.ClientObserver` callbacks onto
the ``ddsync_dotdigital_*`` and ``ddsync_rate_limit*`` series of
:class:`~stream.observability.metrics.Metrics`,
labelled with the connector's name, and exports each limiter's current requests-a-minute, read
at scrape time so it shows what the headers taught the client last.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from stream.dotdigital.observe import (
    ApiOperation,
    ClientObserver,
    Limiter,
    StatusClass,
    ThrottleKind,
)
from stream.observability.metrics import Metrics

__all__ = ["MetricsObserver"]


class MetricsObserver(ClientObserver):
    """Counts one connector's requests, throttles, retries, limiter waits and imports."""

    def __init__(self, metrics: Metrics, connector: str) -> None:
        self._metrics = metrics
        self._connector = connector
        # Labelled series by (metric, labels): labels() takes a lock and builds a key, and it
        # ran several times per request. The label values are a small closed set.
        self._series: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(self._connector, *labels)
        return child

    def request(self, operation: ApiOperation, outcome: StatusClass) -> None:
        self._child(self._metrics.api_requests, operation, outcome).inc()

    def throttled(self, kind: ThrottleKind) -> None:
        self._child(self._metrics.api_throttled, kind).inc()

    def retried(self, operation: ApiOperation) -> None:
        self._child(self._metrics.api_retries, operation).inc()

    def queued(self, limiter: Limiter, seconds: float) -> None:
        # Zero waits too, so that the series exist (and rate() works) before the first queue.
        self._child(self._metrics.limiter_wait, limiter).inc(max(0.0, seconds))

    def budget(self, limiter: Limiter, per_minute: Callable[[], int]) -> None:
        # Read at scrape time; a client replacing an earlier one of the connector takes the
        # series over.
        self._metrics.limiter_budget.labels(self._connector, limiter).set_function(per_minute)

    def budget_gone(self, limiter: Limiter) -> None:
        with contextlib.suppress(KeyError):
            self._metrics.limiter_budget.remove(self._connector, limiter)

    def import_active(self, delta: int) -> None:
        self._child(self._metrics.active_imports).inc(delta)

    def import_finished(self, created: int, updated: int, failed: int) -> None:
        outcomes = self._metrics.import_contacts
        self._child(outcomes, "created").inc(created)
        self._child(outcomes, "updated").inc(updated)
        self._child(outcomes, "failed").inc(failed)
