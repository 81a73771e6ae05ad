"""Running a sandbox: bind one port per region, serve, and hand back a :class:`Sandbox`."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from stream.sandbox.accounts import REGIONS
from stream.sandbox.app import build_app
from stream.sandbox.core import SandboxCore, Stats
from stream.sandbox.faults import Faults
from stream.sandbox.journal import Journal
from stream.sandbox.settings import SandboxSettings

_WILDCARDS = {"", "0.0.0.0", "::"}  # noqa: S104 - compared against, not bound


class Sandbox:
    """A running sandbox (what ``async with run_sandbox(...)`` yields).

    * ``urls``: base URL per region, without trailing slash; ``discovery_url`` is r1's.
    * ``journal``: every API request received (:class:`.journal.JournalEntry`), oldest first.
    * ``faults``: mutable switches, shared with ``/_sandbox/faults``.
    * ``members(username, address_book_id)``: emails currently in the book, after completing
      every job that is due (raises ``KeyError`` for an unknown account or book).
    """

    def __init__(self, core: SandboxCore) -> None:
        self._core = core

    @property
    def settings(self) -> SandboxSettings:
        return self._core.settings

    @property
    def urls(self) -> dict[str, str]:
        return dict(self._core.urls)

    @property
    def discovery_url(self) -> str:
        return self._core.urls["r1"]

    @property
    def journal(self) -> Journal:
        return self._core.journal

    @property
    def faults(self) -> Faults:
        return self._core.faults

    @property
    def stats(self) -> Stats:
        return self._core.stats

    def members(self, username: str, address_book_id: int) -> set[str]:
        state = self._core.state.account(username)
        if state is None:
            raise KeyError(f"no sandbox account {username!r}")
        state.settle()
        book = state.books.get(address_book_id)
        if book is None:
            raise KeyError(f"account {username!r} has no address book {address_book_id}")
        return state.member_emails(address_book_id)

    def lock(self, username: str, locked: bool = True) -> None:
        """Lock (or unlock) the account's API user: every call answers 401 meanwhile, as
        DotDigital does for a locked user or a disabled account."""
        state = self._core.state.account(username)
        if state is None:
            raise KeyError(f"no sandbox account {username!r}")
        state.locked = locked

    def address_books(self, username: str) -> dict[int, str]:
        """Ids and names of the account's address books."""
        state = self._core.state.account(username)
        if state is None:
            raise KeyError(f"no sandbox account {username!r}")
        return {book.id: book.name for book in state.books.values()}

    def ready_info(self) -> dict[str, Any]:
        """What ``--ready-file`` contains."""
        return {"urls": self.urls, "discovery_url": self.discovery_url}


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def run_sandbox(settings: SandboxSettings | None = None) -> AsyncIterator[Sandbox]:
    """Serve a sandbox until the ``async with`` block ends.

    Binds r1, r2, r3 to ``settings.port``, +1, +2 (or to three free ports when it is 0) before
    yielding, so every URL answers as soon as the block starts. ``OSError`` when a port is
    taken.
    """
    settings = settings or SandboxSettings()
    core = SandboxCore(settings)
    advertised = settings.advertised_host or (
        "127.0.0.1" if settings.host in _WILDCARDS else settings.host
    )
    if ":" in advertised:
        advertised = f"[{advertised}]"
    sockets: list[socket.socket] = []
    runners: list[web.AppRunner] = []
    try:
        for offset, _region in enumerate(REGIONS):
            sockets.append(_bind(settings.host, settings.port + offset if settings.port else 0))
        for region, sock in zip(REGIONS, sockets, strict=True):
            core.urls[region] = f"http://{advertised}:{sock.getsockname()[1]}"
        for region, sock in zip(REGIONS, sockets, strict=True):
            # No access log: at benchmark rates it would cost more than the handlers.
            runner = web.AppRunner(
                build_app(core, region),
                access_log=None,
                handle_signals=False,
                shutdown_timeout=1.0,
            )
            await runner.setup()
            runners.append(runner)
            await web.SockSite(runner, sock).start()
        yield Sandbox(core)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        for sock in sockets:
            sock.close()
