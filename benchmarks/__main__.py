"""``make bench``: ddsync's benchmarks, one JSON file of results and a table of figures.

    python -m benchmarks [--only B1,B3] [--repeat N] [--ddsync-src PATH] [scale knobs]

B1 removals, B2 throughput against a plain consumer, B3 budget use, B4 memory, B5 latency, B6
reconcile (see each module's docstring). Needs ``KAFKA_BOOTSTRAP_SERVERS`` (``make bench``
starts a broker when it is unset). The sandbox and this harness always run from this tree;
``--ddsync-src`` runs the ddsync process (only it) from another checkout, put first on its
PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks import (
    b1_removals,
    b2_throughput,
    b3_budget,
    b4_memory,
    b5_latency,
    b6_reconcile,
)
from benchmarks.common import (
    HARNESS_ROOT,
    Context,
    Figure,
    Result,
    git_describe,
    load_average,
    log,
    machine,
    module_origin,
)

BENCHMARKS: dict[str, Callable[[Context], Result]] = {
    "B1": b1_removals.run,
    "B2": b2_throughput.run,
    "B3": b3_budget.run,
    "B4": b4_memory.run,
    "B5": b5_latency.run,
    "B6": b6_reconcile.run,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--only", default="B1,B2,B3,B4,B5,B6", help="benchmarks to run, e.g. B1,B3")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; figures are medians")
    parser.add_argument(
        "--ddsync-src", type=Path, default=HARNESS_ROOT, help="source tree of the ddsync measured"
    )
    parser.add_argument(
        "--out", type=Path, default=HARNESS_ROOT / ".ddsync" / "bench", help="results directory"
    )
    scale = parser.add_argument_group("scale")
    scale.add_argument("--records", type=int, default=1_000_000, help="B2 records")
    scale.add_argument("--b2-books", type=int, default=1000)
    scale.add_argument("--b2-timeout", type=float, default=1800)
    scale.add_argument("--b1-contacts", type=int, default=3000, help="B1 contacts per book (3)")
    scale.add_argument("--b1-timeout", type=float, default=600, help="B1 removal phase bound")
    scale.add_argument("--b3-minutes", type=int, default=2, help="B3 full minutes measured")
    scale.add_argument("--b3-add", type=int, default=60, help="B3 sandbox imports a minute")
    scale.add_argument("--b3-remove", type=int, default=30, help="B3 sandbox removals a minute")
    scale.add_argument("--b3-other", type=int, default=600, help="B3 sandbox other calls a minute")
    scale.add_argument("--b3-remove-contacts", type=int, default=10, help="B3 per removal book")
    scale.add_argument("--b3-completion-timeout", type=float, default=300)
    scale.add_argument("--b4-records", type=int, default=200_000, help="B4 pending contacts")
    scale.add_argument("--b4-books", type=int, default=1000)
    scale.add_argument("--b4-cap", type=int, default=50_000, help="max_buffered_records")
    scale.add_argument("--b4-after-seconds", type=float, default=20, help="observed after pause")
    scale.add_argument("--b4-timeout", type=float, default=300)
    scale.add_argument("--b5-reps", type=int, default=15, help="B5a batches timed")
    scale.add_argument("--b5-windows", type=int, default=8, help="B5b windows timed")
    scale.add_argument("--b6-members", type=int, default=50_000, help="B6 members of the book")
    scale.add_argument("--b6-drift", type=int, default=500, help="B6 removed and strangers added")
    args = parser.parse_args(argv)
    args.only = [name.strip().upper() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.ddsync_src = args.ddsync_src.resolve()
    if not (args.ddsync_src / "stream" / "__init__.py").exists():
        parser.error(f"--ddsync-src {args.ddsync_src} has no stream package")
    return args


def combine(runs: list[Result]) -> list[Figure]:
    """One figure per key: the median over the runs whose result was checked correct."""
    combined: list[Figure] = []
    for figure in runs[0].figures:
        same = [f for r in runs for f in r.figures if f.key == figure.key]
        good = [f.value for f in same if f.valid and f.value is not None]
        values = good or [f.value for f in same if f.value is not None]
        value = statistics.median(values) if values else None
        note = figure.note
        if len(runs) > 1:
            shown = ", ".join("-" if f.value is None else f"{f.value:g}" for f in same)
            note = f"median of [{shown}]; " + note
        combined.append(
            Figure(
                figure.key, figure.label, value, figure.unit, figure.target, figure.goal,
                valid=bool(good) and len(good) == len(same), note=note,
            )
        )  # fmt: skip
    return combined


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) < 10:
        return f"{value:.4g}"
    return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"


def table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "unit", "target", "ratio", "", "note")]
    for f in figures:
        target = "" if f.target is None else ("<= " if f.goal == "max" else ">= ") + f"{f.target:g}"
        ratio = "" if f.ratio is None else f"{f.ratio:.2f}"
        status = "INVALID" if not f.valid else {True: "met", False: "MISSED", None: ""}[f.met]
        value = _number(f.value)
        rows.append((f.label, value, f.unit, target, ratio, status, f.note[:90]))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1])]
        cells += [row[i].ljust(widths[i]) for i in range(2, 6)]
        lines.append("  ".join(cells) + "  " + row[6])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print(
            "set KAFKA_BOOTSTRAP_SERVERS, or run `make bench` (it starts a broker)", file=sys.stderr
        )
        return 2
    # Children (the sandbox, the baseline consumer) import this tree whatever their directory.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HARNESS_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    began = datetime.now(UTC)
    stamp = began.strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"work-{stamp}-", dir=args.out))
    options = {k: v for k, v in vars(args).items() if k not in ("only", "out", "ddsync_src")}
    ctx = Context(bootstrap, workdir, args.ddsync_src, options)
    origin = module_origin(args.ddsync_src, ctx.ddsync_env())
    if not Path(origin).resolve().is_relative_to(args.ddsync_src):
        print(f"ddsync would import stream from {origin}, not {args.ddsync_src}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "started": began.isoformat(),
        "machine": {**machine(), "load_average_start": load_average()},
        "harness": git_describe(HARNESS_ROOT),
        "ddsync": {**git_describe(args.ddsync_src), "stream_module": origin},
        "bootstrap": bootstrap,
        "options": {**options, "only": args.only},
        "workdir": str(workdir),
        "benchmarks": {},
    }
    log(f"ddsync from {origin} ({report['ddsync']['commit']}); logs in {workdir}")
    figures: list[Figure] = []
    for name in args.only:
        runs: list[Result] = []
        entry: dict[str, Any] = {"runs": []}
        for attempt in range(args.repeat):
            log(f"{name} run {attempt + 1}/{args.repeat}")
            started = time.monotonic()
            try:
                result = BENCHMARKS[name](ctx)
            except Exception as exc:  # a benchmark that breaks must not lose the others
                traceback.print_exc()
                result = Result()
                result.problem(f"{type(exc).__name__}: {exc}")
            seconds = time.monotonic() - started
            runs.append(result)
            entry["runs"].append(
                {
                    "seconds": round(seconds, 1),
                    "load_average_end": load_average(),
                    "valid": result.valid,
                    "problems": result.problems,
                    "figures": [f.as_json() for f in result.figures],
                    "raw": result.raw,
                }
            )
            log(f"{name} run {attempt + 1} took {seconds:.0f} s")
        combined = combine(runs) if runs[0].figures else []
        entry["figures"] = [f.as_json() for f in combined]
        report["benchmarks"][name] = entry
        figures += combined
    report["finished"] = datetime.now(UTC).isoformat()
    report["machine"]["load_average_end"] = load_average()
    path = args.out / f"results-{stamp}.json"
    if path.exists():  # two runs started in the same second
        path = args.out / f"results-{stamp}-{workdir.name.rsplit('-', 1)[-1]}.json"
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print()
    dirty = " (dirty)" if report["ddsync"]["dirty"] else ""
    print(
        f"ddsync {report['ddsync']['commit'] or '?'}{dirty} from {args.ddsync_src}; "
        f"{report['machine']['nproc']} CPUs, load "
        f"{report['machine']['load_average_start']} at start, "
        f"{report['machine']['load_average_end']} at end"
    )
    print(table(figures))
    for name, entry in report["benchmarks"].items():
        for i, run in enumerate(entry["runs"]):
            for problem in run["problems"]:
                print(f"{name} run {i + 1}: {problem}")
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
