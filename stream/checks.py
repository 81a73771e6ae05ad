"""The results of ``ddsync check``: one :class:`CheckResult` per thing checked or reported.

Each part of the check (today DotDigital's: credentials, region, budgets) contributes a list of
results; the command prints them as aligned ``name: detail`` lines, or with ``--json`` as one
object ``{"ok": ..., "checks": [{"name", "ok", "detail"}, ...]}``, and exits
``ExitCode.FAILED`` when any result is not ok. More parts (Kafka) append their own results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stream.exitcodes import ExitCode


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of a check: ``name`` what it is about, ``ok`` whether it passed, ``detail`` what
    was found (never a secret)."""

    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def format_results(results: Sequence[CheckResult]) -> str:
    """``name: detail`` lines with the details aligned; a failed result's detail says FAILED."""
    if not results:
        return ""
    width = max(len(r.name) for r in results) + 2
    return "".join(
        f"{r.name + ':':<{width}}{r.detail if r.ok else 'FAILED: ' + r.detail}\n" for r in results
    )


def results_json(results: Sequence[CheckResult]) -> dict[str, Any]:
    return {"ok": all(r.ok for r in results), "checks": [r.to_json() for r in results]}


def exit_code(results: Sequence[CheckResult]) -> ExitCode:
    return ExitCode.OK if all(r.ok for r in results) else ExitCode.FAILED
