"""The chaos run as tests: the short one runs in ``make test``; the long one (``-m chaos``,
``make chaos``) only when asked. Both start a broker of their own, which they restart.

The short run's isolation check (connector ``a`` keeps syncing while ``b``'s password is
wrong) fails until a broken connector is isolated (issue 12): on that code the global
dead-letter breaker stops consumption for both connectors.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.harness import ChaosSettings, localkafka, run

SEED = int(os.environ.get("CHAOS_SEED", "12"))

# The run restarts its broker, so it needs one of its own: the local one (a JDK and Maven).
pytestmark = pytest.mark.skipif(
    not localkafka.can_run_locally(),
    reason="the chaos run needs a JDK and Maven for a broker it can restart",
)


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_short_chaos_run_converges_exactly() -> None:
    report = run(ChaosSettings.short(SEED))
    assert report.passed, "\n".join([f"chaos run seed {SEED} failed:", *report.failures])


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_long_chaos_run_converges_exactly() -> None:
    report = run(ChaosSettings(seed=SEED))
    assert report.passed, "\n".join([f"chaos run seed {SEED} failed:", *report.failures])
