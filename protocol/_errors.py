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

    @property
    def meaning(self) -> str:
        """One line on what the code means, as docs/protocol.md and the schema say it."""
        return _MEANINGS[self]


_MEANINGS = {
    ErrorCode.MALFORMED: "The bytes are not MessagePack, or not an envelope map.",
    ErrorCode.INVALID: "A field is missing, has the wrong type or an out-of-range value.",
    ErrorCode.UNKNOWN_TYPE: "The envelope names a message type this build of awen does not know.",
    ErrorCode.UNSUPPORTED_VERSION: "The envelope's protocol version is not one this build speaks.",
    ErrorCode.TOO_LARGE: "The frame is longer than the receiver's configured limit.",
    ErrorCode.NO_HANDLER: "The recipient knows the type but does not handle it.",
    ErrorCode.WRONG_RECIPIENT: "The envelope's `to` names a different actor than the one that got it.",
    ErrorCode.HANDLER_FAILED: "The handler raised an unexpected exception (a bug; the log has the traceback).",
    ErrorCode.ACTOR_STOPPED: "The recipient stopped before it answered.",
    ErrorCode.PEER_LOST: "The peer stopped sending heartbeats, or its process exited.",
    ErrorCode.TIMEOUT: "No reply arrived in time.",
    ErrorCode.UNKNOWN_PEER: "The recipient is not in the sender's directory.",
    ErrorCode.CONFIG: "A configuration value is wrong.",
    ErrorCode.BAD_REQUEST: "The request is well formed but cannot be carried out as asked.",
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
    """

    code = ErrorCode.MALFORMED
    request_id: int | None = None
    sender: str | None = None


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
