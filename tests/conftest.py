"""Registers the fixture modules of ``tests/support`` for the whole suite.

Fixtures live in modules under ``tests/support/`` named after what they provide, not here: a
test module imports helpers from ``tests.support`` and never from a conftest or another test
module (``tests/unit/test_suite_rules.py`` checks it).
"""

from __future__ import annotations

pytest_plugins = [
    "tests.support.kafka",  # kafka: a real broker for the session
    "tests.support.client_sandbox",  # clock, sandbox: the client tests' accounts on a FakeClock
]
