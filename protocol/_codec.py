"""The one place where bytes become typed messages and back.

Sans-IO: `Codec.encode` and `Codec.decode` are pure functions over bytes. Every
way a frame can be wrong ends in a `ProtocolError` subclass whose message names
the problem and whose ``field`` names the offending field; nothing else
escapes `Codec.decode`, whatever the bytes. What a client chose (a type name,
a field name) is quoted only in part: a refusal is never longer than
`MAX_ERROR_TEXT` characters, its field path never longer than `MAX_FIELD_PATH`.

Before anything is decoded, a frame's nesting and item count are checked
against `MAX_DEPTH` and `MAX_VALUES` (`protocol._structure`), so that the
decoder never recurses deeper, or allocates more, than those limits allow.
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
    MAX_SENDER,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Envelope,
    Message,
    RawEnvelope,
    Request,
)
from ._msgspec import read_validation_error
from ._ndarray import dec_hook, enc_hook, ext_hook
from ._structure import MAX_DEPTH, MAX_VALUES, check_structure, envelope_fields
from ._structure import NOT_CONTAINERS as _NOT_CONTAINERS
from ._structure import QUICK_BYTES as _QUICK_BYTES
from ._text import clip

DEFAULT_MAX_FRAME_BYTES = 64 * 2**20
"""Frames longer than this are refused unless the codec is configured otherwise."""

MAX_ERROR_TEXT = 1000
"""The longest refusal message the codec writes; what the client sent is quoted only in part."""

MAX_FIELD_PATH = 200
"""The longest field path an error names."""

_QUOTE = 80
"""How much of a client's string a refusal quotes."""

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

    def get(self, name: str) -> type[Message] | None:
        return self._types.get(name)

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
    trace: int | None = None,
) -> Envelope:
    """An envelope for ``body``; the type comes from the body's declaration."""
    return Envelope(
        v=PROTOCOL_VERSION,
        id=id,
        type=body.TYPE,
        sender=sender,
        to=to,
        re=re,
        trace=trace,
        ts=time.time() if ts is None else ts,
        body=body,
    )


def _field_path(prefix: str, error: str) -> tuple[str, str]:
    """Split a msgspec validation message into (dotted field path, message).

    msgspec ends its messages with `` - at `$.a.b[2]` `` and names missing or
    unknown fields in the text; both become ``prefix.a.b[2]``.
    """
    parts = read_validation_error(error)
    path = prefix
    if parts.path is not None:
        path = prefix + parts.path if prefix else parts.path.lstrip(".")
    text = parts.text
    if parts.field is not None:
        path = f"{path}.{parts.field}" if path else parts.field
        text = parts.naming(clip(parts.field, _QUOTE))
    return clip(path, MAX_FIELD_PATH), clip(text, MAX_ERROR_TEXT // 2)


class Codec:
    """Encodes envelopes to frames and decodes frames to validated envelopes.

    Args:
        catalog: The message types this codec accepts.
        max_frame_bytes: Longer frames are refused with `FrameTooLarge` before
            any parsing.
        max_depth: Frames whose arrays and maps nest deeper are refused with
            `FrameTooLarge` before any parsing (the protocol's `MAX_DEPTH`).
        max_values: Frames declaring more items in their arrays and maps are
            refused likewise (the protocol's `MAX_VALUES`).
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_depth: int = MAX_DEPTH,
        max_values: int = MAX_VALUES,
    ) -> None:
        self.catalog = catalog
        self.max_frame_bytes = max_frame_bytes
        self.max_depth = max_depth
        self.max_values = max_values
        self._encoder = msgspec.msgpack.Encoder(enc_hook=enc_hook)
        self._header = msgspec.msgpack.Decoder(RawEnvelope)
        self._header_value = msgspec.msgpack.Decoder(int | str | None)
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
            ProtocolError: a subclass naming what is wrong, and nothing else
                whatever the frame holds; ``request_id``, ``sender`` and
                ``reply_to`` are set on it when the header could be read, so
                that an error reply can be addressed.
        """
        if len(frame) > self.max_frame_bytes:
            raise FrameTooLarge(f"frame of {len(frame)} bytes exceeds the limit of {self.max_frame_bytes} bytes")
        data = frame if isinstance(frame, bytes) else bytes(frame)
        try:
            # Nesting and item count first, before anything recurses or allocates
            # (a short frame with few bytes that could open an array or a map
            # cannot break either limit: the common case costs one translate).
            if (
                len(data) > _QUICK_BYTES
                or len(data) > self.max_values
                or len(data.translate(None, _NOT_CONTAINERS)) > self.max_depth
            ):
                problem = check_structure(data, self.max_depth, self.max_values)
                if problem is not None:
                    _, address = self._header_fields(data)
                    raise _tag(FrameTooLarge(problem), *address)
            return self._decode(data)
        except ProtocolError:
            raise
        except RecursionError:  # a backstop: the check above keeps frames far shallower than any interpreter's limit
            raise MalformedFrame("frame nests too deep for this interpreter to decode") from None
        except Exception as exc:
            raise MalformedFrame(
                f"frame could not be decoded ({type(exc).__name__}: {clip(str(exc), _QUOTE)}); "
                "this is a bug in awen's codec, please report it with the frame"
            ) from exc

    def _decode(self, frame: bytes) -> Envelope:
        try:
            head = self._header.decode(frame)
        except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
            raise self._header_error(frame, str(exc)) from None
        except msgspec.DecodeError as exc:
            raise MalformedFrame(f"frame is not valid MessagePack: {clip(str(exc), _QUOTE)}") from None
        except UnicodeDecodeError as exc:  # msgspec lets this one through
            raise MalformedFrame(f"frame holds a string that is not UTF-8: {clip(str(exc), _QUOTE)}") from None
        if head.v not in SUPPORTED_VERSIONS:
            raise _tag(
                UnsupportedVersion(
                    f"protocol version {head.v} is not supported (this build speaks {sorted(SUPPORTED_VERSIONS)})",
                    field="v",
                ),
                *self._address(head),
            )
        decoder = self._bodies.get(head.type)
        if decoder is None:
            raise _tag(
                UnknownMessageType(f"unknown message type {clip(head.type, _QUOTE)!r}", field="type"),
                *self._address(head),
            )
        try:
            body = decoder.decode(head.body)
        except msgspec.ValidationError as exc:
            path, text = _field_path("body", str(exc))
            raise _tag(
                InvalidMessage(f"invalid {head.type}: {text} (field {path})", field=path), *self._address(head)
            ) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise _tag(
                MalformedFrame(f"{head.type} body is not valid MessagePack: {clip(str(exc), _QUOTE)}", field="body"),
                *self._address(head),
            ) from None
        return Envelope(
            v=head.v,
            id=head.id,
            type=head.type,
            sender=head.sender,
            to=head.to,
            re=head.re,
            trace=head.trace,
            ts=head.ts,
            body=body,
        )

    def _address(self, head: RawEnvelope) -> _Address:
        """Where a refusal of this frame goes: its id, its sender, its ``re``, and the kind of its type."""
        cls = self.catalog.get(head.type)
        return head.id, head.sender, head.re, None if cls is None else cls.KIND

    def _header_fields(self, frame: bytes) -> tuple[dict[str, Any] | None, _Address]:
        """The frame's header as far as it can be read: its fields, and (id, sender, re, kind); None if not a map.

        Read without recursion and without decoding the body, for a frame
        refused before (or while) its header was decoded.
        """
        spans = envelope_fields(frame, _HEADER_KEYS)
        if spans is None:
            return None, (None, None, None, None)
        loose: dict[str, Any] = {}
        for key, span in spans.items():
            try:
                loose[key] = self._header_value.decode(span)
            except (msgspec.DecodeError, ValueError):  # ValueError: bad UTF-8
                continue
        req_id, re_id, sender, type_ = loose.get("id"), loose.get("re"), loose.get("from"), loose.get("type")
        cls = self.catalog.get(type_) if isinstance(type_, str) else None
        return loose, (
            req_id if _is_u63(req_id) else None,
            sender if isinstance(sender, str) and 0 < len(sender) <= MAX_SENDER else None,
            re_id if _is_u63(re_id) else None,
            None if cls is None else cls.KIND,
        )

    def _header_error(self, frame: bytes, text: str) -> ProtocolError:
        """Explain why the envelope header did not validate (error path only)."""
        loose, address = self._header_fields(frame)
        if loose is None:
            return MalformedFrame(f"frame is not an envelope (a MessagePack map): {clip(text, _QUOTE)}")
        version = loose.get("v")
        if isinstance(version, int) and not isinstance(version, bool) and version not in SUPPORTED_VERSIONS:
            return _tag(
                UnsupportedVersion(
                    f"protocol version {version} is not supported (this build speaks {sorted(SUPPORTED_VERSIONS)})",
                    field="v",
                ),
                *address,
            )
        path, text = _field_path("", text)
        return _tag(InvalidMessage(f"invalid envelope: {text} (field {path})", field=path), *address)


_Address = tuple[int | None, str | None, int | None, str | None]
"""A refused frame's id, sender, ``re`` and kind of message type, each if it could be read."""

_HEADER_KEYS = frozenset({"v", "id", "from", "re", "type"})


def _is_u63(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _tag(
    error: ProtocolError, request_id: int | None, sender: str | None, re: int | None, kind: str | None = None
) -> ProtocolError:
    error.request_id = request_id
    error.sender = sender
    error.reply_to = re
    error.message_kind = kind
    return error
