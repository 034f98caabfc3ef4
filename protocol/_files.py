"""Configuration files: TOML in, validated settings out, errors that name the file and the key."""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from typing import Any, TypeVar

import msgspec

from ._errors import ConfigError

T = TypeVar("T")


def convert_settings(data: dict[str, Any], type_: type[T], *, source: str, error: type[Exception] = ConfigError) -> T:
    """``data`` as ``type_``; a wrong key or value raises ``error`` naming ``source`` and the key."""
    try:
        return msgspec.convert(data, type_)
    except (msgspec.ValidationError, ConfigError) as exc:  # ConfigError: a check across fields
        raise error(f"{source}: {exc}") from None


def load_settings(path: str | os.PathLike[str], type_: type[T], *, error: type[Exception] = ConfigError) -> T:
    """Read a TOML file as ``type_``; every error names the file (and the key)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path} is not valid TOML: {exc}") from exc
    return convert_settings(data, type_, source=str(path), error=error)


# --- writing TOML ------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_text(data: dict[str, Any]) -> str:
    """``data`` (plain dicts, lists, strings, numbers, booleans) as a TOML document ``tomllib`` reads back.

    A value of None is left out, as TOML has no null (a setting left out takes its default when read).
    """
    return _table(_without_none(data), ())


def _without_none(value: Any) -> Any:
    """TOML has no null: an unset setting is left out (and takes its default when read)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) and bool(value)


def _is_array_of_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_table(v) for v in value)


def _table(data: dict[str, Any], path: tuple[str, ...]) -> str:
    """A table's ``key = value`` lines, then its sub-tables and arrays of tables under headers of their own."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in data.items() if not (_is_table(v) or _is_array_of_tables(v))]
    text = "".join(line + "\n" for line in lines)
    for k, v in data.items():
        name = (*path, k)
        header = ".".join(_key(part) for part in name)
        if _is_table(v):
            text += f"\n[{header}]\n" + _table(v, name)
        elif _is_array_of_tables(v):
            for item in v:
                text += f"\n[[{header}]]\n" + _table(item, name)
    return text


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped; non-ASCII stays
    # as it is (JSON would write astral characters as surrogate pairs, which TOML refuses).
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    """One value inline: a string, a number, a boolean, an array or an inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"a system file cannot hold {type(value).__name__} {value!r}")
