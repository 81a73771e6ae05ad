"""The settings are stated once, by the dataclasses of ``stream.settings``, and the loader
(``stream.config``) cannot drift from them: a file that says nothing gets exactly the fields'
defaults, every field is a key the loader reads, every other key is refused, and every field
declared positive refuses 0 naming the setting (the other constraints have tests of their own in
test_config.py). ``stream.settings`` is a leaf that reads no file, so the pure core can depend
on it."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from stream.config import RELATIONS, connector_keys, load_settings
from stream.settings import (
    ConfigError,
    ConnectorSettings,
    KafkaSettings,
    Secret,
    Settings,
    connector_mode,
    http_url,
    positive,
)

ROOT = Path(__file__).resolve().parents[2]
USERNAME = "apiuser-1@apiconnector.com"
MINIMAL = f"""
[kafka]
bootstrap_servers = "k:9092"
[connectors.eu_main]
username = "{USERNAME}"
password_env = "EU_PASSWORD"
"""
ENV = {"EU_PASSWORD": "s3cret", "KAFKA_PW": "sasl-pass"}

# Fields read as tables, not as a value of their type: what is written, and what it loads as.
TABLES: dict[str, tuple[str, object]] = {
    "consumer": ('{ "fetch.min.bytes" = 10 }', {"fetch.min.bytes": 10}),
    "producer": ('{ "linger.ms" = 5 }', {"linger.ms": 5}),
    "secrets": (
        '{ "sasl.password" = { env = "KAFKA_PW" } }',
        {"sasl.password": Secret("sasl-pass")},
    ),
}
# A connector's fields without a key: its name is its table's, its password is read through
# password_env or password_file.
NOT_KEYS = {"name", "password"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ddsync.toml"
    path.write_text(text)
    return path


def sections() -> dict[str, type[Any]]:
    """Each ``[section]`` of the file that is one dataclass, by name."""
    hints = typing.get_type_hints(Settings)
    return {
        name: hint
        for name, hint in hints.items()
        if isinstance(hint, type) and dataclasses.is_dataclass(hint)
    }


def table_of(section: str) -> str:
    return "connectors.eu_main" if section == "connectors" else section


def with_setting(section: str, key: str, value: str) -> str:
    """MINIMAL with ``key = value`` in ``[section]`` (a connector's table for "connectors"),
    instead of MINIMAL's own line for ``key`` if it has one."""
    line = f"{key} = {value}"
    if re.search(rf"^{key} = ", MINIMAL, flags=re.M):
        return re.sub(rf"^{key} = .*$", line, MINIMAL, count=1, flags=re.M)
    header = f"[{table_of(section)}]"
    if header in MINIMAL:
        return MINIMAL.replace(header, f"{header}\n{line}", 1)
    return f"{MINIMAL}{header}\n{line}\n"


def toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    raise AssertionError(f"no TOML for {value!r}")


def other_value(hint: Any, default: object) -> object:
    """A valid value of a field's type that is not its default (and breaks no relation)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
    metadata: tuple[object, ...] = ()
    if typing.get_origin(hint) is typing.Annotated:
        hint, *rest = typing.get_args(hint)
        metadata = tuple(rest)
    kind = typing.get_origin(hint) or hint
    if kind is bool:
        return not default
    if kind is int:
        assert default is None or isinstance(default, int)
        return 2 if default is None else default + 1
    if kind is float:
        assert isinstance(default, int | float)
        return round(default * 0.99, 6)
    if kind is str:
        if connector_mode in metadata:
            return "shadow"
        return "https://other.example" if http_url in metadata else f"{default or 'other'}-x"
    if kind is tuple:
        return ("other-topic",)
    raise AssertionError(f"the test knows no value of {hint!r}: add one")


def all_fields() -> list[tuple[str, dataclasses.Field[Any], Any]]:
    """(section, field, type hint with its constraints) of every setting of the file."""
    every: list[tuple[str, type[Any]]] = [*sections().items(), ("connectors", ConnectorSettings)]
    return [
        (section, field, typing.get_type_hints(cls, include_extras=True)[field.name])
        for section, cls in every
        for field in dataclasses.fields(cls)
    ]


def test_a_file_that_says_nothing_gets_exactly_the_dataclass_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), ENV)
    connector = ConnectorSettings(name="eu_main", username=USERNAME, password=Secret("s3cret"))
    assert settings == Settings(
        kafka=KafkaSettings(bootstrap_servers="k:9092"), connectors={"eu_main": connector}
    )


KEYS = [item for item in all_fields() if item[1].name not in NOT_KEYS]


@pytest.mark.parametrize(
    ("section", "field", "hint"), KEYS, ids=[f"{section}.{f.name}" for section, f, _ in KEYS]
)
def test_every_field_is_a_key_the_loader_reads(
    tmp_path: Path, section: str, field: dataclasses.Field[Any], hint: Any
) -> None:
    if field.name in TABLES:
        value, expected = TABLES[field.name]
    else:
        default = None if field.default is dataclasses.MISSING else field.default
        expected = other_value(hint, default)
        value = toml(expected)
    settings = load_settings(write(tmp_path, with_setting(section, field.name, value)), ENV)
    read = settings.connectors["eu_main"] if section == "connectors" else getattr(settings, section)
    assert getattr(read, field.name) == expected


def test_a_required_setting_is_named_when_missing(tmp_path: Path) -> None:
    required = [
        (section, field.name)
        for section, field, _ in all_fields()
        if field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING
        and field.name not in NOT_KEYS
    ]
    assert required == [("kafka", "bootstrap_servers"), ("connectors", "username")]
    for section, key in required:
        text = re.sub(rf"^{key} = .*$", "", MINIMAL, count=1, flags=re.M)
        with pytest.raises(ConfigError, match=rf"^{table_of(section)}\.{key} is required$"):
            load_settings(write(tmp_path, text), ENV)


@pytest.mark.parametrize("section", [*sections(), "connectors"])
def test_an_unknown_key_is_refused_and_the_known_ones_are_the_fields(
    tmp_path: Path, section: str
) -> None:
    cls = sections().get(section, ConnectorSettings)
    known = {field.name for field in dataclasses.fields(cls)}
    if section == "connectors":
        known = known - NOT_KEYS | {"password_env", "password_file"}
        assert connector_keys() == known
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, with_setting(section, "bogus", "1")), ENV)
    assert str(error.value) == (
        f"unknown setting {table_of(section)}.bogus; known: {', '.join(sorted(known))}"
    )


def test_an_unknown_section_is_refused_and_the_known_ones_are_the_fields(tmp_path: Path) -> None:
    known = sorted(field.name for field in dataclasses.fields(Settings))
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, MINIMAL + "[bogus]\n"), ENV)
    assert str(error.value) == f"unknown section [bogus]; known: {', '.join(known)}"
    assert set(RELATIONS) <= set(known)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        (section, field.name)
        for section, field, hint in all_fields()
        if positive in typing.get_args(hint)
        or any(positive in typing.get_args(arg) for arg in typing.get_args(hint))
    ],
)
def test_every_positive_setting_refuses_zero_naming_itself(
    tmp_path: Path, section: str, key: str
) -> None:
    text = with_setting(section, key, "0")
    with pytest.raises(ConfigError, match=rf"^{table_of(section)}\.{key} must be greater than 0"):
        load_settings(write(tmp_path, text), ENV)


def imported_by(module: str) -> set[str]:
    """The ``stream`` modules importing ``module`` loads, in a fresh interpreter."""
    code = (
        f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('stream')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(result.stdout.split())


def test_the_settings_module_is_a_leaf() -> None:
    assert imported_by("stream.settings") == {"stream", "stream.settings"}


@pytest.mark.parametrize("module", ["stream.core.windowing", "stream.core.breaker"])
def test_the_core_does_not_depend_on_the_loader(module: str) -> None:
    assert "stream.config" not in imported_by(module)
