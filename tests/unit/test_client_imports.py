"""The client library's pure parts import without aiohttp (only the client needs it)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# Blocks aiohttp (and its multidict and yarl) as if not installed, then imports.
SCRIPT = textwrap.dedent(
    """
    import sys

    for name in ("aiohttp", "multidict", "yarl"):
        sys.modules[name] = None  # an import of it now raises ImportError

    import stream.dotdigital.ratelimit
    import stream.dotdigital.retry
    from stream.dotdigital import RateLimiter, RetryPolicy, TransientError, normalize_email

    assert "aiohttp" not in {m for m, v in sys.modules.items() if v is not None}
    try:
        from stream.dotdigital import DotDigitalClient
    except ImportError:
        print("client needs aiohttp")
    """
)


def test_the_pure_parts_import_without_aiohttp() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "client needs aiohttp"


def test_the_client_is_still_exported() -> None:
    import stream.dotdigital as dotdigital
    from stream.dotdigital.client import DotDigitalClient, Operation, PollSchedule

    assert dotdigital.DotDigitalClient is DotDigitalClient
    assert dotdigital.PollSchedule is PollSchedule
    assert dotdigital.Operation is Operation
    assert set(dotdigital.__all__) >= {"DotDigitalClient", "Operation", "PollSchedule"}
