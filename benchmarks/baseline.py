"""B2's baseline: a plain confluent-kafka consumer that reads a topic and decodes every value.

Run as its own process (``python -m benchmarks.baseline``): batches from ``consume()`` (500,
like ddsync's consumer thread), each value decoded with orjson, nothing else, until the
expected number of records came. Prints one JSON line: wall times of the first and last record,
CPU (user + system, getrusage) at both, and counts.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import orjson
from confluent_kafka import Consumer

BATCH_SIZE = 500


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.topic])
    records = decoded = undecodable = 0
    first_at = first_cpu = None
    deadline = time.monotonic() + args.timeout
    while records < args.expected and time.monotonic() < deadline:
        for message in consumer.consume(BATCH_SIZE, timeout=0.1):
            if message.error() is not None:
                continue
            if first_at is None:
                first_at, first_cpu = time.time(), cpu()
            records += 1
            try:
                orjson.loads(message.value() or b"")
                decoded += 1
            except orjson.JSONDecodeError:
                undecodable += 1
    last_at, last_cpu = time.time(), cpu()
    consumer.close()
    print(
        orjson.dumps(
            {
                "records": records,
                "decoded": decoded,
                "undecodable": undecodable,
                "first_at": first_at,
                "last_at": last_at,
                "cpu_at_first": first_cpu,
                "cpu_at_last": last_cpu,
            }
        ).decode()
    )
    return 0 if records >= args.expected else 1


if __name__ == "__main__":
    sys.exit(main())
