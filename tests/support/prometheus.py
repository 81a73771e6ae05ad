"""A real Prometheus server as a process, and its HTTP API, for integration tests.

The server is Debian's ``prometheus`` package (``/usr/bin/prometheus``, ``promtool`` beside it).
A missing binary fails the test with where to get it, never skips it: a suite that silently
stops checking what it claims to check is worse than a red one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import stop_process
from tests.support.waiting import wait_until


def require_binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; fails the test when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: it comes with Debian's `prometheus` package "
            "(apt-get install -y prometheus). This test cannot run without it."
        )
    return path


class PrometheusProcess:
    """``prometheus`` on ``127.0.0.1:port`` scraping ``targets`` as job ``job`` every
    ``interval`` seconds and evaluating ``rule_files`` as often; its data lives in ``workdir``.

    The constructor returns once ``/-/ready`` answers 200 (bounded by ``ready_timeout``), and
    stops the process again when it does not. Register :meth:`stop` for cleanup (a fixture's
    ``finally``, an ``ExitStack``), so the process ends also when a test fails."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        port: int,
        job: str,
        targets: Sequence[str],
        rule_files: Sequence[Path],
        interval: str = "1s",
        ready_timeout: float = 60,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = workdir / "prometheus.log"
        self.config = workdir / "prometheus.yml"
        config = {
            # The timeout must not exceed the interval, and its default (10 s) does.
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [str(path.resolve()) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": list(targets)}],
                }
            ],
        }
        # JSON is YAML: no YAML writer needed for a generated file.
        self.config.write_text(json.dumps(config, indent=2))
        command = [
            binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        self.started = time.monotonic()
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(
                self._ready, ready_timeout, "prometheus did not become ready", process=self.process
            )
        except BaseException as error:
            self.stop()
            raise AssertionError(f"{error}\n{self.output()[-3000:]}") from None
        self.ready_seconds = time.monotonic() - self.started

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:  # not listening yet, or 503 while the TSDB opens
            return False

    def api(self, path: str, **params: str) -> Any:
        """``data`` of ``GET /api/v1/<path>?<params>``; an answer that is not a success fails."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now: ``[{"metric": labels, "value":
        [time, "value as a string"]}, ...]``."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
