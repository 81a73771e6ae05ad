"""``python -m tests.chaos [--seed N] [--records N] [--short]``: one chaos run, a figure table
and ``.ddsync/chaos/<time>-seed<N>/report.json``; exit status 0 only when it passed."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

from tests.chaos.harness import ChaosSettings, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    parser.add_argument("--short", action="store_true", help="the make test version's sizes")
    parser.add_argument("--records", type=int, help="default 50000 (3000 with --short)")
    parser.add_argument("--profiles", type=int)
    parser.add_argument("--chaos-seconds", type=float, help="how long traffic and chaos last")
    parser.add_argument("--kills", type=int)
    parser.add_argument("--broker-restarts", type=int)
    parser.add_argument(
        "--replay-reason", action="append", help="dead-letter reasons replayed after the fix"
    )
    parser.add_argument("--report-dir", type=Path)
    parser.add_argument(
        "--no-broken-account",
        action="store_true",
        help="a control run: connector b's password is right throughout",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    changes: dict[str, Any] = {
        name: value
        for name, value in (
            ("records", args.records),
            ("profiles", args.profiles),
            ("chaos_seconds", args.chaos_seconds),
            ("kills", args.kills),
            ("broker_restarts", args.broker_restarts),
            ("replay_reasons", tuple(args.replay_reason) if args.replay_reason else None),
            ("report_dir", args.report_dir),
            ("broken_account", False if args.no_broken_account else None),
        )
        if value is not None
    }
    settings = (
        ChaosSettings.short(seed, **changes) if args.short else ChaosSettings(seed=seed, **changes)
    )
    return 0 if run(settings).passed else 1


if __name__ == "__main__":
    sys.exit(main())
