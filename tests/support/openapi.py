"""Check requests and responses against DotDigital's own published OpenAPI specifications.

The specs live in ``../shared/reference/dotdigital-openapi/`` (override with the environment
variable ``DDSYNC_OPENAPI_DIR``). Schemas are checked with ``openapi-schema-validator`` (the
jsonschema-based validator openapi-core uses): OAS 3.0 documents with its OAS 3.0 dialect
(``nullable``, int32/int64 formats), OAS 3.1 documents with the 3.1 dialect; requests with the
write variant (``readOnly`` properties must not be sent), responses with the read variant.

API::

    validate_request("PUT", "/contacts/v3/import", body)          # raises OpenAPIViolation
    validate_response("GET", "/v2/address-books/5", 200, body)    # True if a schema was checked
    validate_error_body("/v2/address-books/5", body)              # v2 "message" / v3 errorResponse
    validate_exchange(entry)                                      # a sandbox JournalEntry

Which spec: an operation (method + path template) may be described by several documents (the
official per-area specs — v3 contacts, lists, email contacts, accounts — and the whole-v2 NSwag
document). A request must be accepted by every document that describes the operation; a
response by every document that declares a body schema for its status. Where the documents
disagree on the status itself (create address book: 201 in one, 200 in the other; delete 204 vs
200), each status is checked against the documents that declare it, as the brief says to accept
either.

Deliberate leniency (each one a known artefact of the published documents):

* readme.io's "RAW_BODY" wrapper around top-level array bodies (bulk removal) is unwrapped.
* Headers are not validated (the ``x-ddg-integration-token`` pattern is written with ``/.../``
  delimiters and cannot match anything); path and query parameters are.
* A status no document declares for the operation (most v2 error statuses, 429) is not a
  violation: ``validate_response`` returns ``False`` and the caller can check the error body
  with :func:`validate_error_body`, whose v2 shape (``{"message": str}``) comes from the brief,
  not from a spec. A declared status without a body schema (v3 401) also returns ``False``.
* Unknown ``format`` values (NSwag's ``guid``) are ignored, as JSON Schema says.
* A 204 response without a body is not checked against the JSON content some documents
  declare for it (``{}`` for delete list): 204 means no content.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import referencing
import referencing.jsonschema
from openapi_schema_validator import (
    OAS30ReadValidator,
    OAS30WriteValidator,
    OAS31Validator,
)

__all__ = [
    "SPEC_FILES",
    "OpenAPIViolation",
    "Operation",
    "find_operations",
    "spec_dir",
    "validate_error_body",
    "validate_exchange",
    "validate_request",
    "validate_response",
]

# Most specific first: the whole-v2 NSwag document is the fallback.
SPEC_FILES: tuple[str, ...] = (
    "dotdigital-contacts-service.json",
    "Dotdigital-dotdigital-lists-address-books-2.0.0-resolved.yaml",
    "Dotdigital-dotdigital-email-contacts-2.0.0-resolved.yaml",
    "accounts-and-utilities.yaml",
    "dotdigital-v2-api-swagger.json",
)

_METHODS = ("get", "put", "post", "delete", "patch")


class OpenAPIViolation(AssertionError):
    """A request or response that no published DotDigital document accepts."""


def spec_dir() -> Path:
    """Where the specs are: ``$DDSYNC_OPENAPI_DIR``, else ``../shared/reference/...``."""
    override = os.environ.get("DDSYNC_OPENAPI_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "shared/reference/dotdigital-openapi"


@dataclass(frozen=True)
class _Spec:
    name: str
    document: dict[str, Any] = field(repr=False)
    uri: str = field(repr=False)
    registry: referencing.Registry[Any] = field(repr=False)
    v31: bool = False


@dataclass(frozen=True)
class Operation:
    """One operation of one document, matched against a concrete path."""

    spec: _Spec
    method: str
    template: str
    definition: dict[str, Any] = field(repr=False)
    path_params: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.template} ({self.spec.name})"


@functools.cache
def _specs() -> tuple[_Spec, ...]:
    directory = spec_dir()
    specs = []
    for name in SPEC_FILES:
        path = directory / name
        if not path.exists():
            raise FileNotFoundError(
                f"DotDigital OpenAPI spec {path} is missing; set DDSYNC_OPENAPI_DIR"
            )
        document = json.loads(path.read_text(encoding="utf-8"))  # the .yaml files are JSON
        v31 = str(document.get("openapi", "")).startswith("3.1")
        dialect = referencing.jsonschema.DRAFT202012 if v31 else referencing.jsonschema.DRAFT4
        uri = f"urn:dotdigital:{name}"
        resource = dialect.create_resource(document)
        registry: referencing.Registry[Any] = referencing.Registry().with_resource(uri, resource)
        specs.append(_Spec(name, document, uri, registry, v31))
    return tuple(specs)


@functools.cache
def _templates(spec_name: str) -> tuple[tuple[str, re.Pattern[str], int], ...]:
    spec = next(s for s in _specs() if s.name == spec_name)
    compiled = []
    for template in spec.document.get("paths", {}):
        pattern = re.sub(r"\\\{([^}]+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        literal_segments = sum(1 for part in template.split("/") if part and "{" not in part)
        compiled.append((template, re.compile(f"^{pattern}/?$"), literal_segments))
    return tuple(compiled)


def find_operations(method: str, path: str) -> list[Operation]:
    """Every document's operation for ``method path``, most specific template first."""
    found: list[Operation] = []
    for spec in _specs():
        matches = []
        for template, pattern, literals in _templates(spec.name):
            match = pattern.match(path)
            if match is None:
                continue
            operation = spec.document["paths"][template].get(method.lower())
            if operation is not None:
                matches.append((literals, template, operation, match.groupdict()))
        if not matches:
            continue
        # A fixed segment beats a parameter: /address-books/private over /{id}. Between
        # equally specific templates (/v2/contacts/{id} and /{email}) the one whose path
        # parameters fit their schemas wins.
        best = max(m[0] for m in matches)
        candidates = [
            Operation(spec, method.lower(), template, operation, params)
            for literals, template, operation, params in matches
            if literals == best
        ]
        found.append(next((c for c in candidates if not _check_parameters(c, {})), candidates[0]))
    return found


def _check(spec: _Spec, schema: Mapping[str, Any], instance: Any, *, write: bool) -> str | None:
    """Validate; the first error message, or ``None`` when valid."""
    rooted = _absolute_refs(_unwrap_raw_body(schema), spec.uri)
    validator: Any
    if spec.v31:
        validator = OAS31Validator(rooted, registry=spec.registry)
    else:
        cls = OAS30WriteValidator if write else OAS30ReadValidator
        validator = cls(rooted, registry=spec.registry)
    error = next(iter(validator.iter_errors(instance)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message}"


def _absolute_refs(schema: Any, uri: str) -> Any:
    # Inline schemas say "#/components/..."; taken out of their document they need its URI
    # (refs inside the registered document resolve against it by themselves).
    if isinstance(schema, dict):
        return {
            key: (
                f"{uri}{value}"
                if key == "$ref" and isinstance(value, str) and value.startswith("#")
                else _absolute_refs(value, uri)
            )
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_absolute_refs(item, uri) for item in schema]
    return schema


def _unwrap_raw_body(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    properties = schema.get("properties")
    if (
        schema.get("type") == "object"
        and isinstance(properties, dict)
        and set(properties) == {"RAW_BODY"}
    ):
        inner: Mapping[str, Any] = properties["RAW_BODY"]
        return inner
    return schema


def _json_schema(content: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not content:
        return None
    media = content.get("application/json") or next(
        (v for k, v in content.items() if "json" in k), None
    )
    if media is None:
        return None
    schema: Mapping[str, Any] | None = media.get("schema")
    return schema


def _coerce(value: str, schema: Mapping[str, Any], style: str | None = None) -> Any:
    kind = schema.get("type")
    if kind == "array":
        # An unexploded array parameter is one value with a delimiter: "|" for
        # pipeDelimited (getContacts' include and data-fields), "," for the default form.
        delimiter = {"pipeDelimited": "|", "spaceDelimited": " "}.get(style or "", ",")
        return [_coerce(part, schema.get("items", {})) for part in value.split(delimiter)]
    if kind == "integer":
        try:
            return int(value)
        except ValueError:
            return value
    if kind == "boolean":
        return {"true": True, "false": False}.get(value.lower(), value)
    return value


def _check_parameters(operation: Operation, query: Mapping[str, str]) -> list[str]:
    problems = []
    parameters = [*operation.spec.document["paths"][operation.template].get("parameters", [])]
    parameters += operation.definition.get("parameters", [])
    for parameter in parameters:
        if "$ref" in parameter:
            continue
        location, name = parameter.get("in"), parameter.get("name")
        schema = parameter.get("schema", {})
        if location == "path":
            value = operation.path_params.get(name)
        elif location == "query":
            value = query.get(name)
            if value is None:
                if parameter.get("required"):
                    problems.append(f"query parameter {name} is required")
                continue
        else:
            continue  # headers and cookies: see the module docstring
        if value is None:
            continue
        coerced = _coerce(value, schema, parameter.get("style"))
        error = _check(operation.spec, schema, coerced, write=True)
        if error is not None:
            problems.append(f"{location} parameter {name}={value!r}: {error}")
    return problems


def validate_request(
    method: str,
    path: str,
    body: Any = None,
    *,
    query: Mapping[str, str] | None = None,
) -> list[Operation]:
    """Raise :class:`OpenAPIViolation` unless every document describing the operation accepts
    the request (path and query parameters, JSON body).

    ``body`` is the decoded JSON body (``None`` for none). Returns the operations checked.
    """
    operations = find_operations(method, path)
    if not operations:
        raise OpenAPIViolation(f"no DotDigital spec describes {method.upper()} {path}")
    problems = []
    for operation in operations:
        issues = _check_parameters(operation, query or {})
        request_body: dict[str, Any] = operation.definition.get("requestBody") or {}
        schema = _json_schema(request_body.get("content"))
        if schema is not None:
            if body is None:
                if request_body.get("required", False):
                    issues.append("a request body is required")
            else:
                error = _check(operation.spec, schema, body, write=True)
                if error is not None:
                    issues.append(f"body {error}")
        if issues:
            problems.append(f"{operation}: " + "; ".join(issues))
    if problems:
        raise OpenAPIViolation(
            f"{method.upper()} {path} violates DotDigital's spec:\n  " + "\n  ".join(problems)
        )
    return operations


def validate_response(method: str, path: str, status: int, body: Any) -> bool:
    """Check a response against every document that declares a body schema for ``status``.

    Returns ``True`` when at least one schema was checked (and all accepted), ``False`` when no
    document declares a body schema for this status (nothing to check); raises
    :class:`OpenAPIViolation` when the operation is unknown or a declaring document rejects
    the body.
    """
    operations = find_operations(method, path)
    if not operations:
        raise OpenAPIViolation(f"no DotDigital spec describes {method.upper()} {path}")
    if status == 204 and body is None:
        return False
    problems = []
    checked = False
    for operation in operations:
        declared = operation.definition.get("responses", {}).get(str(status))
        schema = _json_schema(declared.get("content")) if declared else None
        if schema is None:
            continue
        checked = True
        error = _check(operation.spec, schema, body, write=False)
        if error is not None:
            problems.append(f"{operation}: {error}")
    if problems:
        raise OpenAPIViolation(
            f"{method.upper()} {path} -> {status} violates DotDigital's spec:\n  "
            + "\n  ".join(problems)
        )
    return checked


def validate_error_body(path: str, body: Any, status: int | None = None) -> None:
    """An error body in DotDigital's dialect for ``path``: v3 ``errorResponse`` (from the
    contacts spec) or v2 ``{"message": "<text> <TOKEN>"}`` (from the brief).

    On v3 paths the v2 shape is also accepted where the answer comes from DotDigital's shared
    front end rather than the contacts service: 401 (the spec declares no body), 403 (wrong
    region), 500, and the flat scheme's ``ERROR_APIUSAGE_EXCEEDED``.
    """
    v2_shaped = (
        isinstance(body, dict) and isinstance(body.get("message"), str) and bool(body["message"])
    )
    if path.startswith("/contacts/v3"):
        front_end = status in (401, 403, 500) or (
            v2_shaped and body["message"].endswith("ERROR_APIUSAGE_EXCEEDED")
        )
        if front_end and v2_shaped:
            return
        spec = _specs()[0]
        error = _check(spec, {"$ref": "#/components/schemas/errorResponse"}, body, write=False)
        if error is not None:
            raise OpenAPIViolation(f"v3 error body {body!r}: {error}")
        return
    if not v2_shaped:
        raise OpenAPIViolation(f'v2 error body must be {{"message": str}}, got {body!r}')


def validate_exchange(entry: Any) -> bool:
    """Validate one sandbox journal entry (request, then response when there was one).

    Returns whether the response body was checked against a schema (see
    :func:`validate_response`); error statuses are checked with :func:`validate_error_body`.
    """
    validate_request(entry.method, entry.path, entry.body, query=entry.query)
    if entry.status is None:
        return False
    checked = validate_response(entry.method, entry.path, entry.status, entry.response)
    if not checked and entry.status >= 400 and entry.response is not None:
        validate_error_body(entry.path, entry.response, entry.status)
    return checked


def validate_all(entries: Iterable[Any]) -> int:
    """Validate many journal entries; the number whose response body met a schema."""
    return sum(1 for entry in entries if validate_exchange(entry))
