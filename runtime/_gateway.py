"""A gateway: a second way into an actor, for clients outside the mesh.

An actor's mailbox takes what its peers send to its own name. A gateway is
one more mailbox, with handlers of its own, on a ROUTER bound at several
endpoints at once (an ipc socket and a loopback port share one route space),
with ``ZMQ_ROUTER_HANDOVER`` so that a client that reconnects under its
routing id keeps its route. It may take messages addressed to names other
than the actor's (``recipients``): the door answers requests addressed to the
actors it forwards to. Replies go back as in any mailbox; `Gateway.push` sends
a client a message it did not ask for (an event it subscribed to).

Everything the mailbox does holds here too: frames that cannot be read are
answered with their error and counted, requests are refused while the actor
starts or stops, handlers run inline or as tasks up to ``max_concurrent``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from protocol import Codec, FrameTooLarge, Message, make_envelope

from ._mailbox import Mailbox

log = logging.getLogger("awen.gateway")


class Gateway:
    """A bound gateway: where it listens, and the way to push to a client's route.

    Made by `Actor.open_gateway`; closed when the actor stops.
    """

    def __init__(self, name: str, mailbox: Mailbox, codec: Codec, next_id: Callable[[], int]) -> None:
        self._name = name
        self._mailbox = mailbox
        self._codec = codec
        self._next_id = next_id
        self.pushed = 0
        self.dropped = 0

    @property
    def addresses(self) -> list[str]:
        """The endpoints it is bound at (a ``tcp://...:0`` with its real port)."""
        inbound = self._mailbox.inbound
        return [] if inbound is None else inbound.address.split(", ")

    @property
    def handled(self) -> int:
        return self._mailbox.handled

    @property
    def malformed(self) -> int:
        return self._mailbox.malformed

    def push(self, route: Any, body: Message, *, to: str) -> bool:
        """Send ``body`` to the client at ``route``, in an envelope of its own; False if it could not go."""
        try:
            frame = self._codec.encode(make_envelope(body, sender=self._name, to=to, id=self._next_id()))
        except FrameTooLarge as exc:
            log.warning("%s: a %s for %s is too large to push: %s", self._name, body.TYPE, to, exc)
            self.dropped += 1
            return False
        return self.push_frame(route, frame)

    def push_frame(self, route: Any, frame: bytes) -> bool:
        """Send an encoded frame (an event as its publisher sent it) to the client at ``route``."""
        inbound = self._mailbox.inbound
        if inbound is None:
            self.dropped += 1
            return False
        inbound.reply(route, frame)
        self.pushed += 1
        return True

    def close(self) -> None:
        self._mailbox.close()
