"""One reader for jzi's untrusted JSON documents: the bundle manifest and the tile-store index.

A schema is built from small validators (``integer``, ``number``, ``string``, ``obj``, ...); each
checks one value and names it by its dotted path in the document when it is wrong::

    decoder.layers must be an integer in 1..256, got 'x'

``read_json_document`` parses a file, checks its format and version, and applies a schema; every
problem becomes one line of the caller's error type, prefixed with the file's path. Checks that
relate several fields (``n_actions == grid**2``) stay with the module that owns the format.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

Validator = Callable[[Any, str], None]


class SchemaError(ValueError):
    """A field that does not fit its schema; the message names the field."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def integer(lo: int, hi: int) -> Validator:
    def check(v, where):
        if not _is_int(v) or not lo <= v <= hi:
            raise SchemaError(f"{where} must be an integer in {lo}..{hi}, got {_show(v)}")
    return check


def number(lo: float, hi: float, *, exclusive_lo: bool = False) -> Validator:
    """A finite JSON number in [lo, hi] (or (lo, hi] with ``exclusive_lo``)."""
    def check(v, where):
        ok = (_is_int(v) or isinstance(v, float)) and math.isfinite(v) and (v > lo if exclusive_lo else v >= lo) and v <= hi
        if not ok:
            bracket = "(" if exclusive_lo else "["
            raise SchemaError(f"{where} must be a finite number in {bracket}{lo:g}, {hi:g}], got {_show(v)}")
    return check


def string(choices=None, *, hex_len: int | None = None) -> Validator:
    def check(v, where):
        if not isinstance(v, str) or not v:
            raise SchemaError(f"{where} must be a non-empty string, got {_show(v)}")
        if choices is not None and v not in choices:
            raise SchemaError(f"{where} must be one of {list(choices)}, got {_show(v)}")
        if hex_len is not None and (len(v) != hex_len or any(c not in "0123456789abcdef" for c in v)):
            raise SchemaError(f"{where} must be {hex_len} lowercase hex digits, got {_show(v)}")
    return check


def any_value(v, where) -> None:
    """Anything JSON can hold (informational fields the runtime does not use)."""


def list_of(item: Validator, *, length: int | None = None, max_len: int = 1 << 24) -> Validator:
    def check(v, where):
        if not isinstance(v, list):
            raise SchemaError(f"{where} must be a list, got {_show(v)}")
        if length is not None and len(v) != length:
            raise SchemaError(f"{where} must hold {length} items, got {len(v)}")
        if len(v) > max_len:
            raise SchemaError(f"{where} holds {len(v)} items, more than {max_len}")
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]")
    return check


def one_of(*validators: Validator) -> Validator:
    """The first validator's message when none accepts the value."""
    def check(v, where):
        errors = []
        for val in validators:
            try:
                return val(v, where)
            except SchemaError as e:
                errors.append(e)
        raise errors[0]
    return check


def mapping(value: Validator, *, keys: Validator | None = None) -> Validator:
    """An object with any keys (checked by ``keys`` when given), every value checked by ``value``."""
    def check(v, where):
        if not isinstance(v, dict):
            raise SchemaError(f"{where} must be an object, got {_show(v)}")
        for k, x in v.items():
            if keys is not None:
                keys(k, f"{where} key")
            value(x, f"{where}.{k}")
    return check


def obj(required: dict[str, Validator], optional: dict[str, Validator] | None = None) -> Validator:
    """An object with these fields; unknown fields are allowed (newer writers may add information)."""
    optional = optional or {}

    def check(v, where):
        if not isinstance(v, dict):
            raise SchemaError(f"{where} must be an object, got {_show(v)}")
        for k, val in required.items():
            if k not in v:
                raise SchemaError(f"{_join(where, k)} is missing")
            val(v[k], _join(where, k))
        for k, val in optional.items():
            if k in v:
                val(v[k], _join(where, k))
    return check


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def validate(doc, schema: Validator) -> None:
    """Raise SchemaError naming the first field of ``doc`` that does not fit ``schema``."""
    schema(doc, "")


def read_json_document(path: Path, fmt: str, schemas: dict[int, Validator], what: str, error: type[Exception],
                       too_old: str = "") -> dict:
    """An untrusted jzi JSON file: valid JSON, its ``format``, a ``format_version`` that ``schemas`` has a
    schema for, and that schema; any problem is one ``error`` line starting with the file's path.
    ``too_old`` is appended when the version is older than every readable one (how to upgrade)."""
    try:
        doc = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise error(f"{path}: not valid JSON ({str(e)[:120]})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{path}: not a {what}")
    version = doc.get("format_version")
    if not _is_int(version) or version not in schemas:
        readable = ", ".join(map(str, sorted(schemas)))
        old = too_old if _is_int(version) and version < min(schemas) else ""
        raise error(f"{path}: format_version {_show(version)}, this jzi reads {readable}{old}")
    try:
        validate(doc, schemas[version])
    except SchemaError as e:
        raise error(f"{path}: {e}") from None
    return doc


REGION = obj({"center_lat": number(-90, 90), "center_lon": number(-180, 180),
              "size_m": number(0, 40_075_017, exclusive_lo=True),  # more than 0, at most the equator
              "grid": integer(2, 16), "steps": integer(1, 12), "view_px": integer(1, 1 << 14)})
