"""Registers the fixture modules of ``tests/support`` for the whole suite.

Fixtures live in modules under ``tests/support/`` named after what they provide, not here: a
test module imports helpers from ``tests.support`` and never from a conftest or another test
module (``tests/unit/test_suite_rules.py`` checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what __getattr__ below hands out
    from tests.support.kafka import KafkaCluster as KafkaCluster

pytest_plugins = [
    "tests.support.kafka",  # kafka: a real broker for the session
    "tests.support.client_sandbox",  # clock, sandbox: the client tests' accounts on a FakeClock
]


def __getattr__(name: str) -> object:
    # Only for tests/integration/test_revoke.py, which another branch is reworking and which
    # still says ``from tests.conftest import KafkaCluster``; drop this once it imports
    # tests.support.kafka (tests/unit/test_suite_rules.py lists it until then). Lazy, so that
    # pytest imports tests.support.kafka as a plugin first (and rewrites its asserts).
    if name == "KafkaCluster":
        from tests.support.kafka import KafkaCluster

        return KafkaCluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
