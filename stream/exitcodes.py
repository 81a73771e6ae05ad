"""Exit statuses of every ddsync command: one convention (README, "Exit codes").

* ``OK`` (0): the command did what it was asked.
* ``FAILED`` (1): it ran and the operation failed: a check failed, a replay stopped on an error,
  DotDigital refused the request (a duplicate name, a permanent error).
* ``USAGE`` (2): fix the command line or the configuration: a bad flag (argparse's own status),
  a bad configuration file or setting, a port that cannot be opened.
* ``UNAVAILABLE`` (3): a dependency could not be reached or refused us: Kafka or DotDigital
  unreachable (after the command's retries), credentials rejected; for ``run``, a shutdown cut
  at ``batching.shutdown_timeout_seconds`` because the broker did not take the final commit or
  the group leave (:mod:`stream.pipeline.shutdown`).
* ``128 + N`` (:func:`interrupted`): stopped by signal N (130 for SIGINT, 143 for SIGTERM), as
  a shell reports it, after whatever clean-up the command promises.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    UNAVAILABLE = 3


def interrupted(signum: int) -> int:
    """The status of a command that a signal stopped: ``128 + signum``."""
    return 128 + signum
