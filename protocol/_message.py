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

MAX_TYPE = 64
"""The longest message type name."""

MAX_SENDER = 256
"""The longest ``from`` and ``to``: a client names itself as it likes, within this."""

FLOAT_MAX = 1.7976931348623157e308
"""The largest finite float64: ``ge=-FLOAT_MAX, le=FLOAT_MAX`` is how a field says it must be finite."""

TypeName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TYPE)]
Peer = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SENDER)]

# --- what fields may hold: every number has a range, every string and list a length -------------
#
# The limits are the protocol's (docs/protocol.md, "Limits"): a frame outside them is refused
# with ``invalid`` naming the field, before any handler runs, so that no number a client
# chooses can overflow a store column or an allocation.

I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""Any signed 64-bit integer (what SQLite's INTEGER holds)."""

Count = U63
"""Counters, sequence numbers, sizes in bytes: 0 to 2**63 - 1."""

Index = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
"""Positions in a plan or on a chip (phases, heaters, detector columns): 0 to 2**31 - 1."""

Pid = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
"""An operating-system process id."""

Finite = Annotated[float, msgspec.Meta(ge=-FLOAT_MAX, le=FLOAT_MAX)]
"""A float that is neither infinite nor NaN."""

Timestamp = Finite
"""Seconds since the Unix epoch, finite."""

NonNegative = Annotated[float, msgspec.Meta(ge=0, le=FLOAT_MAX)]
"""A float that is finite and not negative."""

Seconds = NonNegative
"""A duration: finite and not negative."""

Priority = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
"""A job's priority: higher runs first."""

MAX_LABEL = 256
MAX_REASON = 4096
MAX_TEXT = 65536

Label = Annotated[str, msgspec.Meta(max_length=MAX_LABEL)]
"""A short free-form name (an executor, a writer, a condition): at most 256 characters."""

Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON)]
"""Why something happened, for a human: at most 4096 characters."""

Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
"""Longer free text (a note, a path, a device's detail): at most 65536 characters."""


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What travels in every frame.

    Only ``trace`` has a default, and it is left out of the frame when it is
    None: a frame without a trace is the same bytes as before there were
    traces, and every reader of protocol version 1 takes it. ``re`` is always
    written (nil when absent), as it always was.

    Attributes:
        v: Protocol version.
        id: Message id, unique among the sender's messages (an integer in [0, 2**63)).
        type: The body's message type, a dotted name such as ``sys.ping``.
        sender: The sending actor's name (``from`` on the wire).
        to: The recipient actor's name; ``*`` for a published event.
        re: For a reply, the ``id`` of the request it answers; otherwise None.
        trace: The id of the client request this message descends from;
            carried by every message sent while handling it (decision 0015 §3).
        ts: When the message was made, in seconds since the Unix epoch.
        body: The typed body.
    """

    v: int
    id: U63
    type: TypeName
    sender: Peer = msgspec.field(name="from")
    to: Peer
    re: U63 | None
    trace: U63 | None = None
    ts: Timestamp
    body: Any


class RawEnvelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The envelope as first decoded: header checked, body not yet."""

    v: int
    id: U63
    type: TypeName
    sender: Peer = msgspec.field(name="from")
    to: Peer
    re: U63 | None = None
    trace: U63 | None = None
    ts: Timestamp
    body: msgspec.Raw
