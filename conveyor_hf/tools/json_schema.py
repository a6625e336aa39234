"""Checking one argument against its JSON schema, with errors that say what to write instead.

Built on the ``jsonschema`` package (Draft 2020-12: types, ``enum``, bounds, lengths,
``items``, ``pattern`` ...). :func:`compile_schema` checks a schema once and keeps its
validator; :func:`check_value` checks a value; :func:`describe_schema_error` turns a
``jsonschema`` error into one sentence for the model (the value, and the fix).

    check_value("days", 3.0, {"type": "integer"})     # (3, None): an integral float is an integer
    check_value("days", "3", {"type": "integer"})[1]  # "argument 'days' must be an integer, got
                                                      # \"3\" (string); write it without quotes, ..."
"""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator as SchemaValidator

from conveyor_hf.text import shorten

__all__ = ["SchemaValidator", "check_value", "compile_schema", "describe_schema_error"]

_JSON_TYPES: dict[str, str] = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
    "array": "an array", "object": "an object", "null": "null",
}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _standard(schema: Any) -> Any:
    """``schema`` as standard JSON Schema: transformers' ``"nullable": true`` (what
    ``get_json_schema`` writes for ``Optional[...]``) becomes a ``"null"`` type."""
    if isinstance(schema, list):
        return [_standard(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _standard(value) for key, value in schema.items() if key != "nullable"}
    if schema.get("nullable") is True and "type" in out:
        types = [out["type"]] if isinstance(out["type"], str) else list(out["type"])
        out["type"] = types if "null" in types else types + ["null"]
    return out


def compile_schema(schema: dict[str, Any]) -> SchemaValidator:
    """A ``jsonschema`` validator for one property (or a whole parameters) schema.

    Draft 2020-12 (so ``3.0`` is an integer); a malformed schema is a ``ValueError``
    naming it, raised here rather than while the model writes a call. Validators are
    shared between equal schemas (they hold no per-check state).
    """
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid JSON schema {_quoted(schema)}: it is not JSON ({exc})") from exc
    return _compiled(key)


@functools.lru_cache(maxsize=1024)
def _compiled(key: str) -> SchemaValidator:
    """Checking a schema costs about a millisecond: do it once per distinct schema."""
    schema = json.loads(key)
    standard = _standard(schema)
    try:
        Draft202012Validator.check_schema(standard)
    except Exception as exc:  # jsonschema's SchemaError, with the offending part
        raise ValueError(f"invalid JSON schema {_quoted(schema)}: {getattr(exc, 'message', exc)}") from exc
    return Draft202012Validator(standard)


def _quoted(schema: Any) -> str:
    """A schema as an error message names it: its start (a schema can be huge)."""
    return shorten(repr(schema), 160)


def _where(name: str, path: Any) -> str:
    return name + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _bounds(schema: dict[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        parts = [f"between {low} and {high}"]
    else:
        parts = [f"at least {low}"] if low is not None else [f"at most {high}"] if high is not None else []
    if schema.get("exclusiveMinimum") is not None:
        parts.append(f"greater than {schema['exclusiveMinimum']}")
    if schema.get("exclusiveMaximum") is not None:
        parts.append(f"less than {schema['exclusiveMaximum']}")
    return " and ".join(parts)


def describe_schema_error(name: str, error: ValidationError) -> str:
    """One sentence for a ``jsonschema`` error in argument ``name``: the value and the fix."""
    where = _where(name, error.absolute_path)
    value, schema, keyword = error.instance, error.schema, error.validator
    shown = json.dumps(value, ensure_ascii=False, default=repr)
    if keyword == "type":
        types = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
        expected = " or ".join(_JSON_TYPES.get(t, t) for t in types)
        hint = ""
        if not error.absolute_path and isinstance(value, str) and any(
                t in ("integer", "number", "boolean") for t in types):
            hint = f"; write it without quotes, e.g. \"{name}\": {value.strip() or 1}"
        elif not error.absolute_path and "string" in types:
            hint = f"; write it in double quotes, e.g. \"{name}\": \"{value}\""
        return f"argument {where!r} must be {expected}, got {shown} ({_json_kind(value)}){hint}"
    if keyword == "enum":
        options = ", ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
        return f"argument {where!r} is {shown}; it must be one of {options}"
    if keyword == "const":
        return f"argument {where!r} is {shown}; it must be {json.dumps(schema['const'], ensure_ascii=False)}"
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"argument {where!r} is {shown}; it must be {_bounds(schema)}"
    if keyword == "minLength":
        return f"argument {where!r} ({value!r}) is too short; give at least {schema['minLength']} characters"
    if keyword == "maxLength":
        return f"argument {where!r} is {len(value)} characters long; give at most {schema['maxLength']}"
    if keyword == "minItems":
        return f"argument {where!r} has {len(value)} items; give at least {schema['minItems']}"
    if keyword == "maxItems":
        return f"argument {where!r} has {len(value)} items; give at most {schema['maxItems']}"
    if keyword == "required":
        return f"argument {where!r} ({shown}) {error.message}; add it"
    return f"argument {where!r}: {error.message}"


def _pick(errors: list[ValidationError]) -> ValidationError:
    """The error to report: the shallowest, type errors before the others."""
    return min(errors, key=lambda e: (len(e.absolute_path), e.validator != "type"))


def check_value(
    name: str, value: Any, schema: dict[str, Any], validator: SchemaValidator | None = None
) -> tuple[Any, str | None]:
    """Check ``value`` of argument ``name`` against its property ``schema`` (``jsonschema``).

    Returns ``(value, None)`` (an integral float such as ``3.0`` becomes ``3`` for an
    ``integer``) or ``(value, error sentence)``. ``validator``: ``compile_schema(schema)``,
    when the caller keeps one.
    """
    validator = validator if validator is not None else compile_schema(schema)
    errors = list(validator.iter_errors(value))
    if errors:
        return value, describe_schema_error(name, _pick(errors))
    wanted = schema.get("type")
    types = [wanted] if isinstance(wanted, str) else list(wanted or [])
    if isinstance(value, float) and "integer" in types and "number" not in types and value.is_integer():
        value = int(value)
    return value, None
