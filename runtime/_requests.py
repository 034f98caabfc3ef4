"""What an actor asks of others: requests out, their replies back, and notices.

Each request is *pending* until its reply comes, its peer is declared lost or
restarts, or its deadline passes. The runtime's deadline (``request_timeout``)
is enforced by one sweeper task for every request, far cheaper than a cancel
scope each; whether the caller has a deadline of its own is asked only once
the runtime's has passed, and then the caller's rules. A peer that answers
``not-ready`` is asked again, with `NOT_READY_BACKOFF`, until the deadline.
What goes out carries the trace of the message being handled (`runtime._trace`).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from protocol import (
    AwenError,
    Backoff,
    Codec,
    Envelope,
    ErrorCode,
    InvalidMessage,
    Notice,
    ProtocolError,
    Reply,
    Request,
    make_envelope,
)
from protocol.system import Error

from ._config import Runtime
from ._errors import ActorStoppedError, RemoteError, RequestTimeout, UnknownPeer
from ._logging import RateLimitedLog
from ._trace import current_trace, traced
from ._transport import Outbound, Transport

log = logging.getLogger("awen.actor")

R = TypeVar("R", bound=Reply)

NOT_READY_BACKOFF = Backoff(first=0.02, longest=1.0, jitter=0.5)
"""How long to wait before a request answered ``not-ready`` is sent again: doubling, with jitter."""


@dataclass(slots=True)
class _Pending:
    peer: str
    type: str
    sent_at: float
    deadline: float = math.inf
    expired: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    reply: Envelope | None = None
    error: AwenError | None = None


class Requests:
    """An actor's way to its peers (one outbound endpoint each) and the requests pending on them.

    Args:
        name: The actor's name, the sender of what it sends.
        runtime: Where the peers are (its directory) and the ``request_timeout``.
        codec: Encodes what goes out, decodes the replies.
        next_id: The actor's envelope ids.
        why_silent: Says, for a peer that did not answer, what this actor
            knows of it (for the timeout's message).
        bad_frames: Where replies that cannot be read are logged.

    Attributes:
        late_replies: Replies that came after their request had given up.
        malformed: Replies that could not be read, or whose reading failed.
    """

    def __init__(
        self,
        name: str,
        runtime: Runtime,
        codec: Codec,
        *,
        next_id: Callable[[], int],
        why_silent: Callable[[str], str],
        bad_frames: RateLimitedLog,
    ) -> None:
        self._name = name
        self._directory = runtime.directory
        self._timeout = runtime.options.request_timeout
        self._codec = codec
        self._next_id = next_id
        self._why_silent = why_silent
        self._bad_frames = bad_frames
        self._transport: Transport | None = None
        self._io: trio.Nursery | None = None
        self._outbound: dict[str, Outbound] = {}
        self._pending: dict[int, _Pending] = {}
        self._deadlines: deque[_Pending] = deque()
        self._deadlines_added = trio.lowlevel.ParkingLot()
        self.late_replies = 0
        self.malformed = 0

    @property
    def pending(self) -> int:
        """Requests waiting for their reply now."""
        return len(self._pending)

    def open(self, transport: Transport, io: trio.Nursery) -> None:
        """From now on, connect to peers through ``transport``, their endpoints' tasks running in ``io``."""
        self._transport, self._io = transport, io

    def close(self) -> None:
        for outbound in self._outbound.values():
            outbound.close()

    def _outbound_to(self, peer: str) -> Outbound:
        outbound = self._outbound.get(peer)
        if outbound is None:
            address = self._directory.get(peer)
            if address is None:
                known = ", ".join(sorted(self._directory)) or "none"
                raise UnknownPeer(f"{peer!r} is not in {self._name}'s directory (known: {known})")
            if self._io is None or self._transport is None:
                raise ActorStoppedError(f"{self._name} is not running; start it with nursery.start(actor.run)")
            with traced(None):  # its tasks serve every request to this peer, not the one that opened it
                outbound = self._transport.connect(self._io, address.address, self.on_reply)
            self._outbound[peer] = outbound
        return outbound

    # --- asking -----------------------------------------------------------------------------

    async def request(self, to: str, body: Request[R]) -> R:
        """Send a request and return its reply; `Actor.request` says how deadlines and errors go."""
        reply = await self._request_once(to, body)
        began = trio.current_time()
        waits = NOT_READY_BACKOFF.delays()
        while isinstance(reply, RemoteError):  # not-ready: ask again, unless the wait would pass the deadline
            wait = next(waits)
            if trio.current_effective_deadline() == math.inf and trio.current_time() + wait > began + self._timeout:
                raise reply
            await trio.sleep(wait)
            reply = await self._request_once(to, body)
        return reply

    async def _request_once(self, to: str, body: Request[R]) -> R | RemoteError:
        """One request and its reply; a ``not-ready`` answer is returned (to be asked again), any other raised."""
        outbound = self._outbound_to(to)
        msg_id = self._next_id()
        frame = self._codec.encode(make_envelope(body, sender=self._name, to=to, id=msg_id, trace=current_trace.get()))
        now = trio.current_time()
        pending = _Pending(to, body.TYPE, now, now + self._timeout)
        self._pending[msg_id] = pending
        self._deadlines.append(pending)
        if len(self._deadlines) == 1:
            self._deadlines_added.unpark_all()
        try:
            try:
                outbound.send_nowait(frame)
            except trio.WouldBlock:
                # The peer's queue is full or it is not there yet: wait, but not past the deadline.
                sent = False
                with trio.move_on_at(_own_deadline(pending)):
                    await outbound.send(frame)
                    sent = True
                if not sent:
                    pending.error = RequestTimeout(self._timeout_message(to, body.TYPE))
            while pending.error is None and pending.reply is None:
                await pending.done.wait()
                if pending.expired and pending.reply is None and pending.error is None:
                    if trio.current_effective_deadline() == math.inf:
                        pending.error = RequestTimeout(self._timeout_message(to, body.TYPE))
                    else:  # the caller set a deadline: it rules, and may be later
                        pending.expired, pending.done = False, trio.Event()
        finally:
            del self._pending[msg_id]
            pending.done.set()
        if pending.error is not None:
            raise pending.error
        assert pending.reply is not None
        reply = pending.reply.body
        if isinstance(reply, Error):
            error = RemoteError(reply.code, reply.message, field=reply.field, peer=to)
            if reply.code == ErrorCode.NOT_READY:
                return error
            raise error
        expected = type(body).REPLY
        if not isinstance(reply, expected):
            raise InvalidMessage(f"{to} answered {body.TYPE} with {reply.TYPE}, expected {expected.TYPE}", field="type")
        return reply  # type: ignore[return-value]  # REPLY is the runtime side of R

    def _timeout_message(self, to: str, msg_type: str) -> str:
        return f"no reply from {to} to {msg_type} within {self._timeout:g} s: {self._why_silent(to)}"

    async def send(self, to: str, body: Notice) -> None:
        """Send a notice; `Actor.send` says how long it may wait."""
        outbound = self._outbound_to(to)
        env = make_envelope(body, sender=self._name, to=to, id=self._next_id(), trace=current_trace.get())
        frame = self._codec.encode(env)
        try:
            outbound.send_nowait(frame)
        except trio.WouldBlock:
            ceiling = self._timeout if trio.current_effective_deadline() == math.inf else math.inf
            with trio.move_on_after(ceiling):
                await outbound.send(frame)
                return
            raise RequestTimeout(
                f"could not hand {body.TYPE} to {to} within {ceiling:g} s: {self._why_silent(to)}"
            ) from None

    # --- replies, deadlines, failures -------------------------------------------------------

    def on_reply(self, frame: bytes) -> None:
        """Take one reply; called by an outbound endpoint's receiving task."""
        try:
            self._receive_reply(frame)
        except Exception:
            self.malformed += 1
            log.exception("%s: could not take a reply of %d bytes; dropped it", self._name, len(frame))

    def _receive_reply(self, frame: bytes) -> None:
        try:
            env = self._codec.decode(frame)
        except ProtocolError as exc:
            self.malformed += 1
            self._bad_frames.warning("%s: refused %s frame: %s", self._name, "a reply", exc)
            if exc.reply_to is not None:
                # A reply that cannot be read still says which request it answers:
                # that request fails now, with the reason, rather than at its timeout.
                pending = self._pending.get(exc.reply_to)
                if pending is not None and not pending.done.is_set():
                    pending.error = RemoteError(
                        exc.code, f"its reply could not be read: {exc.message}", field=exc.field, peer=pending.peer
                    )
                    pending.done.set()
            return
        pending = self._pending.get(env.re) if env.re is not None else None
        if pending is None or pending.done.is_set():
            self.late_replies += 1
            log.debug("%s: reply %s to %s arrived after its request gave up", self._name, env.type, env.re)
            return
        pending.reply = env
        pending.done.set()

    async def sweep_deadlines(self) -> None:
        """Fail requests that outlive the runtime's ``request_timeout`` (a task for as long as the actor runs).

        Deadlines are appended in order (one timeout for all), so only the
        oldest unanswered request matters; answered ones are dropped lazily.
        """
        queue = self._deadlines
        while True:
            while queue and queue[0].done.is_set():
                queue.popleft()
            if not queue:
                await self._deadlines_added.park()
                continue
            first = queue[0]
            if first.deadline > trio.current_time():
                await trio.sleep_until(first.deadline)
                continue
            queue.popleft()
            first.expired = True  # the waiting caller decides: it may have a deadline of its own
            first.done.set()

    def fail_to(self, peer: str, error: AwenError, *, sent_before: float = math.inf) -> None:
        """Fail at once every request pending on ``peer`` (sent before ``sent_before``) with ``error``."""
        self._fail(lambda p: p.peer == peer and p.sent_at < sent_before, error)

    def fail_all(self, error: AwenError) -> None:
        self._fail(lambda p: True, error)

    def _fail(self, which: Callable[[_Pending], bool], error: AwenError) -> None:
        for pending in self._pending.values():
            if not pending.done.is_set() and which(pending):
                pending.error = error
                pending.done.set()


def _own_deadline(pending: _Pending) -> float:
    """The runtime's deadline if the caller has none of its own; else the caller's rules (no limit here)."""
    return pending.deadline if trio.current_effective_deadline() == math.inf else math.inf
