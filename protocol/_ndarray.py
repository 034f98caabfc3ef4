"""numpy arrays as a MessagePack extension type.

An array travels as ext type `NDARRAY_EXT` whose payload is itself a
MessagePack array of three items::

    [dtype: str, shape: [uint, ...], data: bin]

``dtype`` is numpy's array-protocol type string (``"<f8"``, ``"|b1"``,
``"<c16"``): byte order, kind, item size, one of `NDARRAY_DTYPES`. ``data``
is the C-ordered raw bytes. Only plain numeric and boolean dtypes are
accepted, so a frame can never ask the receiver to build Python objects, and
every part of the payload is checked before numpy sees it, so that numpy
never raises: an ext payload that does not describe an array is a
`msgspec.ValidationError`, like any other wrong value.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Final, TypeVar

import msgspec
import numpy as np

from ._msgspec import read_validation_error

T = TypeVar("T")

NDARRAY_EXT = 1
"""The MessagePack extension type code of a numpy array."""

MAX_NDIM: Final = 32
"""Dimensions an array may have (numpy's own limit before numpy 2)."""

MAX_ARRAY_BYTES: Final = 2**63 - 1
"""The item size times the product of the non-zero dimensions must not exceed this (numpy's ``intp``)."""

NDARRAY_ITEM_SIZES: Final[Mapping[str, tuple[int, ...]]] = {
    "b": (1,),
    "i": (1, 2, 4, 8),
    "u": (1, 2, 4, 8),
    "f": (2, 4, 8),
    "c": (8, 16),
}
"""Item sizes in bytes per dtype kind: bool, int, unsigned int, float (half, single, double), complex.

Not ``f16``/``c32`` (long double), whose size and layout differ between platforms."""


def _allowed_dtypes() -> Iterator[str]:
    for kind, sizes in NDARRAY_ITEM_SIZES.items():
        for size in sizes:
            for order in "|<>" if size == 1 else "<>":
                yield f"{order}{kind}{size}"


NDARRAY_DTYPES: Final[Mapping[str, np.dtype[Any]]] = {name: np.dtype(name) for name in _allowed_dtypes()}
"""Every dtype string an array may carry, and its numpy dtype. Byte order ``<`` or ``>``;
a one-byte type may also say ``|`` (numpy's own spelling for it)."""

_Dim = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_payload_decoder = msgspec.msgpack.Decoder(
    tuple[
        Annotated[str, msgspec.Meta(max_length=8)],
        Annotated[list[_Dim], msgspec.Meta(max_length=MAX_NDIM)],
        bytes,
    ]
)


def encode_ndarray(array: np.ndarray) -> msgspec.msgpack.Ext:
    """Turn an array into the ext value `msgspec` writes on the wire."""
    if array.dtype.str not in NDARRAY_DTYPES:
        raise TypeError(
            f"cannot send a numpy array of dtype {array.dtype} ({array.dtype.str}): only bool, int and uint of "
            "1-8 bytes, float of 2-8 bytes and complex of 8-16 bytes travel (protocol.NDARRAY_DTYPES)"
        )
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
    data = memoryview(array).cast("B") if array.size else b""  # type: ignore[arg-type]
    payload = msgspec.msgpack.encode((array.dtype.str, array.shape, data))
    return msgspec.msgpack.Ext(NDARRAY_EXT, payload)


def decode_ndarray(data: bytes | memoryview) -> np.ndarray:
    """Build the array an ext payload describes, validating every part of it first.

    The array is read-only: it shares memory with the decoded payload.

    Raises:
        msgspec.ValidationError: the payload does not describe an allowed array.
    """
    try:
        dtype_str, shape, raw = _payload_decoder.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:  # ValueError: a dtype that is not UTF-8
        what = read_validation_error(str(exc)).text  # a path inside the payload would pass for one inside the body
        raise msgspec.ValidationError(
            "numpy array ext payload must be [dtype: str of at most 8 characters, "
            f"shape: [at most {MAX_NDIM} ints in 0..2**63-1], data: bin]: {_clip(what)}"
        ) from None
    dtype = NDARRAY_DTYPES.get(dtype_str)
    if dtype is None:
        raise msgspec.ValidationError(
            f"numpy array dtype {dtype_str!r} is not one awen accepts: byte order '<' or '>' ('|' too for one "
            "byte), then b1, i1/2/4/8, u1/2/4/8, f2/4/8 or c8/16, such as '<f8'"
        )
    span = dtype.itemsize * math.prod(n for n in shape if n)
    if span > MAX_ARRAY_BYTES:
        raise msgspec.ValidationError(
            f"numpy array shape {_clip(str(tuple(shape)))} is too large for any array of {dtype_str} "
            f"(item size times its non-zero dimensions exceeds 2**63 - 1)"
        )
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(raw):
        raise msgspec.ValidationError(
            f"numpy array of shape {tuple(shape)} and dtype {dtype_str} needs {expected} bytes, "
            f"the frame has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def enc_hook(obj: Any) -> Any:
    """msgspec encoder hook: numpy arrays and numpy scalars."""
    if isinstance(obj, np.ndarray):
        return encode_ndarray(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode a {type(obj).__qualname__} in an awen message")


def ext_hook(code: int, data: memoryview) -> Any:
    """msgspec decoder hook: the one extension type awen defines."""
    if code == NDARRAY_EXT:
        return decode_ndarray(data)
    raise msgspec.ValidationError(f"unknown MessagePack extension type {code}")


def dec_hook(type_: type, obj: Any) -> Any:
    """msgspec decoder hook for fields annotated with `numpy.ndarray`."""
    if type_ is np.ndarray and isinstance(obj, np.ndarray):
        return obj
    raise msgspec.ValidationError(f"expected a numpy array (ext type {NDARRAY_EXT}), got {type(obj).__name__}")


_packer = msgspec.msgpack.Encoder(enc_hook=enc_hook)
_unpacker = msgspec.msgpack.Decoder(ext_hook=ext_hook)


def pack(obj: Any) -> bytes:
    """``obj`` as MessagePack, numpy arrays as ext type 1: how awen stores free-form values."""
    return _packer.encode(obj)


def unpack(data: bytes) -> Any:
    """The value `pack` wrote; arrays come back as (read-only) numpy arrays."""
    return _unpacker.decode(data)


_typed_unpackers: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}


def unpack_as(data: bytes, type_: type[T]) -> T:
    """The value `pack` wrote, read as ``type_`` (a struct, say), arrays as for `unpack`.

    Raises:
        msgspec.DecodeError: not MessagePack, or (`msgspec.ValidationError`) not a ``type_``.
    """
    decoder = _typed_unpackers.get(type_)
    if decoder is None:
        decoder = _typed_unpackers[type_] = msgspec.msgpack.Decoder(type_, dec_hook=dec_hook, ext_hook=ext_hook)
    decoded: T = decoder.decode(data)
    return decoded
