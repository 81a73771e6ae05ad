"""Publishing outcomes to the outcomes topic (:mod:`stream.core.outcome_format`).

Contract:

* One record per :meth:`OutcomePublisher.publish`: key and value as
  :mod:`stream.core.outcome_format` writes them, no headers.
* ``on_acknowledged`` is called once, when the broker acknowledged the record; the records the
  outcome stands for stay open until then. Producing is
  :class:`~stream.kafka.publisher.AcknowledgedPublisher`'s (never blocking, refusals retried and
  counted in ``ddsync_outcome_errors_total``, a fatal producer replaced without a loss).
* Outcomes are handed to the producer in the order they are published, and one contact's
  outcomes share a key, hence a partition: the topic's latest record of a contact is its latest
  outcome, which compaction keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stream.clock import Clock
from stream.core.outcome_format import Outcome
from stream.kafka.backend import Producer
from stream.kafka.confluent import ConfluentProducer
from stream.kafka.publisher import AcknowledgedPublisher, Outgoing
from stream.observability.metrics import Metrics

__all__ = ["OutcomePublisher"]


class OutcomePublisher:
    def __init__(
        self,
        producer_config: Mapping[str, Any],
        topic: str,
        metrics: Metrics,
        *,
        clock: Clock | None = None,
        producer_factory: Callable[[dict[str, Any]], Producer] = ConfluentProducer,
    ) -> None:
        self._metrics = metrics
        self._publisher = AcknowledgedPublisher(
            producer_config,
            topic,
            on_error=metrics.outcome_errors.inc,
            clock=clock,
            producer_factory=producer_factory,
        )

    @property
    def pending(self) -> int:
        return self._publisher.pending

    @property
    def congested(self) -> bool:
        return self._publisher.congested

    def publish(self, outcome: Outcome, on_acknowledged: Callable[[], None]) -> None:
        def acknowledged() -> None:
            self._metrics.outcomes_published.labels(outcome.state.value).inc()
            on_acknowledged()

        about = f"{outcome.connector}/{outcome.address_book_id} outcome {outcome.state.value}"
        partition = (
            None
            if outcome.source_topic is None
            else f"{outcome.source_topic}[{outcome.source_partition}]"
        )
        self._publisher.publish(
            Outgoing(outcome.key, outcome.encode(), (), about, partition), acknowledged
        )

    def poll(self, timeout: float = 0.0) -> int:
        return self._publisher.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` for what the producer holds (a tool's end); how many records
        it still holds."""
        self._publisher.poll(0)
        return self._publisher.flush(timeout)
