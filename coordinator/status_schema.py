"""The documented JSON schema of ``barnraise status --json`` and a checker for it.

The schema lives next to this module (``status_schema.json``, JSON Schema 2020-12). The checker
implements the keywords that schema uses — type, const, enum, required, properties,
additionalProperties, items, minimum, maximum, minLength and local ``$ref`` — so tests and
consumers can validate a report without a third-party validator; it refuses any other keyword
rather than ignore it, so the schema cannot silently say more than is checked.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("status_schema.json")
_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
    "integer": int,
    "number": (int, float),
}
_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description"}
_CHECKED = {"type", "const", "enum", "required", "properties", "additionalProperties", "items"}
_CHECKED |= {"minimum", "maximum", "minLength", "$ref"}


@cache
def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _is_type(value: object, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[name])


def schema_errors(value: object, schema: dict | None = None) -> list[str]:
    """Every way ``value`` breaks the schema, as 'path: problem' lines; [] if it conforms."""
    root = load_schema() if schema is None else schema
    errors: list[str] = []
    _check(value, root, root, "$", errors)
    return errors


def _check(value: object, schema: dict, root: dict, path: str, errors: list[str]) -> None:
    unknown = set(schema) - _ANNOTATIONS - _CHECKED
    if unknown:
        raise ValueError(f"schema at {path} uses unsupported keywords {sorted(unknown)}")
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            raise ValueError(f"schema at {path}: only local $defs references are supported, not {ref}")
        _check(value, root["$defs"][ref.removeprefix("#/$defs/")], root, path, errors)
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, n) for n in names):
            errors.append(f"{path}: expected {' or '.join(names)}, got {type(value).__name__}")
            return
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        errors.append(f"{path}: shorter than {schema['minLength']} characters")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], root, f"{path}[{i}]", errors)
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required key {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _check(item, props[key], root, f"{path}.{key}", errors)
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, root, f"{path}.{key}", errors)
