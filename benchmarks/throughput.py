"""End-to-end throughput of ddsync: now benchmark B2 of ``python -m benchmarks`` (``make bench``).

Kept so that the old command still works; it runs B2 alone and takes the same options:

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m benchmarks.throughput --records 100000
"""

from __future__ import annotations

import sys

from benchmarks.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main(["--only", "B2", *sys.argv[1:]]))
