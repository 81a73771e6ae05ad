"""One DotDigital client per connector, connected on first use.

Connecting detects the account's region, which needs valid credentials. A connector whose
password is wrong must not stop the others: its client is connected lazily, under the batch's
retry deadline, and a failure fails that batch (its records go to the dead-letter topic as
``auth_failed``) while the next batch tries again.

With ``metrics``, each client reports its traffic there
(:mod:`stream.observability.client_metrics`).

:func:`client_config` is the one place a connector's settings become the client library's
:class:`~stream.dotdigital.config.ClientConfig`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from stream.clock import Clock
from stream.dotdigital import DotDigitalClient, RetryPolicy
from stream.dotdigital.config import ClientConfig
from stream.dotdigital.transport import Transport
from stream.observability.client_metrics import MetricsObserver
from stream.observability.metrics import Metrics
from stream.settings import ConnectorSettings


def client_config(connector: ConnectorSettings) -> ClientConfig:
    """What the DotDigital client needs of a connector's settings."""
    return ClientConfig(
        name=connector.name,
        username=connector.username,
        password=connector.password.reveal,
        api_endpoint=connector.api_endpoint,
        discovery_endpoint=connector.discovery_endpoint,
        add_requests_per_minute=connector.add_requests_per_minute,
        remove_requests_per_minute=connector.remove_requests_per_minute,
        other_requests_per_minute=connector.other_requests_per_minute,
        max_active_imports=connector.max_active_imports,
        request_timeout_seconds=connector.request_timeout_seconds,
        contact_cache_size=connector.contact_cache_size,
        contact_cache_ttl_seconds=connector.contact_cache_ttl_seconds,
    )


class ClientPool:
    def __init__(
        self,
        connectors: Mapping[str, ConnectorSettings],
        *,
        clock: Clock,
        metrics: Metrics | None = None,
        transport: Transport | None = None,
    ) -> None:
        """``transport`` carries every client's requests (each client's own aiohttp one unless
        given; the caller then closes it)."""
        self._connectors = connectors
        self._transport = transport
        self._clock = clock
        self._metrics = metrics
        self._clients: dict[str, DotDigitalClient] = {}
        self._locks = {name: asyncio.Lock() for name in connectors}

    async def get(
        self, connector_id: str, *, retry: RetryPolicy, deadline: float
    ) -> DotDigitalClient:
        """The connector's client, connecting it first if needed (retried until ``deadline``)."""
        client = self._clients.get(connector_id)
        if client is not None:
            return client
        async with self._locks[connector_id]:
            client = self._clients.get(connector_id)
            if client is None:
                m = self._metrics
                client = await DotDigitalClient.connect(
                    client_config(self._connectors[connector_id]),
                    transport=self._transport,
                    clock=self._clock,
                    retry=retry,
                    deadline=deadline,
                    observer=None if m is None else MetricsObserver(m, connector_id),
                )
                self._clients[connector_id] = client
            return client

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients.values()))
        self._clients.clear()
