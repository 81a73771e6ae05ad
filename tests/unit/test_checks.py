"""The results of ``ddsync check`` as text, as JSON and as an exit status (stream/checks.py)."""

from __future__ import annotations

from stream.checks import CheckResult, exit_code, format_results, results_json
from stream.exitcodes import ExitCode

RESULTS = [
    CheckResult("connector", True, "eu-main"),
    CheckResult("kafka brokers", False, "127.0.0.1:9 refused the connection"),
]


def test_text_aligns_details_and_marks_failures() -> None:
    assert format_results(RESULTS).splitlines() == [
        "connector:     eu-main",
        "kafka brokers: FAILED: 127.0.0.1:9 refused the connection",
    ]
    assert format_results([]) == ""


def test_json_and_exit_status_say_whether_every_check_passed() -> None:
    assert results_json(RESULTS) == {
        "ok": False,
        "checks": [
            {"name": "connector", "ok": True, "detail": "eu-main"},
            {"name": "kafka brokers", "ok": False, "detail": "127.0.0.1:9 refused the connection"},
        ],
    }
    assert exit_code(RESULTS) == ExitCode.FAILED
    assert exit_code(RESULTS[:1]) == ExitCode.OK
    assert results_json(RESULTS[:1])["ok"] is True
