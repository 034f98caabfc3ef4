"""Replies to values: what the device answers, as the types the driver's methods return.

Each parser takes the bytes of one query's reply and raises `ValueError` (or
`protocol.scpi.ScpiError`) for a reply that does not parse: the link takes
that for a reply garbled on the way, resynchronises, and repeats the query if
it may (`drivers._link`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import numpy as np

from protocol import scpi
from protocol.photonica import (
    DeviceDescription,
    StatusReport,
    decode_description,
    decode_status,
    histogram_widths,
)


def flag(reply: bytes) -> bool:
    """``0`` or ``1``."""
    if reply.strip() not in (b"0", b"1"):
        raise ValueError(f"expected 0 or 1, got {reply[:20]!r}")
    return reply.strip() == b"1"


def volts(reply: bytes) -> np.ndarray:
    """A block of little-endian float64 (``HEAT:VOLT:ALL?``)."""
    return np.frombuffer(scpi.unblock(reply), "<f8").copy()


def floats(reply: bytes) -> np.ndarray:
    """Numbers separated by ``,`` (``MEAS:POW?``)."""
    return np.array([float(x) for x in reply.split(b",")])


def status(reply: bytes) -> StatusReport:
    """A block of the device's status (``STAT?``)."""
    try:
        return decode_status(scpi.unblock(reply))
    except msgspec.DecodeError as exc:
        raise ValueError(f"status does not decode: {exc}") from exc


def description(reply: bytes) -> DeviceDescription:
    """A block of the device's description (``SYST:CAP?``)."""
    try:
        return decode_description(scpi.unblock(reply))
    except msgspec.DecodeError as exc:
        raise ValueError(f"capabilities do not decode: {exc}") from exc


def text(reply: bytes) -> str:
    """ASCII text as it is (``*IDN?``)."""
    return reply.decode("ascii", "replace")


def patterns(shots: int) -> Any:
    """A parser for a block of ``shots`` patterns: (shots x width uint8, width); the width follows from its length."""

    def parse(reply: bytes) -> tuple[np.ndarray, int]:
        data = scpi.unblock(reply)
        width, rest = divmod(len(data), shots)
        if rest or not width:
            raise ValueError(f"{len(data)} bytes of patterns do not divide into {shots} shots")
        return np.frombuffer(data, np.uint8).reshape(shots, width).copy(), width

    return parse


def histogram(shots: int, widths: Iterable[int]) -> Any:
    """A parser for ``FETCh:HISTogram?`` records counting ``shots`` shots: (the payload, the widths it reads at).

    A record does not say its width, so the parser tries each of ``widths`` (the device's
    modes, or twice that with a second pass): records whose counts do not add up to ``shots``
    at any of them were garbled.
    """
    candidates = list(widths)

    def parse(reply: bytes) -> tuple[bytes, list[int]]:
        data = scpi.unblock(reply)
        fits = histogram_widths(data, shots, candidates)
        if not fits:
            raise ValueError(f"{len(data)} bytes of histogram records do not count {shots} shots")
        return data, fits

    return parse
