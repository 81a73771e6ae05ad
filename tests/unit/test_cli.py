"""The command line's own options: --version, --log-level and --log-format (stream/cli/main.py)."""

from __future__ import annotations

import pytest

from stream import __version__
from stream.cli import sandbox as sandbox_command
from stream.cli.main import build_parser, logging_choice


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"ddsync {__version__}\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "DEBUG", "--log-format", "json", "run", "--config", "x"],
        ["run", "--config", "x", "--log-level", "DEBUG", "--log-format", "json"],
        ["--log-format", "json", "run", "--log-level", "debug", "--config", "x"],
        ["address-books", "list", "--config", "x", "--log-level", "DEBUG", "--log-format", "JSON"],
        ["--log-level", "DEBUG", "replay", "--config", "x", "--log-format", "json"],
        ["check", "--config", "x", "--log-level", "DEBUG", "--log-format", "json"],
        ["sandbox", "--log-level", "DEBUG", "--log-format", "json"],
        ["demo", "--config", "x", "--log-level", "DEBUG", "--log-format", "json"],
    ],
)
def test_logging_flags_work_before_and_after_any_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert logging_choice(args, {}) == ("DEBUG", "json")


def test_a_subcommand_without_the_flag_keeps_the_value_given_before_it() -> None:
    args = build_parser().parse_args(["--log-level", "WARNING", "check", "--config", "x"])
    assert logging_choice(args, {}) == ("WARNING", "text")


def test_the_environment_applies_when_no_flag_is_given_and_the_flag_wins() -> None:
    parser = build_parser()
    env = {"DDSYNC_LOG_LEVEL": "error", "DDSYNC_LOG_FORMAT": "json"}
    assert logging_choice(parser.parse_args(["run", "--config", "x"]), env) == ("ERROR", "json")
    flagged = parser.parse_args(["run", "--config", "x", "--log-level", "INFO"])
    assert logging_choice(flagged, env) == ("INFO", "json")
    assert logging_choice(parser.parse_args(["run", "--config", "x"]), {}) == ("INFO", "text")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DDSYNC_LOG_LEVEL": "loud"}, "DDSYNC_LOG_LEVEL must be one of"),
        ({"DDSYNC_LOG_FORMAT": "xml"}, "DDSYNC_LOG_FORMAT must be one of"),
    ],
)
def test_a_bad_environment_value_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        logging_choice(build_parser().parse_args(["run", "--config", "x"]), env)


def test_a_bad_flag_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["run", "--config", "x", "--log-format", "xml"])
    assert exit_.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_the_standalone_sandbox_takes_the_logging_options_too() -> None:
    args = sandbox_command.build_parser().parse_args(["--log-format", "json", "--port", "0"])
    assert logging_choice(args, {"DDSYNC_LOG_LEVEL": "DEBUG"}) == ("DEBUG", "json")
