"""What a :class:`~stream.dotdigital.client.DotDigitalClient` is configured with.

The client library knows nothing of ddsync's configuration file: the application builds a
:class:`ClientConfig` from its own settings (ddsync does so in one place, ``client_config`` of
its pipeline's client pool) and hands it over.

Contract: a :class:`ClientConfig` is immutable and never shows the password. The password is a
callable returning it, called once when a client is built (so any holder of secrets, ddsync's
``Secret.reveal`` included, fits without the library knowing its type); it is left out of the
``repr`` and of comparisons. The defaults are DotDigital's documented values and ddsync's
starting budgets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["DEFAULT_DISCOVERY_ENDPOINT", "ClientConfig"]

# Any region answers GET /v2/account-info with the account's own region (ApiEndpoint).
DEFAULT_DISCOVERY_ENDPOINT = "https://r1-api.dotdigital.com"


@dataclass(frozen=True)
class ClientConfig:
    """One DotDigital account (connector) as the client needs it.

    ``name`` labels the account in logs and the client's ``repr``. ``api_endpoint`` pins the
    regional base URL; ``None`` detects it at ``discovery_endpoint``. The ``*_requests_per_minute``
    budgets are where the client's rate limiters start before DotDigital's headers correct them:
    imports (``add``), bulk removals (``remove``) and every other call (``other``).
    """

    name: str
    username: str
    password: Callable[[], str] = field(repr=False, compare=False)
    api_endpoint: str | None = None
    discovery_endpoint: str = DEFAULT_DISCOVERY_ENDPOINT
    add_requests_per_minute: int = 75
    remove_requests_per_minute: int = 35
    other_requests_per_minute: int = 600
    max_active_imports: int = 25
    # DotDigital asks clients to allow 121 s before timing a call out.
    request_timeout_seconds: float = 121.0
    # Contact ids learnt from imports and pages of members: at most this many, each this long
    # (see contact_ids.py: an old id is likelier to have gone stale).
    contact_cache_size: int = 1_000_000
    contact_cache_ttl_seconds: float = 3600.0
