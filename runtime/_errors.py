"""Errors of talking to other actors."""

from __future__ import annotations

from protocol import AwenError, ErrorCode


class RequestTimeout(AwenError):
    """No reply came within the runtime's ``request_timeout``."""

    code = ErrorCode.TIMEOUT


class PeerLostError(AwenError):
    """The peer was declared lost while a request to it was pending."""

    code = ErrorCode.PEER_LOST


class UnknownPeer(AwenError):
    """The name is not in this actor's directory."""

    code = ErrorCode.UNKNOWN_PEER


class ActorStoppedError(AwenError):
    """This actor is stopping and takes no more work."""

    code = ErrorCode.ACTOR_STOPPED


class RemoteError(AwenError):
    """The peer answered a request with ``sys.error``.

    Attributes:
        code: The code from the reply: usually an `ErrorCode` value, though a
            newer peer may send codes this build does not know.
        peer: Who answered.
    """

    def __init__(self, code: str, message: str, *, field: str | None, peer: str) -> None:
        super().__init__(f"{peer}: {message} [{code}]", field=field)
        self.code = code  # type: ignore[assignment]
        self.remote_message = message
        self.peer = peer
