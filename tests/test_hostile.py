"""Hostile input: whatever a client sends, the codec answers with a `ProtocolError` naming a documented code.

A raw client written from docs/protocol.md alone sent frames that crashed
actors: arrays nested 1,000 deep, ndarray dtypes numpy does not know, shapes
numpy refuses, 4 MB names echoed into the log. These tests pin each of those
down, and drive `Codec.decode` with arbitrary MessagePack besides.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import msgpack
import msgspec
import msgspec.inspect as mi
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    MAX_DEPTH,
    MAX_VALUES,
    NDARRAY_DTYPES,
    NDARRAY_EXT,
    Codec,
    ErrorCode,
    FrameTooLarge,
    InvalidMessage,
    ProtocolError,
    make_envelope,
)
from protocol.catalog import CATALOG
from protocol.system import Ping

codec = Codec(CATALOG)

HEADER = {"v": 1, "id": 7, "type": "sys.ping", "from": "client", "to": "alpha", "re": None, "ts": 1700000000.5}


def frame_with_body(body: bytes, **header: Any) -> bytes:
    """An envelope whose body is the given MessagePack bytes, spliced in as a foreign client might write it."""
    fields = {**HEADER, **header}
    head = msgpack.packb(fields)
    assert head[0] == 0x80 + len(fields)
    return bytes([0x80 + len(fields) + 1]) + head[1:] + msgpack.packb("body") + body


def ping_with(data: bytes) -> bytes:
    """A ``sys.ping`` whose ``data`` field is the given MessagePack bytes."""
    return frame_with_body(b"\x81\xa4data" + data)


def nested(depth: int, *, kind: str = "array") -> bytes:
    """A value nested ``depth`` levels deep: ``[[[...[1]...]]]`` or ``{"k": {"k": ... 1}}``."""
    if kind == "array":
        return b"\x91" * depth + b"\x01"
    return b"\x81\xa1k" * depth + b"\x01"


def ndarray_ext(dtype: Any, shape: Any, data: bytes) -> bytes:
    return msgpack.packb(msgpack.ExtType(NDARRAY_EXT, msgpack.packb([dtype, shape, data])))


def refused(frame: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        codec.decode(frame)
    return caught.value


# --- nesting ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["array", "map"])
@pytest.mark.parametrize("depth", [MAX_DEPTH, 1_000, 100_000])
def test_a_value_nested_past_the_limit_is_refused_as_too_large_and_answered_to_its_sender(kind, depth):
    # The envelope is level 1, the body level 2, ``data`` level 3: a value of depth d reaches 2 + d.
    error = refused(ping_with(nested(depth, kind=kind)))
    assert type(error) is FrameTooLarge
    assert error.code == ErrorCode.TOO_LARGE
    assert f"limit is {MAX_DEPTH}" in error.message
    assert (error.request_id, error.sender) == (7, "client")


def test_the_deepest_value_the_limit_allows_decodes():
    deepest = MAX_DEPTH - 2
    data = codec.decode(ping_with(nested(deepest))).body.data
    for _ in range(deepest):
        assert isinstance(data, list)
        data = data[0]
    assert data == 1


@pytest.mark.parametrize(
    "frame",
    [
        nested(100_000),  # no envelope at all
        frame_with_body(nested(5_000), type="no.such_type"),  # before the type is looked at
        frame_with_body(nested(5_000), v=2),  # and before the version
        b"\x88" + msgpack.packb("body") + nested(5_000) + msgpack.packb(HEADER)[1:],  # the body first
    ],
    ids=["bare", "unknown-type", "unsupported-version", "body-first"],
)
def test_nesting_is_checked_before_anything_else_with_the_same_code(frame):
    assert refused(frame).code == ErrorCode.TOO_LARGE


def test_a_frame_holding_more_values_than_the_limit_is_refused_before_they_are_built():
    small = Codec(CATALOG, max_values=1000)
    with pytest.raises(FrameTooLarge, match="the limit is 1000"):
        small.decode(ping_with(msgpack.packb([None] * 1001)))
    assert small.decode(ping_with(msgpack.packb([None] * 900))).body.data == [None] * 900


@pytest.mark.parametrize(
    "data",
    [
        b"\xdd\xff\xff\xff\xff",  # array32 of 4 billion items, then nothing
        b"\xdf\xff\xff\xff\xff",  # map32
        b"\xdb\xff\xff\xff\xff",  # str32
        b"\xc6\xff\xff\xff\xff",  # bin32
        b"\xc9\xff\xff\xff\xff\x01",  # ext32
        b"\xdc\xff\xff" + b"\xc0" * 10,  # array16 declaring more than it has
    ],
)
def test_huge_declared_sizes_are_refused_without_allocating(data):
    refused(ping_with(data))


# --- numpy arrays -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype",
    [
        "<f1",
        "|b2",
        "<i16",
        "<c4",
        "<u16",
        "<f16",  # long double: its size differs between platforms
        "<c32",
        "|f8",  # '|' is for one-byte types
        "<V8",
        "<M8",
        "<U1",
        "|O",
        "<f8 ",
        "",
        "x" * 100_000,
    ],
)
def test_an_ndarray_of_a_dtype_outside_the_allowlist_is_refused(dtype):
    error = refused(ping_with(ndarray_ext(dtype, [1], b"\x00" * 8)))
    assert type(error) is InvalidMessage
    assert error.field == "body"  # msgspec names no path inside a free-form field
    assert len(error.message) < 600


@pytest.mark.parametrize("dtype", sorted(NDARRAY_DTYPES))
def test_every_allowed_dtype_decodes_to_its_numpy_dtype(dtype):
    itemsize = NDARRAY_DTYPES[dtype].itemsize
    array = codec.decode(ping_with(ndarray_ext(dtype, [2, 3], b"\x01" * (6 * itemsize)))).body.data
    assert array.dtype == NDARRAY_DTYPES[dtype]
    assert array.shape == (2, 3)


@pytest.mark.parametrize(
    "shape",
    [
        [0, 2**63],
        [0, 2**64 - 1],
        [2**63, 0],
        [0, 2**62, 2**62],
        [2**62, 2**62, 0],
        [0, 2**32, 2**32],
        [-1],
        [1] * 33,
        [0] * 33,
        [1.5],
        "12",
        [[1]],
    ],
)
def test_an_ndarray_shape_numpy_would_refuse_is_refused_first(shape):
    error = refused(ping_with(ndarray_ext("<f8", shape, b"")))
    assert type(error) is InvalidMessage


@pytest.mark.parametrize("shape", [[0], [0, 2**31], [2**31, 0, 3], [0] * 32, [1] * 32, []])
def test_odd_but_valid_shapes_decode(shape):
    size = int(np.prod(shape)) if shape else 1
    array = codec.decode(ping_with(ndarray_ext("<i2", shape, b"\x00" * (2 * size)))).body.data
    assert array.shape == tuple(shape)


@pytest.mark.parametrize(
    "frame",
    [
        msgpack.packb(msgpack.ExtType(NDARRAY_EXT, msgpack.packb(["<f1", [1], b"x"]))),
        msgpack.packb({**HEADER, "id": msgpack.ExtType(NDARRAY_EXT, msgpack.packb(["<f1", [1], b"x"]))}),
        msgpack.packb({**HEADER, "ts": msgpack.ExtType(NDARRAY_EXT, msgpack.packb(["<f8", [0, 2**63], b""]))}),
    ],
    ids=["bare", "in-the-header", "shape-in-the-header"],
)
def test_a_bad_ndarray_where_no_array_belongs_is_refused_too(frame):
    refused(frame)


# --- text a client chooses is bounded in what we say back ---------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        frame_with_body(b"\x80", type="x" * 4_000_000),
        frame_with_body(b"\x80", type="a." + "b" * 4_000_000),
        msgpack.packb({**HEADER, "body": {"d" * 4_000_000: 1}}),
        msgpack.packb({**HEADER, "body": {}, "x" * 4_000_000: 1}),
        msgpack.packb({**HEADER, "body": {}, "from": "c" * 4_000_000}),
        msgpack.packb({**HEADER, "body": {}, "to": "t" * 4_000_000}),
        ping_with(ndarray_ext("f" * 4_000_000, [1], b"")),
        msgpack.packb({**HEADER, "type": "mem.get_job", "body": {"job": "j" * 4_000_000}}),
    ],
    ids=["type", "dotted-type", "field", "header-field", "from", "to", "dtype", "job-id"],
)
def test_refusals_quote_at_most_a_bounded_part_of_what_the_client_sent(frame):
    error = refused(frame)
    assert len(error.message) <= 1000
    assert error.field is None or len(error.field) <= 200
    assert error.sender is None or len(error.sender) <= 256


# --- the codec raises nothing but ProtocolError ---------------------------------------------------

INT_EDGES = [0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**31), -(2**63)]


def ints() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(INT_EDGES), st.integers(-(2**63), 2**64 - 1))


def ndarray_exts() -> st.SearchStrategy[msgpack.ExtType]:
    """ext type 1 payloads: plausible, allowed, and hostile dtypes, shapes and sizes."""
    dtypes = st.one_of(
        st.sampled_from(sorted(NDARRAY_DTYPES)),
        st.from_regex(r"[<>|=][biufcVMmOSU?][0-9]{0,3}", fullmatch=True),
        st.text(max_size=8),
    )
    shapes = st.lists(st.one_of(ints(), st.sampled_from([0, 0, 1, 2, 3])), max_size=34)
    payload = st.one_of(
        st.tuples(dtypes, shapes, st.binary(max_size=64)).map(lambda t: msgpack.packb(list(t))),
        st.binary(max_size=32),
    )
    return payload.map(lambda p: msgpack.ExtType(NDARRAY_EXT, p))


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        ints(),
        st.floats(),
        st.text(max_size=20),
        st.binary(max_size=20),
        ndarray_exts(),
        st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=16)),
    )


def hashable_keys() -> st.SearchStrategy[Any]:
    return st.one_of(st.text(max_size=10), ints(), st.booleans(), st.none(), st.binary(max_size=8), st.floats())


def values() -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=5),
            st.dictionaries(hashable_keys(), inner, max_size=5),
            st.builds(lambda v, d: _wrap(v, d), inner, st.integers(0, 3 * MAX_DEPTH)),
        ),
        max_leaves=20,
    )


def _wrap(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, strict_types=False)


def only_protocol_errors(frame: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        codec.decode(frame)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values())
def test_any_messagepack_value_raises_only_protocol_errors(value):
    only_protocol_errors(pack(value))


def field_values(info: Any) -> st.SearchStrategy[Any]:
    """Values for a field of this type: right, wrong, and at and past its limits."""
    extreme: list[Any] = []
    if isinstance(info, mi.IntType | mi.FloatType):
        for bound in (info.ge, info.le, info.gt, info.lt):
            if bound is not None:
                extreme += [bound, bound - 1, bound + 1]
    if isinstance(info, mi.StrType | mi.BytesType | mi.ListType | mi.DictType) and info.max_length is not None:
        extreme += ["a" * info.max_length, "a" * (info.max_length + 1)]
    if isinstance(info, mi.LiteralType):
        extreme += list(info.values)
    if isinstance(info, mi.StructType):
        return st.one_of(
            st.fixed_dictionaries({}, optional={f.encode_name: field_values(f.type) for f in info.fields}),
            values(),
        )
    if isinstance(info, mi.UnionType):
        return st.one_of(*(field_values(t) for t in info.types))
    base = [values(), ints(), st.floats()]
    if extreme:
        base.insert(0, st.sampled_from(extreme))
    return st.one_of(*base)


def bodies() -> st.SearchStrategy[tuple[str, Any]]:
    def for_type(cls: Any) -> st.SearchStrategy[tuple[str, Any]]:
        info = mi.type_info(cls)
        fields = {f.encode_name: field_values(f.type) for f in info.fields}
        body = st.one_of(st.fixed_dictionaries({}, optional=fields), values())
        return body.map(lambda b: (cls.TYPE, b))

    return st.sampled_from(list(CATALOG)).flatmap(for_type)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies(), st.fixed_dictionaries({}, optional={k: values() for k in HEADER}))
def test_random_envelopes_of_every_catalog_type_raise_only_protocol_errors(typed_body, header_changes):
    msg_type, body = typed_body
    envelope = {**HEADER, "type": msg_type, "body": body, **header_changes}
    only_protocol_errors(pack(envelope))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 300), st.sampled_from([b"\x91", b"\x81\xa1k", b"\xdc\x00\x01"]))
def test_deep_prefixes_before_random_bytes_raise_only_protocol_errors(tail, depth, level):
    only_protocol_errors(ping_with(level * depth + tail))
    only_protocol_errors(level * depth + tail)


SIZED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xC7: 1, 0xC8: 2, 0xC9: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
SIZED |= {0xDC: 2, 0xDD: 4, 0xDE: 2, 0xDF: 4}
"""bin, ext, str, array and map headers that declare a size, and the width of the size."""


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(SIZED)), st.integers(0, 2**32 - 1), st.binary(max_size=64))
def test_declared_sizes_that_lie_raise_only_protocol_errors(lead, size, tail):
    width = SIZED[lead]
    header = bytes([lead]) + (size % 2 ** (8 * width)).to_bytes(width, "big")
    only_protocol_errors(ping_with(header + tail))
    only_protocol_errors(frame_with_body(header + tail))
    only_protocol_errors(header + tail)


def test_a_frame_whose_decoding_fails_unexpectedly_still_raises_a_protocol_error(monkeypatch):
    broken = Codec(CATALOG)

    class Boom(Exception):
        pass

    def explode(_data: Any) -> Any:
        raise Boom("a bug in a decoder")

    monkeypatch.setattr(broken, "_header", type("Decoder", (), {"decode": staticmethod(explode)})())
    frame = codec.encode(make_envelope(Ping(), sender="a", to="b", id=1))
    with pytest.raises(ProtocolError, match="Boom") as caught:
        broken.decode(frame)
    assert isinstance(caught.value.__cause__, Boom)


def test_max_values_is_documented_as_a_power_of_two():
    assert MAX_VALUES & (MAX_VALUES - 1) == 0


def test_a_timestamp_ext_is_read_as_a_time_stamp():
    # The one extension besides ndarrays: msgpack's own timestamp (type -1), read in free-form fields.
    frame = ping_with(b"\xd6\xff" + struct.pack(">I", 1_700_000_000))
    assert codec.decode(frame).body.data.timestamp() == 1_700_000_000


def test_codec_round_trips_still_hold_for_arrays_of_every_allowed_dtype():
    for dtype in NDARRAY_DTYPES.values():
        array = np.arange(6).astype(dtype).reshape(2, 3)
        back = codec.decode(codec.encode(make_envelope(Ping(data=array), sender="a", to="b", id=1))).body.data
        assert back.dtype == array.dtype
        assert back.tobytes() == array.tobytes()


def test_the_header_of_a_refused_frame_is_read_without_recursion():
    # body before the header fields, nested far past any interpreter's recursion limit
    frame = b"\x88" + msgpack.packb("body") + nested(200_000) + msgpack.packb(HEADER)[1:]
    error = refused(frame)
    assert error.code == ErrorCode.TOO_LARGE
    assert (error.request_id, error.sender) == (7, "client")


def test_msgspec_is_what_we_think_it_is():
    # The depth check relies on msgspec refusing truncated containers before allocating them.
    with pytest.raises(msgspec.DecodeError):
        msgspec.msgpack.decode(b"\xdd\xff\xff\xff\xff")
