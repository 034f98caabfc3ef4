"""Message bodies with extreme values in every field, derived from the declarations themselves.

For each message type of the catalog, `extreme_bodies` starts from a baseline
body that is valid as far as the schema can tell (each field at a plain value
within its range) and changes one field at a time, nested fields included, to
each of its extreme values: the ends of its range and one past them, NaN and
the infinities, empty and longest strings and lists and one longer, every
literal and one that is not, deep and wide free-form values, and numpy arrays
of odd shapes and dtypes. A new message type is covered without writing a line
here.

Bodies are plain Python values (numpy arrays as ext type 1), to be packed with
the msgpack package as a foreign client would.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import msgpack
import msgspec.inspect as mi
import numpy as np

from protocol import MAX_DEPTH, NDARRAY_EXT, Message

MAX_ITEMS = 20_000
"""The longest list or map built for a field (a field allowing more gets this many and its own maximum is
not reached: the frame would be larger than the test needs)."""

MAX_BODY_BYTES = 2 * 2**20
"""Bodies packing to more than this are left out."""

SPECIAL_STRINGS = ["\x00", "../../../../tmp/awen-hostile", "é" * 40, "a\nb\r\nc", " ", "💥"]


def ndarray(array: np.ndarray) -> msgpack.ExtType:
    array = np.ascontiguousarray(array) if array.ndim else array
    return msgpack.ExtType(NDARRAY_EXT, msgpack.packb([array.dtype.str, list(array.shape), array.tobytes()]))


def raw_ndarray(dtype: str, shape: list[int], data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(NDARRAY_EXT, msgpack.packb([dtype, shape, data]))


def arrays() -> list[Any]:
    """Arrays a field typed ``ndarray`` (or free-form) may be sent: odd, empty, huge-dimensioned, wrong."""
    return [
        ndarray(np.zeros(16)),
        ndarray(np.full(16, np.nan)),
        ndarray(np.full(16, np.inf)),
        ndarray(np.full(16, -1e308)),
        ndarray(np.zeros(0)),
        ndarray(np.array(1.5)),
        ndarray(np.zeros((4, 4))),
        ndarray(np.zeros((0, 16))),
        ndarray(np.arange(16, dtype="<i8")),
        ndarray(np.arange(16, dtype=">f8")),
        ndarray(np.ones(16, dtype="|b1")),
        ndarray(np.zeros(16, dtype="<c16")),
        ndarray(np.zeros(16, dtype="<f2")),
        ndarray(np.zeros(100_000)),
        raw_ndarray("<f8", [0, 2**62], b""),
        raw_ndarray("<f8", [2**31, 0], b""),
        raw_ndarray("<f8", [0, 2**63], b""),  # refused: invalid
        raw_ndarray("<f1", [1], b"x"),  # refused: invalid
        raw_ndarray("<f8", [3], b"x"),  # refused: invalid
    ]


def free_values() -> list[Any]:
    """What a free-form (``Any``) field may hold at its extremes."""
    deep_ok: Any = 1
    for _ in range(MAX_DEPTH - 4):
        deep_ok = [deep_ok]
    too_deep: Any = 1
    for _ in range(MAX_DEPTH + 2):
        too_deep = [too_deep]
    return [
        None,
        2**64 - 1,
        -(2**63),
        float("nan"),
        "x" * 65_536,
        b"\x00" * 65_536,
        [None] * MAX_ITEMS,
        {str(i): i for i in range(1000)},
        {1: "int key", 2.5: "float key", None: "nil key"},
        deep_ok,
        too_deep,  # refused: too-large
        msgpack.Timestamp(2**32 - 1, 0),
        msgpack.ExtType(42, b"unknown ext"),  # refused: invalid
        *arrays()[::3],
    ]


def _matches(info: Any, text: str) -> bool:
    if info.min_length is not None and len(text) < info.min_length:
        return False
    if info.max_length is not None and len(text) > info.max_length:
        return False
    return info.pattern is None or re.search(info.pattern, text) is not None


def baseline(info: Any, name: str, overrides: dict[str, Any]) -> Any:
    """A plain value of this type, within its range (what a well-behaved client would send)."""
    if name in overrides:
        return overrides[name]
    if isinstance(info, mi.AnyType | mi.NoneType):
        return None
    if isinstance(info, mi.BoolType):
        return False
    if isinstance(info, mi.IntType):
        lo = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else None)
        hi = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else None)
        value = 1
        if lo is not None:
            value = max(value, lo)
        if hi is not None:
            value = min(value, hi)
        return value
    if isinstance(info, mi.FloatType):
        lo = info.ge if info.ge is not None else info.gt
        hi = info.le if info.le is not None else info.lt
        value = 1.0
        if lo is not None and value <= lo:
            value = lo + 1.0
        if hi is not None and value >= hi:
            value = hi if info.le is not None else (lo + hi) / 2 if lo is not None else hi - 1.0
        return value
    if isinstance(info, mi.StrType):
        for text in ("a", "0", "a1", "x" * (info.min_length or 1), ""):
            if _matches(info, text):
                return text
        return "a"
    if isinstance(info, mi.BytesType):
        return b""
    if isinstance(info, mi.LiteralType):
        return info.values[0]
    if isinstance(info, mi.UnionType):
        kinds = [t for t in info.types if not isinstance(t, mi.NoneType)]
        if len(kinds) < len(info.types):
            return None
        return baseline(kinds[0], name, overrides)
    if isinstance(info, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        return []
    if isinstance(info, mi.TupleType):
        return [baseline(t, name, overrides) for t in info.item_types]
    if isinstance(info, mi.DictType):
        return {}
    if isinstance(info, mi.CustomType) and info.cls is np.ndarray:
        return ndarray(np.zeros(16))
    if isinstance(info, mi.StructType):
        body = {f.encode_name: baseline(f.type, f.encode_name, overrides) for f in info.fields if f.required}
        if info.tag_field is not None:
            body[info.tag_field] = info.tag
        return body
    raise TypeError(f"no baseline for {info!r}: extend tests/extremes.py")


def extremes(info: Any, name: str, overrides: dict[str, Any]) -> Iterator[Any]:
    """The extreme values of a field of this type, valid ones and ones just past its limits."""
    if isinstance(info, mi.AnyType):
        yield from free_values()
    elif isinstance(info, mi.BoolType):
        yield from (True, False, 0, "true")
    elif isinstance(info, mi.NoneType):
        yield None
    elif isinstance(info, mi.IntType):
        lo = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else None)
        hi = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else None)
        values = {0, -1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)}
        for bound in (lo, hi):
            if bound is not None:
                values |= {bound, bound - 1, bound + 1}
        yield from sorted(v for v in values if -(2**63) <= v <= 2**64 - 1)
        yield 1.5
    elif isinstance(info, mi.FloatType):
        yield from (0.0, -0.0, 5e-324, -1.7976931348623157e308, 1.7976931348623157e308, math.nan, math.inf, -math.inf)
        for bound in (info.ge, info.le, info.gt, info.lt):
            if bound is not None:
                yield from (float(bound), math.nextafter(bound, -math.inf), math.nextafter(bound, math.inf))
        yield "1.0"
    elif isinstance(info, mi.StrType):
        longest = info.max_length if info.max_length is not None else 70_000
        yield from ("", "a" * longest, "a" * (longest + 1), *SPECIAL_STRINGS, 7)
        if info.pattern:
            yield "0" * longest
    elif isinstance(info, mi.BytesType):
        longest = info.max_length if info.max_length is not None else 70_000
        yield from (b"", b"\x00" * longest, b"\x00" * (longest + 1))
    elif isinstance(info, mi.LiteralType):
        yield from info.values
        yield "no-such-literal"
    elif isinstance(info, mi.UnionType):
        for t in info.types:
            yield from extremes(t, name, overrides)
    elif isinstance(info, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        item = baseline(info.item_type, name, overrides)
        longest = min(info.max_length if info.max_length is not None else MAX_ITEMS, MAX_ITEMS)
        yield from ([], [item], [item] * longest, "not a list")
        if info.max_length is not None and info.max_length < MAX_ITEMS:
            yield [item] * (info.max_length + 1)
        for value in extremes(info.item_type, name, overrides):
            yield [value]
    elif isinstance(info, mi.TupleType):
        yield []
        yield [baseline(t, name, overrides) for t in info.item_types] * 2
    elif isinstance(info, mi.DictType):
        yield {}
        keys = [k for k in extremes(info.key_type, name, overrides) if _hashable(k)]
        value = baseline(info.value_type, name, overrides)
        for key in keys:
            yield {key: value}
        key = baseline(info.key_type, name, overrides)
        for v in extremes(info.value_type, name, overrides):
            yield {key: v}
        if isinstance(info.key_type, mi.IntType):
            longest = min(info.max_length if info.max_length is not None else MAX_ITEMS, MAX_ITEMS)
            yield {i: value for i in range(longest)}
    elif isinstance(info, mi.CustomType) and info.cls is np.ndarray:
        yield from arrays()
        yield [1.0, 2.0]
    elif isinstance(info, mi.StructType):
        yield {}
        yield "not a map"
        yield {**baseline(info, "", overrides), "no_such_field": 1}
    else:
        raise TypeError(f"no extremes for {info!r}: extend tests/extremes.py")


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return not (isinstance(value, float) and math.isnan(value))


def _variations(info: Any, overrides: dict[str, Any], depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(field path, body) for the struct ``info``: its baseline with one field, at any depth, changed."""
    base = baseline(info, "", overrides)
    for f in info.fields:
        for value in extremes(f.type, f.encode_name, overrides):
            yield f.encode_name, {**base, f.encode_name: value}
        if depth < 3:
            for nested, inner in _structs_in(f.type):
                for path, body in _variations(nested, overrides, depth + 1):
                    yield f"{f.encode_name}.{path}", {**base, f.encode_name: inner(body)}


def _structs_in(info: Any) -> Iterator[tuple[Any, Any]]:
    """The struct types a field holds directly, in a list, or in a union; with how to wrap one as the field."""
    if isinstance(info, mi.StructType):
        yield info, lambda body: body
    elif isinstance(info, mi.UnionType):
        for t in info.types:
            yield from _structs_in(t)
    elif isinstance(info, mi.ListType) and isinstance(info.item_type, mi.StructType):
        yield info.item_type, lambda body: [body]


def extreme_bodies(cls: type[Message], overrides: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(field path, body) pairs for one message type: the baseline first, then every field at every extreme."""
    info = mi.type_info(cls)
    yield "", baseline(info, "", overrides)
    for path, body in _variations(info, overrides):
        packed = pack(body)
        if packed is not None and len(packed) <= MAX_BODY_BYTES:
            yield path, body


def pack(value: Any) -> bytes | None:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return None
