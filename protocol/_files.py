"""Configuration files: TOML in, validated settings out, errors that name the file and the key."""

from __future__ import annotations

import os
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
