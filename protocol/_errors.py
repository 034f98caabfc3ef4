"""The error hierarchy every layer of awen shares.

One root (`AwenError`), categories by cause. Every error carries a stable
`code` so that it can travel as a ``sys.error`` reply and be recognised by a
client in any language; the codes are listed in docs/protocol.md and never
change meaning.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Stable error codes carried by ``sys.error`` replies."""

    MALFORMED = "malformed"
    INVALID = "invalid"
    UNKNOWN_TYPE = "unknown-type"
    UNSUPPORTED_VERSION = "unsupported-version"
    TOO_LARGE = "too-large"
    NO_HANDLER = "no-handler"
    WRONG_RECIPIENT = "wrong-recipient"
    HANDLER_FAILED = "handler-failed"
    ACTOR_STOPPED = "actor-stopped"
    PEER_LOST = "peer-lost"
    TIMEOUT = "timeout"
    UNKNOWN_PEER = "unknown-peer"
    CONFIG = "config"
    BAD_REQUEST = "bad-request"
    DEVICE_ERROR = "device-error"
    LINK_ERROR = "link-error"
    SAFETY_LIMIT = "safety-limit"
    INTERLOCK = "interlock"
    UNKNOWN_DEVICE = "unknown-device"
    NOT_FOUND = "not-found"
    EXISTS = "exists"
    SLOT_CONFLICT = "slot-conflict"
    BAD_VALUE = "bad-value"
    MEMORY_LIMIT = "memory-limit"
    ILLEGAL_TRANSITION = "illegal-transition"
    STORE_FULL = "store-full"
    STORE_UNAVAILABLE = "store-unavailable"
    INVALID_CIRCUIT = "invalid-circuit"
    UNAVAILABLE = "unavailable"
    STATE_CHANGED = "state-changed"
    NOT_READY = "not-ready"
    DRAINING = "draining"
    QUEUE_FULL = "queue-full"

    @property
    def meaning(self) -> str:
        """One line on what the code means, as docs/protocol.md and the schema say it."""
        return _MEANINGS[self]


_MEANINGS = {
    ErrorCode.MALFORMED: "The bytes are not MessagePack, or not an envelope map.",
    ErrorCode.INVALID: "A field is missing, has the wrong type or an out-of-range value.",
    ErrorCode.UNKNOWN_TYPE: "The envelope names a message type this build of awen does not know.",
    ErrorCode.UNSUPPORTED_VERSION: "The envelope's protocol version is not one this build speaks.",
    ErrorCode.TOO_LARGE: (
        "The frame is longer than the receiver's configured limit, nests deeper or declares more items than "
        "the protocol allows, or the reply would be longer than the frame limit."
    ),
    ErrorCode.NO_HANDLER: "The recipient knows the type but does not handle it.",
    ErrorCode.WRONG_RECIPIENT: "The envelope's `to` names a different actor than the one that got it.",
    ErrorCode.HANDLER_FAILED: "The handler raised an unexpected exception (a bug; the log has the traceback).",
    ErrorCode.ACTOR_STOPPED: "The recipient stopped before it answered.",
    ErrorCode.PEER_LOST: "The peer stopped sending heartbeats, or its process exited.",
    ErrorCode.TIMEOUT: "No reply arrived in time.",
    ErrorCode.UNKNOWN_PEER: "The recipient is not in the sender's directory.",
    ErrorCode.CONFIG: "A configuration value is wrong.",
    ErrorCode.BAD_REQUEST: "The request is well formed but cannot be carried out as asked.",
    ErrorCode.DEVICE_ERROR: "The device refused or failed the command; the message has its SCPI number and text.",
    ErrorCode.LINK_ERROR: "The link to the device failed and the command may or may not have been carried out.",
    ErrorCode.SAFETY_LIMIT: "Refused before reaching the device: a voltage or the total power is over its limit.",
    ErrorCode.INTERLOCK: "The device's power interlock has tripped; heater writes wait for a reset.",
    ErrorCode.UNKNOWN_DEVICE: "No device of that name is configured.",
    ErrorCode.NOT_FOUND: "No job, slot, plan or calibration by that name or number.",
    ErrorCode.EXISTS: "Something by that id is stored already, with different content.",
    ErrorCode.SLOT_CONFLICT: "The slot was written already in this frame; the message names both writers.",
    ErrorCode.BAD_VALUE: "A value has another dtype or shape than its slot; nothing is converted.",
    ErrorCode.MEMORY_LIMIT: "The allocation would take a job (or all jobs) past the configured byte limit.",
    ErrorCode.ILLEGAL_TRANSITION: "The job cannot move from its state to the one asked.",
    ErrorCode.STORE_FULL: "The store's disk (or its configured size) is full; nothing was written.",
    ErrorCode.STORE_UNAVAILABLE: "The store cannot be opened or written; the message says why and what to do.",
    ErrorCode.INVALID_CIRCUIT: "The circuit cannot run on the device; the message lists every problem with its op.",
    ErrorCode.UNAVAILABLE: "Something the request needs (the device, another actor) is not available now.",
    ErrorCode.STATE_CHANGED: "The device's state changed since the version the request expected; set it again.",
    ErrorCode.NOT_READY: "The actor, or what the request needs of it, is starting or recovering: retry with backoff.",
    ErrorCode.DRAINING: "The lab is stopping: nothing new is accepted; submit again once it is back.",
    ErrorCode.QUEUE_FULL: (
        "The queue holds as many jobs as it may (its max_queue, named): submit again once some have run."
    ),
}


class AwenError(Exception):
    """Root of every error awen raises on purpose.

    Attributes:
        code: The stable code sent on the wire for this error.
        field: The offending field as a dotted path (``body.shots``), if any.
    """

    code: ErrorCode = ErrorCode.BAD_REQUEST

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ConfigError(AwenError):
    """A configuration file or value is wrong; the message says which and why."""

    code = ErrorCode.CONFIG


class ProtocolError(AwenError):
    """A frame could not be turned into a valid message.

    Attributes:
        request_id: The frame's message id, when its header could be read.
        sender: The frame's sender, when its header could be read.
        reply_to: The frame's ``re`` (the request a reply answers), when its header could be read.
        message_kind: The kind (``request``, ``notice``, ``reply``, ``event``) of the message type the
            header names, when it could be read and names a known type: a notice, reply or event that
            cannot be read is not answered.
    """

    code = ErrorCode.MALFORMED
    request_id: int | None = None
    sender: str | None = None
    reply_to: int | None = None
    message_kind: str | None = None


class MalformedFrame(ProtocolError):
    code = ErrorCode.MALFORMED


class InvalidMessage(ProtocolError):
    code = ErrorCode.INVALID


class UnknownMessageType(ProtocolError):
    code = ErrorCode.UNKNOWN_TYPE


class UnsupportedVersion(ProtocolError):
    code = ErrorCode.UNSUPPORTED_VERSION


class FrameTooLarge(ProtocolError):
    code = ErrorCode.TOO_LARGE


class DeviceError(AwenError):
    """The device answered a command with an error from its queue.

    Attributes:
        scpi_code: The SCPI (negative) or device-specific (positive) number.
        scpi_text: The device's text for it.
    """

    code = ErrorCode.DEVICE_ERROR

    def __init__(self, scpi_code: int, scpi_text: str, *, command: str = "", device: str = "") -> None:
        where = f"{device}: " if device else ""
        what = f" (after {command!r})" if command else ""
        super().__init__(f"{where}device error {scpi_code}: {scpi_text}{what}")
        self.scpi_code = scpi_code
        self.scpi_text = scpi_text


class LinkError(AwenError):
    """The link to a device failed: dropped, silent past its timeout, or garbled."""

    code = ErrorCode.LINK_ERROR


class SafetyLimitError(AwenError):
    """A request would put a voltage or a total power over its limit; nothing was sent."""

    code = ErrorCode.SAFETY_LIMIT


class NotReady(AwenError):
    """Not yet: the actor (its store, its device, its queue) is starting or recovering.

    Unlike every other refusal this one is not final: the same request, sent
    again a little later, will be served. `actors.Actor.request` retries it with
    backoff until the caller's deadline.
    """

    code = ErrorCode.NOT_READY


class StateChanged(AwenError):
    """The device's state is not the version the request expected: another request changed it since."""

    code = ErrorCode.STATE_CHANGED


class InterlockError(AwenError):
    """The device's power interlock has tripped; heater writes are refused until it is reset."""

    code = ErrorCode.INTERLOCK


class NotFound(AwenError):
    """No job, slot, plan or calibration by that name or number."""

    code = ErrorCode.NOT_FOUND


class Exists(AwenError):
    """Something by that id is stored already, with different content."""

    code = ErrorCode.EXISTS


class IllegalTransition(AwenError):
    """A job cannot move from its state to the one asked."""

    code = ErrorCode.ILLEGAL_TRANSITION


class StoreUnavailable(AwenError):
    """The store cannot be opened or written: corrupt, no permission, newer schema, I/O error."""

    code = ErrorCode.STORE_UNAVAILABLE


class StoreFull(StoreUnavailable):
    """The disk holding the store, or the store's configured size, is full."""

    code = ErrorCode.STORE_FULL
