"""Message declarations: the envelope and the four kinds of body.

A message type is declared once, as a frozen `msgspec.Struct` with a class
variable ``TYPE`` naming it on the wire. That one declaration drives encoding,
validation while decoding, and the JSON Schema export.

The four kinds say how a message is used:

* `Request`: sent to one actor, which answers with exactly one reply (its
  ``REPLY`` type, or ``sys.error``).
* `Reply`: the answer to a request; its envelope's ``re`` is the request's ``id``.
* `Notice`: sent to one actor, no reply.
* `Event`: published; every actor that subscribed to a prefix of its type gets it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Generic, TypeVar

import msgspec

PROTOCOL_VERSION = 1
"""The version this build writes in every envelope."""

SUPPORTED_VERSIONS = frozenset({1})
"""The versions this build reads."""


class Message(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every message body.

    Unknown fields are refused rather than ignored: a misspelt optional field
    would otherwise silently take its default.
    """

    TYPE: ClassVar[str]
    KIND: ClassVar[str] = "message"


class Reply(Message, frozen=True, kw_only=True):
    KIND: ClassVar[str] = "reply"


R = TypeVar("R", bound=Reply)


class Request(Message, Generic[R], frozen=True, kw_only=True):
    """A message that expects one reply of type ``REPLY`` (or ``sys.error``)."""

    KIND: ClassVar[str] = "request"
    REPLY: ClassVar[type[Reply]]


class Notice(Message, frozen=True, kw_only=True):
    KIND: ClassVar[str] = "notice"


class Event(Message, frozen=True, kw_only=True):
    KIND: ClassVar[str] = "event"


U63 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""Ids are non-negative and fit a signed 64-bit integer, so every language can hold them."""


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """What travels in every frame.

    Attributes:
        v: Protocol version.
        id: Message id, unique among the sender's messages (an integer in [0, 2**63)).
        type: The body's message type, a dotted name such as ``sys.ping``.
        sender: The sending actor's name (``from`` on the wire).
        to: The recipient actor's name; ``*`` for a published event.
        re: For a reply, the ``id`` of the request it answers; otherwise absent.
        ts: When the message was made, in seconds since the Unix epoch.
        body: The typed body.
    """

    v: int
    id: int
    type: str
    sender: str = msgspec.field(name="from")
    to: str
    re: int | None = None
    ts: float
    body: Any


class RawEnvelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The envelope as first decoded: header checked, body not yet."""

    v: int
    id: U63
    type: str
    sender: str = msgspec.field(name="from")
    to: str
    re: U63 | None = None
    ts: float
    body: msgspec.Raw
