"""How a job's run stops short: it fails, it is interrupted, or it was never accepted.

- `Failed` ends the job failed, with a reason; the device is made safe.
- `PeerDown`: an actor the job needs (memory, HAL, scheduler) died or went
  silent. The job is *interrupted*, not failed: the executor waits for the
  actor and resumes the job from its journal (decision 0012).
- `NotAccepted`: a job handed out while its acceptance committed was refused
  by the store, so it was never accepted: it is dropped, no end recorded
  (decision 0009).

`ask` is a request to an actor the job needs, which turns that actor's loss
into a `PeerDown`.
"""

from __future__ import annotations

from typing import Any

from protocol import ErrorCode
from runtime import Actor, PeerLostError, RemoteError, RequestTimeout

TRANSIENT = {
    ErrorCode.LINK_ERROR,
    ErrorCode.TIMEOUT,
    ErrorCode.DEVICE_ERROR,
    ErrorCode.PEER_LOST,
    ErrorCode.UNAVAILABLE,
    ErrorCode.STATE_CHANGED,
    ErrorCode.NOT_READY,
}
"""Error codes worth another try: the link, a slow reply, a device error from a glitch, a device not
connected yet, and another client changing the device under the job (it is set up again first)."""

GONE = {ErrorCode.ACTOR_STOPPED, ErrorCode.PEER_LOST}
"""Answers that say the peer itself went away (it stopped before answering): the job waits for it to come back."""


class Failed(Exception):
    """Ends a job as failed with a reason (the device is made safe)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PeerDown(Exception):
    """An actor the job needs died (or stopped answering): the job resumes from its journal once it is back."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer = peer


class NotAccepted(Exception):
    """A job dispatched while its acceptance committed was refused by the store: it was never accepted."""


async def ask(actor: Actor, peer: str, request: Any) -> Any:
    """A request to an actor the job needs: if it is lost or silent, the job is interrupted (`PeerDown`)."""
    try:
        return await actor.request(peer, request)
    except (PeerLostError, RequestTimeout) as exc:
        raise PeerDown(peer, str(exc)) from None
    except RemoteError as exc:
        if exc.code in GONE:
            raise PeerDown(peer, exc.message) from None
        raise
