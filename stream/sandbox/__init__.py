"""``ddsync sandbox``: a local DotDigital for demos, integration tests and benchmarks.

In process::

    async with run_sandbox(SandboxSettings(accounts=[SandboxAccount("u@x", "pw")])) as sb:
        sb.urls["r1"], sb.discovery_url, sb.journal, sb.faults, sb.members("u@x", book_id)

From the shell: ``ddsync sandbox --help`` or ``python -m stream.sandbox --help``.
"""

from stream.sandbox.accounts import (
    DEMO_PASSWORD,
    DEMO_USERNAME,
    AccountsError,
    SandboxAccount,
    SandboxAddressBook,
    default_accounts,
    load_accounts,
)
from stream.sandbox.faults import Faults
from stream.sandbox.journal import Journal, JournalEntry
from stream.sandbox.server import Sandbox, run_sandbox
from stream.sandbox.settings import SandboxSettings

__all__ = [
    "DEMO_PASSWORD",
    "DEMO_USERNAME",
    "AccountsError",
    "Faults",
    "Journal",
    "JournalEntry",
    "Sandbox",
    "SandboxAccount",
    "SandboxAddressBook",
    "SandboxSettings",
    "default_accounts",
    "load_accounts",
    "run_sandbox",
]
