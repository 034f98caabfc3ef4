"""numpy arrays as a MessagePack extension type.

An array travels as ext type `NDARRAY_EXT` whose payload is itself a
MessagePack array of three items::

    [dtype: str, shape: [uint, ...], data: bin]

``dtype`` is numpy's array-protocol type string (``"<f8"``, ``"|b1"``,
``"<c16"``): byte order, kind, item size. ``data`` is the C-ordered raw bytes.
Only plain numeric and boolean dtypes are accepted, so a frame can never ask the
receiver to build Python objects.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec
import numpy as np

NDARRAY_EXT = 1
"""The MessagePack extension type code of a numpy array."""

MAX_NDIM = 32

_DTYPE = re.compile(r"[<>|][biufc](1|2|4|8|16)")
_payload_decoder = msgspec.msgpack.Decoder(tuple[str, list[int], bytes])


def encode_ndarray(array: np.ndarray) -> msgspec.msgpack.Ext:
    """Turn an array into the ext value `msgspec` writes on the wire."""
    if array.dtype.kind not in "biufc":
        raise TypeError(f"cannot send a numpy array of dtype {array.dtype} (only bool, int, uint, float, complex)")
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
    data = memoryview(array).cast("B") if array.size else b""  # type: ignore[arg-type]
    payload = msgspec.msgpack.encode((array.dtype.str, array.shape, data))
    return msgspec.msgpack.Ext(NDARRAY_EXT, payload)


def decode_ndarray(data: bytes | memoryview) -> np.ndarray:
    """Build the array an ext payload describes, validating every part of it.

    The array is read-only: it shares memory with the received frame.

    Raises:
        msgspec.ValidationError: the payload does not describe a valid array.
    """
    try:
        dtype_str, shape, raw = _payload_decoder.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:  # ValueError: a dtype that is not UTF-8
        raise msgspec.ValidationError(f"numpy array ext payload must be [dtype, shape, bytes]: {exc}") from None
    if not _DTYPE.fullmatch(dtype_str):
        raise msgspec.ValidationError(f"numpy array dtype {dtype_str!r} is not a plain numeric dtype such as '<f8'")
    dtype = np.dtype(dtype_str)
    if len(shape) > MAX_NDIM or any(n < 0 for n in shape):
        raise msgspec.ValidationError(f"numpy array shape {shape} is not a valid shape")
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(raw):
        raise msgspec.ValidationError(
            f"numpy array of shape {tuple(shape)} and dtype {dtype_str} needs {expected} bytes, "
            f"the frame has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


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
