"""Hypothesis strategies derived from the message declarations themselves.

`messages()` builds any message of the catalog from msgspec's description of
its fields (types, bounds, patterns), so a new message type is covered by the
round-trip properties without writing a strategy for it.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import msgspec.inspect as mi
import numpy as np
from hypothesis import reject
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol import Message
from protocol.catalog import CATALOG

INT64 = (-(2**63), 2**63 - 1)

_DTYPES = st.sampled_from(["<f8", "<f4", ">f8", "<i8", "<i4", "<i2", "|i1", "<u4", "|u1", "|b1", "<c16", "<c8", "<u8"])


def arrays() -> st.SearchStrategy[np.ndarray]:
    return _DTYPES.flatmap(
        lambda dtype: hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    )


def any_values() -> st.SearchStrategy[Any]:
    """What an ``Any`` field may carry on the wire."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(*INT64),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.binary(max_size=64),
        arrays(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=10,
    )


def _number(info: Any, kind: str) -> st.SearchStrategy[Any]:
    lo = info.ge if info.ge is not None else info.gt
    hi = info.le if info.le is not None else info.lt
    if kind == "int":
        return st.integers(
            INT64[0] if lo is None else lo + (info.gt is not None),
            INT64[1] if hi is None else hi - (info.lt is not None),
        )
    return st.floats(
        min_value=lo,
        max_value=hi,
        exclude_min=info.gt is not None,
        exclude_max=info.lt is not None,
        allow_nan=False,
        allow_infinity=lo is None and hi is None,
    )


def for_type(info: Any) -> st.SearchStrategy[Any]:
    if isinstance(info, mi.AnyType):
        return any_values()
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.IntType):
        return _number(info, "int")
    if isinstance(info, mi.FloatType):
        return _number(info, "float")
    if isinstance(info, mi.StrType):
        if info.pattern:
            text = st.from_regex(info.pattern, fullmatch=True)
            return text.filter(lambda s: (info.min_length or 0) <= len(s) <= (info.max_length or math.inf))
        return st.text(min_size=info.min_length or 0, max_size=info.max_length or 30)
    if isinstance(info, mi.BytesType):
        return st.binary(max_size=64)
    if isinstance(info, mi.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, mi.UnionType):
        return st.one_of(*(for_type(t) for t in info.types))
    if isinstance(info, mi.ListType):
        least = info.min_length or 0
        return st.lists(for_type(info.item_type), min_size=least, max_size=min(info.max_length or 4, max(4, least)))
    if isinstance(info, mi.DictType):
        return st.dictionaries(for_type(info.key_type), for_type(info.value_type), max_size=3)
    if isinstance(info, mi.CustomType) and info.cls is np.ndarray:
        return arrays()
    if isinstance(info, mi.StructType):
        return _struct(info)
    raise TypeError(f"no strategy for {info!r}: extend tests/strategies.py")


def _struct(info: Any) -> st.SearchStrategy[Any]:
    """A struct from its fields; combinations its own checks refuse (``__post_init__``) are skipped."""
    fields = st.fixed_dictionaries(
        {f.name: for_type(f.type) for f in info.fields if f.required},
        optional={f.name: for_type(f.type) for f in info.fields if not f.required},
    )

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        try:
            return info.cls(**draw(fields))
        except (ValueError, msgspec.ValidationError):
            reject()

    return build()


def message_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    return for_type(mi.type_info(cls))


def messages() -> st.SearchStrategy[Message]:
    return st.sampled_from(list(CATALOG)).flatmap(message_of)


def same(a: Any, b: Any) -> bool:
    """Deep equality that compares numpy arrays by dtype, shape and bytes."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if isinstance(a, msgspec.Struct):
        return type(a) is type(b) and all(same(getattr(a, f), getattr(b, f)) for f in a.__struct_fields__)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b
