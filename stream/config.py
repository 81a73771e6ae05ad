"""The configuration file: one TOML file, overridable by environment variables.

Contract:

* Every setting has a dotted name (``kafka.group_id``, ``connectors.eu-main.username``) and an
  error about it names it, so an operator can find the line to fix.
* ``DDSYNC__SECTION__KEY=value`` in the environment overrides ``[section] key`` (double
  underscores separate levels; values are parsed as TOML when they parse, else taken as strings).
* Secrets never come from the file: a connector names ``password_env`` or ``password_file``
  (as Kubernetes mounts them). They are held in :class:`Secret`, whose ``repr``/``str`` hide them.
* librdkafka settings under ``[kafka.consumer]`` and ``[kafka.producer]`` pass through unchanged;
  their secrets (``sasl.password``, ``ssl.key.password``, ...) come from ``[kafka.secrets]``,
  each ``{ env = "VAR" }`` or ``{ file = "/path" }``, and are refused in the other two tables.
* What the settings are (sections, keys, types, defaults, constraints on one value) is stated
  once, by the dataclasses of :mod:`stream.settings`; this module is the loader only. A section's
  known keys are its dataclass's fields, a missing key takes the field's default, and a key
  without one is required. What cannot be read from a field's declaration is here: the secrets,
  a connector's name and password, the librdkafka tables, and the checks that relate settings.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from stream.kafka.client_config import DEFAULT_MAX_POLL_INTERVAL_MS, refused_setting
from stream.settings import (
    REVOKE_DRAIN_SECONDS,
    SHUTDOWN_COMMIT_SECONDS,
    SHUTDOWN_DRAIN_SECONDS,
    ConfigError,
    ConnectorSettings,
    Constraint,
    Secret,
    Settings,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "ENV_PREFIX",
    "RELATIONS",
    "apply_env_overrides",
    "connector_keys",
    "load_settings",
    "parse_connector",
    "parse_settings",
]

ENV_PREFIX = "DDSYNC__"
SECRET_SUFFIXES = ("password", "secret", "jaas.config")
# A connector's password comes from one of these keys; its ``password`` field has no key.
PASSWORD_KEYS = ("password_env", "password_file")

D = TypeVar("D", bound="DataclassInstance")
# Reads a field whose key is not spelt or typed as the field (or that has no key at all):
# (the section's table, the field's dotted name) -> the field's value.
Reader = Callable[[Mapping[str, Any], str], Any]


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path``, apply environment overrides, and validate everything."""
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    apply_env_overrides(raw, environ)
    return parse_settings(raw, environ)


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = raw
        for part in path[:-1]:
            child = node.setdefault(_existing_key(node, part), {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key} overrides {part}, which is not a section")
            node = child
        node[_existing_key(node, path[-1])] = _parse_env_value(value)


def _existing_key(node: Mapping[str, Any], lowered: str) -> str:
    """The file's own spelling of a name, when it has one: environment variable names are
    upper case by convention, while a connector may be named ``EU_Main`` in the file."""
    return next((k for k in node if k.lower() == lowered), lowered)


def _parse_env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def parse_settings(raw: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Validate a parsed file (overrides applied) into :class:`Settings`; ``environ`` holds the
    secrets. The first error found is raised: the sections are read in the order of the fields
    of :class:`Settings`, each followed by the checks of :data:`RELATIONS` it completes, and the
    connectors last (they need the secrets)."""
    known = [f.name for f in dataclasses.fields(Settings)]
    for section in raw:
        if section not in known:
            raise ConfigError(f"unknown section [{section}]; known: {', '.join(sorted(known))}")
    readers: Mapping[str, Mapping[str, Reader]] = {
        "kafka": {
            "consumer": _librdkafka,
            "producer": _librdkafka,
            "secrets": partial(_secrets, environ=environ),
        }
    }
    sections: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(Settings).items():
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            continue  # the connectors, a table of tables
        # As the hand-written loader did: [kafka] reports a wrong value before an unknown key
        # (a misspelt bootstrap_servers reads "kafka.bootstrap_servers is required"), the other
        # sections an unknown key first. One rule for all would change some files' first error.
        keys_last = name == "kafka"
        sections[name] = _read(
            hint, _section(raw, name), name, readers.get(name), keys_last=keys_last
        )
        if name in RELATIONS:
            # The sections not read yet are their defaults here; no check of this section
            # reads them. (kafka, the one section without a default, is read first.)
            read_so_far = Settings(connectors={}, **sections)
            for check in RELATIONS[name]:
                check(read_so_far)
    settings = Settings(connectors=_connectors(raw, environ), **sections)
    _shadow_needs_outcomes(settings)
    return settings


def _dead_letter_topic_is_not_a_source(settings: Settings) -> None:
    kafka = settings.kafka
    if kafka.dead_letter_topic in kafka.topics:
        raise ConfigError("kafka.dead_letter_topic must not be one of kafka.topics")
    if kafka.publish_outcomes and kafka.outcomes_topic in (*kafka.topics, kafka.dead_letter_topic):
        raise ConfigError(
            "kafka.outcomes_topic must be neither one of kafka.topics nor kafka.dead_letter_topic"
        )


def _shadow_needs_outcomes(settings: Settings) -> None:
    shadows = [c.name for c in settings.connectors.values() if c.mode == "shadow"]
    if shadows and not settings.kafka.publish_outcomes:
        raise ConfigError(
            f"connectors.{shadows[0]}.mode is shadow, whose plans go to the outcomes topic: "
            "set kafka.publish_outcomes = true"
        )


def _shutdown_fits_its_bound(settings: Settings) -> None:
    batching = settings.batching
    shutdown_needs = (
        batching.shutdown_flush_seconds + SHUTDOWN_DRAIN_SECONDS + SHUTDOWN_COMMIT_SECONDS
    )
    if shutdown_needs > batching.shutdown_timeout_seconds:
        raise ConfigError(
            f"batching.shutdown_flush_seconds + {SHUTDOWN_DRAIN_SECONDS:g} s for dead-letter "
            f"acknowledgements + {SHUTDOWN_COMMIT_SECONDS:g} s for the final commit "
            f"({shutdown_needs:g} s) must fit in batching.shutdown_timeout_seconds "
            f"({batching.shutdown_timeout_seconds:g} s), the bound on a shutdown"
        )


def _revoke_ends_within_the_poll_interval(settings: Settings) -> None:
    poll_interval = _milliseconds(
        settings.kafka.consumer.get("max.poll.interval.ms", DEFAULT_MAX_POLL_INTERVAL_MS),
        'kafka.consumer."max.poll.interval.ms"',
    )
    revoke_bound = settings.batching.revoke_bound_seconds
    if revoke_bound >= poll_interval / 1000:
        raise ConfigError(
            f"batching.revoke_flush_seconds + batching.revoke_job_seconds + "
            f"{REVOKE_DRAIN_SECONDS:g} s ({revoke_bound:g} s) must stay below kafka.consumer "
            f"max.poll.interval.ms ({poll_interval / 1000:g} s), or a revoke would take the "
            "member out of its group"
        )


def _breaker_can_open(settings: Settings) -> None:
    dead_letter = settings.dead_letter
    if dead_letter.breaker_min_records > dead_letter.breaker_window:
        raise ConfigError(
            "dead_letter.breaker_min_records must not exceed dead_letter.breaker_window "
            "(the breaker could never open)"
        )


def _liveness_outlasts_every_wait(settings: Settings) -> None:
    liveness = settings.metrics.liveness_timeout_seconds
    revoke_bound = settings.batching.revoke_bound_seconds
    if liveness <= revoke_bound:
        raise ConfigError(
            f"metrics.liveness_timeout_seconds must exceed a revoke's bound ({revoke_bound:g} s: "
            "batching.revoke_flush_seconds + batching.revoke_job_seconds + "
            f"{REVOKE_DRAIN_SECONDS:g} s); the consumer thread waits that long inside a revoke "
            "and liveness would fail meanwhile"
        )
    shutdown_bound = settings.batching.shutdown_timeout_seconds
    if liveness <= shutdown_bound:
        raise ConfigError(
            "metrics.liveness_timeout_seconds must exceed batching.shutdown_timeout_seconds "
            f"({shutdown_bound:g} s); the event loop does not tick "
            "during a shutdown and liveness would fail meanwhile"
        )


# The checks no single setting can make, each run once the last section it relates is read:
# a file's first error is then the first in the order of its sections.
RELATIONS: Mapping[str, tuple[Callable[[Settings], None], ...]] = {
    "kafka": (_dead_letter_topic_is_not_a_source,),
    "batching": (_shutdown_fits_its_bound, _revoke_ends_within_the_poll_interval),
    "dead_letter": (_breaker_can_open,),
    "metrics": (_liveness_outlasts_every_wait,),
}


def _connectors(raw: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, ConnectorSettings]:
    connectors = _section(raw, "connectors")
    if not connectors:
        raise ConfigError("no connector configured: add a [connectors.NAME] section")
    return {
        name: parse_connector(name, _section(connectors, name, f"connectors.{name}"), environ)
        for name in connectors
    }


def connector_keys() -> set[str]:
    """The keys of a ``[connectors.NAME]`` table."""
    fields = {f.name for f in dataclasses.fields(ConnectorSettings)}
    return fields - {"name", "password"} | set(PASSWORD_KEYS)


def parse_connector(
    name: str, raw: Mapping[str, Any], environ: Mapping[str, str]
) -> ConnectorSettings:
    """``[connectors.<name>]``, its password read from ``environ`` or the file it names."""
    where = f"connectors.{name}"
    if "password" in raw:
        raise ConfigError(
            f"{where}.password: secrets are not read from the file; "
            "set password_env (an environment variable) or password_file"
        )
    readers: Mapping[str, Reader] = {
        "name": lambda _table, _name: name,
        "password": lambda table, _name: _password(table, where, environ),
    }
    return _read(ConnectorSettings, raw, where, readers, connector_keys())


def _read(
    cls: type[D],
    table: Mapping[str, Any],
    where: str,
    readers: Mapping[str, Reader] | None = None,
    keys: Collection[str] | None = None,
    *,
    keys_last: bool = False,
) -> D:
    """``[where]`` as a ``cls``: its keys are ``keys`` (default: the fields' names), each field
    is read by its reader, else from its key as its type says, else takes its default. Unknown
    keys are refused before the values are read, or after them with ``keys_last``."""
    readers = readers or {}
    allowed = set(keys) if keys is not None else _field_names(cls)
    if not keys_last:
        _check_keys(table, where, allowed)
    hints = typing.get_type_hints(cls, include_extras=True)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = f"{where}.{f.name}"
        if f.name in readers:
            values[f.name] = readers[f.name](table, name)
        elif f.name in table:
            values[f.name] = _value(table[f.name], name, hints[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{name} is required")
    if keys_last:
        _check_keys(table, where, allowed)
    return cls(**values)


def _field_names(cls: type[DataclassInstance]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _value(value: Any, name: str, hint: Any) -> Any:
    """``value`` as the type ``hint`` says, after its constraints (``Annotated`` metadata)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        # X | None: None is only ever the default (TOML has no null), so a value is an X.
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
    constraints: tuple[Constraint, ...] = ()
    if typing.get_origin(hint) is typing.Annotated:
        hint, *metadata = typing.get_args(hint)
        constraints = tuple(metadata)
    value = _typed(value, name, typing.get_origin(hint) or hint)
    for constraint in constraints:
        try:
            value = constraint(value)
        except ValueError as exc:
            raise ConfigError(f"{name} {exc}") from None
    return value


def _typed(value: Any, name: str, kind: type) -> Any:
    # A TOML list is a tuple in the settings: frozen dataclasses hold nothing mutable.
    expected = list if kind is tuple else kind
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{name} must be {_kind_name(expected)}, got {value!r}")
    # TOML has nan and inf. nan passes every comparison-based check (nan <= 0 is false), and no
    # duration, ratio or timeout of ddsync means anything infinite.
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return tuple(typing.cast(list[Any], value)) if kind is tuple else value


def _librdkafka(kafka: Mapping[str, Any], name: str) -> dict[str, Any]:
    table = name.rpartition(".")[2]
    settings = dict(_section(kafka, table, name))
    refused = refused_setting(table, settings)
    if refused is not None:
        raise ConfigError(refused)
    for key in settings:
        if key.endswith(SECRET_SUFFIXES):
            raise ConfigError(
                f'{name}."{key}": secrets are not read from the file; set it in '
                f'[kafka.secrets] as "{key}" = {{ env = "VAR" }} or {{ file = "/path" }}'
            )
    return settings


def _secrets(kafka: Mapping[str, Any], name: str, environ: Mapping[str, str]) -> dict[str, Secret]:
    specs = _section(kafka, name.rpartition(".")[2], name)
    return {key: _secret(spec, f'{name}."{key}"', environ) for key, spec in specs.items()}


def _secret(spec: Any, where: str, environ: Mapping[str, str]) -> Secret:
    if not isinstance(spec, Mapping) or set(spec) not in ({"env"}, {"file"}):
        raise ConfigError(f'{where} must be {{ env = "VAR" }} or {{ file = "/path" }}')
    if "env" in spec:
        return _env_secret(str(spec["env"]), where, environ)
    return _file_secret(str(spec["file"]), where)


def _password(raw: Mapping[str, Any], where: str, environ: Mapping[str, str]) -> Secret:
    env_name, file_name = (
        _value(raw[key], f"{where}.{key}", str) if key in raw else None for key in PASSWORD_KEYS
    )
    if env_name and file_name:
        raise ConfigError(f"{where}: set password_env or password_file, not both")
    if env_name:
        return _env_secret(env_name, f"{where}.password_env", environ)
    if file_name:
        return _file_secret(file_name, f"{where}.password_file")
    raise ConfigError(f"{where}: set password_env or password_file")


def _env_secret(variable: str, where: str, environ: Mapping[str, str]) -> Secret:
    value = environ.get(variable)
    if not value:
        raise ConfigError(f"{where}: environment variable {variable} is not set")
    return Secret(value)


def _file_secret(path: str, where: str) -> Secret:
    # Stripped: files written by editors and Kubernetes secrets often end with a newline.
    try:
        return Secret(Path(path).read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None


def _section(raw: Mapping[str, Any], key: str, name: str | None = None) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name or key} must be a table ([{name or key}])")
    return value


def _check_keys(raw: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"unknown setting {where}.{key}; known: {', '.join(sorted(allowed))}")


def _milliseconds(value: Any, name: str) -> int:
    """A librdkafka duration, which may be written as a number or a string of digits."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{name} must be a whole number of milliseconds, got {value!r}")
    try:
        return int(str(value))
    except ValueError:
        raise ConfigError(f"{name} must be a whole number of milliseconds, got {value!r}") from None


def _kind_name(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
    }.get(kind, kind.__name__)
