"""Subcommands of the ddsync command line that belong to the pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

from stream.config import load_settings
from stream.exitcodes import ExitCode
from stream.settings import ConfigError, Settings


def load_or_exit(path: Path) -> Settings:
    """The configuration, or one line on stderr naming what is wrong and exit status
    ``ExitCode.USAGE``."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"ddsync: {exc}", file=sys.stderr)
        raise SystemExit(ExitCode.USAGE) from None
