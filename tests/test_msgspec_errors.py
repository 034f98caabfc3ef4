"""protocol._msgspec: msgspec's validation messages taken apart, the one parser the codec, circuits and arrays share."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol._msgspec import ValidationText, read_validation_error


class _Doc(msgspec.Struct, forbid_unknown_fields=True):
    x: int = 0
    need: int = 0
    d: dict[Annotated[str, msgspec.Meta(max_length=2)], int] = {}
    items: list[Annotated[int, msgspec.Meta(ge=0)]] = []


class _Needs(msgspec.Struct):
    need: int


def _error(doc: bytes, type_: type = _Doc) -> str:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(doc, type=type_)
    return str(caught.value)


@pytest.mark.parametrize(
    ("doc", "type_", "expected"),
    [
        (b'{"x": "s"}', _Doc, ValidationText("Expected `int`, got `str`", ".x", False, None)),
        (b'{"items": [1, -1]}', _Doc, ValidationText("Expected `int` >= 0", ".items[1]", False, None)),
        (b'{"d": {"abc": 1}}', _Doc, ValidationText("Expected `str` of length <= 2", ".d", True, None)),
        (b'{"a`b": 1}', _Doc, ValidationText("Object contains unknown field `a`b`", None, False, "a`b")),
        (b"{}", _Needs, ValidationText("Object missing required field `need`", None, False, "need")),
        (
            b'{"z": {}}',
            dict[str, _Needs],
            ValidationText("Object missing required field `need`", "[...]", False, "need"),
        ),
        (b"[]", _Doc, ValidationText("Expected `object`, got `array`", None, False, None)),
    ],
)
def test_msgspecs_own_messages_come_apart_into_text_path_and_field(doc, type_, expected):
    assert read_validation_error(_error(doc, type_)) == expected


def test_the_named_field_can_be_quoted_in_part():
    parts = read_validation_error("Object contains unknown field `" + "y" * 500 + "` - at `$.ops[0]`")
    assert parts.naming("yyy...") == "Object contains unknown field `yyy...`"
    assert read_validation_error("Expected `int`").naming("q") == "Expected `int`"


@given(st.text())
def test_any_text_reads_and_the_parts_are_in_it(text):
    parts = read_validation_error(text)
    assert text.startswith(parts.text)
    assert parts.field is None or parts.field in parts.text
    assert parts.path is None or parts.path in text[len(parts.text) :]
