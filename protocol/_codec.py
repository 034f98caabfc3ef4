"""The one place where bytes become typed messages and back.

Sans-IO: `Codec.encode` and `Codec.decode` are pure functions over bytes. Every
way a frame can be wrong ends in a `ProtocolError` subclass whose message names
the problem and whose ``field`` names the offending field.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from ._errors import (
    FrameTooLarge,
    InvalidMessage,
    MalformedFrame,
    ProtocolError,
    UnknownMessageType,
    UnsupportedVersion,
)
from ._message import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Envelope,
    Message,
    RawEnvelope,
    Request,
)
from ._ndarray import dec_hook, enc_hook, ext_hook

DEFAULT_MAX_FRAME_BYTES = 64 * 2**20
"""Frames longer than this are refused unless the codec is configured otherwise."""

_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


class Catalog:
    """The set of message types a codec knows, by wire name.

    It is an explicit value, not a global registry: build one from the
    declarations you speak and hand it to the codec.
    """

    def __init__(self, types: Iterable[type[Message]]) -> None:
        self._types: dict[str, type[Message]] = {}
        for cls in types:
            name = getattr(cls, "TYPE", None)
            if not isinstance(name, str) or not _TYPE_NAME.fullmatch(name):
                raise ValueError(
                    f"{cls.__qualname__}.TYPE must be a dotted lower-case name like 'job.submit', got {name!r}"
                )
            if name in self._types and self._types[name] is not cls:
                raise ValueError(
                    f"message type {name!r} is declared twice: {self._types[name].__qualname__} and {cls.__qualname__}"
                )
            if issubclass(cls, Request) and not hasattr(cls, "REPLY"):
                raise ValueError(f"request {name!r} ({cls.__qualname__}) does not declare its REPLY type")
            self._types[name] = cls

    def __getitem__(self, name: str) -> type[Message]:
        return self._types[name]

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[type[Message]]:
        return iter(self._types.values())

    def __len__(self) -> int:
        return len(self._types)

    def names(self) -> list[str]:
        return sorted(self._types)

    def extended(self, types: Iterable[type[Message]]) -> Catalog:
        """A new catalog with these types added."""
        return Catalog([*self._types.values(), *types])


def make_envelope(
    body: Message,
    *,
    sender: str,
    to: str,
    id: int,
    re: int | None = None,
    ts: float | None = None,
) -> Envelope:
    """An envelope for ``body``; the type comes from the body's declaration."""
    return Envelope(
        v=PROTOCOL_VERSION,
        id=id,
        type=body.TYPE,
        sender=sender,
        to=to,
        re=re,
        ts=time.time() if ts is None else ts,
        body=body,
    )


_AT = re.compile(r" - at `\$([^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")


def _field_path(prefix: str, error: str) -> tuple[str, str]:
    """Split a msgspec validation message into (dotted field path, message).

    msgspec ends its messages with `` - at `$.a.b[2]` `` and names missing or
    unknown fields in the text; both become ``prefix.a.b[2]``.
    """
    path = prefix
    m = _AT.search(error)
    if m:
        error = error[: m.start()]
        path = prefix + m.group(1) if prefix else m.group(1).lstrip(".")
    named = _NAMED_FIELD.search(error)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path, error


class Codec:
    """Encodes envelopes to frames and decodes frames to validated envelopes.

    Args:
        catalog: The message types this codec accepts.
        max_frame_bytes: Longer frames are refused with `FrameTooLarge` before
            any parsing.
    """

    def __init__(self, catalog: Catalog, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.catalog = catalog
        self.max_frame_bytes = max_frame_bytes
        self._encoder = msgspec.msgpack.Encoder(enc_hook=enc_hook)
        self._header = msgspec.msgpack.Decoder(RawEnvelope)
        self._any = msgspec.msgpack.Decoder(ext_hook=ext_hook)
        self._bodies = {cls.TYPE: msgspec.msgpack.Decoder(cls, ext_hook=ext_hook, dec_hook=dec_hook) for cls in catalog}

    def encode(self, envelope: Envelope) -> bytes:
        """The frame for an envelope.

        Raises:
            UnknownMessageType: the body's type is not in the catalog.
            FrameTooLarge: the frame would exceed the limit (the peer would refuse it).
        """
        if envelope.type not in self._bodies:
            raise UnknownMessageType(f"cannot send unknown message type {envelope.type!r}", field="type")
        frame = self._encoder.encode(envelope)
        if len(frame) > self.max_frame_bytes:
            raise FrameTooLarge(
                f"{envelope.type} frame of {len(frame)} bytes exceeds the limit of {self.max_frame_bytes} bytes"
            )
        return frame

    def decode(self, frame: bytes | bytearray | memoryview) -> Envelope:
        """The validated envelope in a frame.

        Raises:
            ProtocolError: a subclass naming what is wrong; ``request_id`` and
                ``sender`` are set on it when the header could be read, so
                that an error reply can be addressed.
        """
        if len(frame) > self.max_frame_bytes:
            raise FrameTooLarge(f"frame of {len(frame)} bytes exceeds the limit of {self.max_frame_bytes} bytes")
        try:
            head = self._header.decode(frame)
        except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
            raise self._header_error(frame, str(exc)) from None
        except msgspec.DecodeError as exc:
            raise MalformedFrame(f"frame is not valid MessagePack: {exc}") from None
        except UnicodeDecodeError as exc:  # msgspec lets this one through
            raise MalformedFrame(f"frame holds a string that is not UTF-8: {exc}") from None
        if head.v not in SUPPORTED_VERSIONS:
            raise _tag(
                UnsupportedVersion(
                    f"protocol version {head.v} is not supported (this build speaks {sorted(SUPPORTED_VERSIONS)})",
                    field="v",
                ),
                head.id,
                head.sender,
            )
        decoder = self._bodies.get(head.type)
        if decoder is None:
            raise _tag(UnknownMessageType(f"unknown message type {head.type!r}", field="type"), head.id, head.sender)
        try:
            body = decoder.decode(head.body)
        except msgspec.ValidationError as exc:
            path, text = _field_path("body", str(exc))
            raise _tag(
                InvalidMessage(f"invalid {head.type}: {text} (field {path})", field=path), head.id, head.sender
            ) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise _tag(
                MalformedFrame(f"{head.type} body is not valid MessagePack: {exc}", field="body"), head.id, head.sender
            ) from None
        return Envelope(
            v=head.v, id=head.id, type=head.type, sender=head.sender, to=head.to, re=head.re, ts=head.ts, body=body
        )

    def _header_error(self, frame: bytes | bytearray | memoryview, text: str) -> ProtocolError:
        """Explain why the envelope header did not validate (error path only)."""
        try:
            loose: Any = self._any.decode(frame)
        except (msgspec.DecodeError, ValueError):  # ValueError: bad UTF-8, a bad numpy ext
            loose = None
        if not isinstance(loose, dict):
            return MalformedFrame(f"frame is not an envelope (a MessagePack map): {text}")
        req_id = loose.get("id")
        if not (isinstance(req_id, int) and 0 <= req_id < 2**63):
            req_id = None
        sender = loose.get("from") if isinstance(loose.get("from"), str) else None
        version = loose.get("v")
        if isinstance(version, int) and version not in SUPPORTED_VERSIONS:
            return _tag(
                UnsupportedVersion(
                    f"protocol version {version} is not supported (this build speaks {sorted(SUPPORTED_VERSIONS)})",
                    field="v",
                ),
                req_id,
                sender,
            )
        path, text = _field_path("", text)
        return _tag(InvalidMessage(f"invalid envelope: {text} (field {path})", field=path), req_id, sender)


def _tag(error: ProtocolError, request_id: int | None, sender: str | None) -> ProtocolError:
    error.request_id = request_id
    error.sender = sender
    return error
