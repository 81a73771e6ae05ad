"""What a replay tells its operator: the summary, its text and JSON forms, and progress.

Reports never hold record values or error messages (either may be personal data); keys
(profile ids, shortened), reasons, error codes and positions are enough to act on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Final

from stream.replay.decide import DeadLetterRecord, Decision, Verdict

SAMPLE_SIZE: Final = 5
KEY_PREVIEW_CHARS: Final = 64


@dataclass(frozen=True, slots=True)
class Sample:
    """One record for the report: where it is, where it came from, why it failed."""

    dead_letter_partition: int
    dead_letter_offset: int
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    error_code: str
    replay_count: int
    key: str

    def describe(self) -> str:
        code = f" code={self.error_code}" if self.error_code else ""
        return (
            f"{self.source_topic}[{self.source_partition}]@{self.source_offset}"
            f" reason={self.reason}{code} key={self.key} replays={self.replay_count}"
            f" (dead-letter [{self.dead_letter_partition}]@{self.dead_letter_offset})"
        )


def key_preview(key: bytes | None) -> str:
    """A record key for humans: quoted, undecodable bytes replaced, cut to a bounded length."""
    if key is None:
        return "(none)"
    text = key.decode("utf-8", errors="replace")
    if len(text) > KEY_PREVIEW_CHARS:
        text = text[:KEY_PREVIEW_CHARS] + "…"
    return repr(text)


class StopReason(StrEnum):
    END = "end"  # reached the end offsets captured at start
    LIMIT = "limit"  # replayed --limit records
    INTERRUPTED = "interrupted"  # SIGINT/SIGTERM
    FAILED = "failed"  # a record could not be produced, or offsets could not be committed


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """What a replay did (or, dry run, would do)."""

    dry_run: bool
    group: str
    stopped: StopReason
    replayed: int = 0
    refused: int = 0
    filtered: int = 0
    malformed: int = 0
    superseded: int = 0
    unverifiable: int = 0
    # (reason, source topic) -> records replayed (would be, in a dry run).
    by_reason_and_topic: Mapping[tuple[str, str], int] = field(default_factory=dict)
    samples: tuple[Sample, ...] = ()
    malformed_samples: tuple[str, ...] = ()
    unverifiable_samples: tuple[str, ...] = ()


def format_summary(summary: ReplaySummary) -> list[str]:
    """The report's lines: per reason and source topic, samples (dry run), malformed, totals."""
    verb = "would replay" if summary.dry_run else "replayed"
    lines: list[str] = []
    if summary.by_reason_and_topic:
        lines.append(f"{verb} by reason and source topic:")
        for (reason, topic), count in sorted(summary.by_reason_and_topic.items()):
            lines.append(f"  {reason} -> {topic}: {count}")
    if summary.dry_run and summary.samples:
        lines.append(f"first {len(summary.samples)} to replay:")
        lines.extend(f"  {sample.describe()}" for sample in summary.samples)
    if summary.malformed_samples:
        lines.append(f"malformed (skipped), first {len(summary.malformed_samples)}:")
        lines.extend(f"  {text}" for text in summary.malformed_samples)
    if summary.unverifiable_samples:
        lines.append(f"unverifiable (skipped), first {len(summary.unverifiable_samples)}:")
        lines.extend(f"  {text}" for text in summary.unverifiable_samples)
    totals = (
        f"{verb} {summary.replayed}, refused (too many replays) {summary.refused}, "
        f"skipped by filter {summary.filtered}, malformed {summary.malformed}, "
        f"superseded {summary.superseded}, unverifiable {summary.unverifiable}"
    )
    if summary.dry_run:
        totals = f"dry run: {totals}; nothing produced, no offsets committed"
    lines.append(totals)
    if summary.stopped is StopReason.LIMIT:
        lines.append("stopped at --limit; run again to continue where this run stopped")
    elif summary.stopped is StopReason.INTERRUPTED:
        lines.append("interrupted; run again to continue where this run stopped")
    elif summary.stopped is StopReason.FAILED:
        lines.append("stopped by an error; fix it and run again to continue")
    return lines


def summary_json(summary: ReplaySummary, error: str | None = None) -> dict[str, Any]:
    """The report as one JSON object: the counts, how it stopped, ``error`` (the line printed on
    stderr when an error stopped it, else null), per reason and source topic, the samples."""
    return {
        "dry_run": summary.dry_run,
        "group": summary.group,
        "stopped": summary.stopped.value,
        "error": error,
        "replayed": summary.replayed,
        "refused": summary.refused,
        "filtered": summary.filtered,
        "malformed": summary.malformed,
        "superseded": summary.superseded,
        "unverifiable": summary.unverifiable,
        "by_reason_and_topic": [
            {"reason": reason, "source_topic": topic, "count": count}
            for (reason, topic), count in sorted(summary.by_reason_and_topic.items())
        ],
        "samples": [asdict(sample) for sample in summary.samples],
        "malformed_samples": list(summary.malformed_samples),
        "unverifiable_samples": list(summary.unverifiable_samples),
    }


@dataclass(frozen=True, slots=True)
class ReplayProgress:
    """How far a run is: ``looked_at`` of ``backlog`` records decided about, of which
    ``replayed`` replayed (would be, in a dry run) and ``skipped`` refused, filtered,
    malformed, superseded or unverifiable. ``backlog`` is the upper bound taken at the start."""

    looked_at: int
    backlog: int
    replayed: int
    skipped: int
    dry_run: bool = False

    def describe(self) -> str:
        """E.g. ``1200 / 5000 records (24%): replayed 900, skipped 300``."""
        verb = "would replay" if self.dry_run else "replayed"
        return (
            f"{self.looked_at} / {self.backlog} records ({self.percent}%): "
            f"{verb} {self.replayed}, skipped {self.skipped}"
        )

    @property
    def percent(self) -> int:
        if self.backlog <= 0:
            return 100
        return min(100, self.looked_at * 100 // self.backlog)


class Tally:
    """The mutable counts behind a :class:`ReplaySummary` (one run, one thread)."""

    def __init__(self, sample_size: int) -> None:
        self.counts: Counter[Verdict] = Counter()
        self.by_reason_and_topic: Counter[tuple[str, str]] = Counter()
        self.samples: list[Sample] = []
        self.malformed_samples: list[str] = []
        self.unverifiable_samples: list[str] = []
        self._sample_size = sample_size

    def add(self, decision: Decision, record: DeadLetterRecord) -> None:
        self.counts[decision.verdict] += 1
        letter = decision.letter
        if decision.verdict is Verdict.MALFORMED:
            if len(self.malformed_samples) < self._sample_size:
                self.malformed_samples.append(f"{record.where}: {decision.problem}")
        elif decision.verdict is Verdict.UNVERIFIABLE:
            if len(self.unverifiable_samples) < self._sample_size:
                self.unverifiable_samples.append(f"{record.where}: {decision.problem}")
        elif decision.verdict is Verdict.REPLAY and letter is not None:
            self.by_reason_and_topic[(letter.reason.value, letter.source_topic)] += 1
            if len(self.samples) < self._sample_size:
                self.samples.append(
                    Sample(
                        dead_letter_partition=record.partition,
                        dead_letter_offset=record.offset,
                        source_topic=letter.source_topic,
                        source_partition=letter.source_partition,
                        source_offset=letter.source_offset,
                        reason=letter.reason.value,
                        error_code=letter.error_code,
                        replay_count=letter.replay_count,
                        key=key_preview(record.key),
                    )
                )

    def summary(self, dry_run: bool, group: str, stopped: StopReason) -> ReplaySummary:
        return ReplaySummary(
            dry_run=dry_run,
            group=group,
            stopped=stopped,
            replayed=self.counts[Verdict.REPLAY],
            refused=self.counts[Verdict.REFUSED],
            filtered=self.counts[Verdict.FILTERED],
            malformed=self.counts[Verdict.MALFORMED],
            superseded=self.counts[Verdict.SUPERSEDED],
            unverifiable=self.counts[Verdict.UNVERIFIABLE],
            by_reason_and_topic=dict(self.by_reason_and_topic),
            samples=tuple(self.samples),
            malformed_samples=tuple(self.malformed_samples),
            unverifiable_samples=tuple(self.unverifiable_samples),
        )
