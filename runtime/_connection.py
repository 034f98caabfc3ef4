"""A client's one way into a lab: a DEALER to the door, requests matched to replies by id, pushes to a callback.

Not an actor: one address where the door's ROUTER answers (docs/decisions/0014 §1, §4). ZeroMQ reconnects by
itself; a lost request raises `RequestTimeout` and the caller asks again (requests are idempotent at the door).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
import zmq

from protocol import Codec, Envelope, InvalidMessage, Notice, ProtocolError, Reply, Request, make_envelope
from protocol.system import Error

from ._errors import RemoteError, RequestTimeout
from ._logging import RateLimitedLog
from ._transport import Transport
from ._zmq import ZmqSocket

log = logging.getLogger("awen.connection")

R = TypeVar("R", bound=Reply)

RECONNECT_IVL_MS, RECONNECT_IVL_MAX_MS = 100, 1000
"""ZeroMQ retries a lost connection after 100 ms, doubling to 1 s: a restarted daemon is found within a second."""


@dataclass(slots=True)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    reply: Envelope | None = None
    error: Exception | None = None


class Connection:
    """One DEALER to one address, with the requests pending on it.

    Args:
        address: Where the door listens (``tcp://127.0.0.1:PORT`` or ``ipc://PATH``).
        name: The sender of every envelope this client sends.
        codec: Encodes requests, decodes replies and pushes (the runtime knows no catalog: the caller brings it).
        hwm: zmq's SNDHWM and RCVHWM, and the frames queued before `request` waits.
        max_frame_bytes: The codec's limit unless given; zmq cuts a peer that sends frames over four times this.
        on_push: Given every envelope that answers no pending request: the door's events, late replies.
        context: The zmq context; the process's shared instance unless given.

    Attributes:
        routing_id: Random; the door's ``ROUTER_HANDOVER`` gives a client reconnecting with it its old route.
        malformed: Frames that could not be read (logged, a few per interval; never raised).
        late_replies: Frames whose ``re`` named no pending request (they went to ``on_push``).
        pushed: Envelopes handed to ``on_push``.
    """

    def __init__(
        self,
        address: str,
        *,
        name: str,
        codec: Codec,
        hwm: int = 1000,
        max_frame_bytes: int | None = None,
        on_push: Callable[[Envelope], None] | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.address = address
        self.name = name
        self._codec = codec
        self._hwm = hwm
        self._max_frame = codec.max_frame_bytes if max_frame_bytes is None else max_frame_bytes
        self._on_push = on_push
        self._context = context
        self.routing_id = b"c-" + random.randbytes(12).hex().encode()
        ids = itertools.count(random.getrandbits(62))
        self._next_id: Callable[[], int] = lambda: next(ids) & (2**63 - 1)
        self._owner: ZmqSocket | None = None
        self._closed = False
        self._pending: dict[int, _Pending] = {}
        self._bad_frames = RateLimitedLog(log)
        self.malformed = self.late_replies = self.pushed = 0

    @property
    def pending(self) -> int:
        """Requests waiting for their reply now."""
        return len(self._pending)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the socket, pump it until cancelled or `close`d, then close it and fail what is pending."""
        if self._closed or self._owner is not None:
            raise trio.ClosedResourceError(f"connection to {self.address} is closed, or already running")
        context = self._context or zmq.Context.instance()
        transport = Transport(context=context, local=None, hwm=self._hwm, linger=0, max_frame_bytes=self._max_frame)
        sock = transport.socket(zmq.DEALER)  # its HWM, MAXMSGSIZE and LINGER, as for an actor's peers
        try:
            sock.setsockopt(zmq.ROUTING_ID, self.routing_id)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            sock.connect(self.address)  # no IMMEDIATE: sent while the door is down, a frame waits for it in zmq
        except BaseException:
            sock.close(linger=0)
            raise
        name = f"connection {self.address}"
        self._owner = ZmqSocket(
            sock, name=name, on_recv=self._on_recv, outbox_limit=self._hwm, linger=0, single_part=True
        )
        try:
            await self._owner.run(task_status=task_status)
        finally:
            self._closed = True
            for pending in self._pending.values():
                if not pending.done.is_set():
                    pending.error = trio.ClosedResourceError(f"connection to {self.address} closed")
                    pending.done.set()

    def close(self) -> None:
        """Stop `run` (it closes the socket and fails what is pending); safe to call any number of times."""
        self._closed = True
        if self._owner is not None:
            self._owner.close()

    async def request(self, to: str, body: Request[R], *, timeout: float | None = None) -> R:  # noqa: ASYNC109
        """Send ``body`` to the actor ``to`` and return its reply.

        ``timeout``, not `trio.fail_after` (also honoured): its end is a `RequestTimeout` naming the request.

        Raises:
            RemoteError: the answer was ``sys.error`` (its ``code``, message and field), or could not be read.
            RequestTimeout: no answer within ``timeout`` seconds (None: wait for ever, or the caller's deadline).
            InvalidMessage: the answer was of another type than the request's ``REPLY``.
            trio.ClosedResourceError: the connection is not running, or closed while waiting.
        """
        owner = self._open_owner()
        msg_id = self._next_id()
        frame = self._codec.encode(make_envelope(body, sender=self.name, to=to, id=msg_id))
        pending = self._pending[msg_id] = _Pending()
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        try:
            with trio.move_on_at(deadline):
                await owner.send((frame,))
                await pending.done.wait()
        finally:
            del self._pending[msg_id]
        if pending.error is not None:
            raise pending.error
        if pending.reply is None:
            raise RequestTimeout(f"no reply from {to} at {self.address} to {body.TYPE} within {timeout:g} s")
        reply = pending.reply.body
        if isinstance(reply, Error):
            raise RemoteError(reply.code, reply.message, field=reply.field, peer=to)
        if not isinstance(reply, type(body).REPLY):
            raise InvalidMessage(f"{to} answered {body.TYPE} with {reply.TYPE}", field="type")
        return reply  # type: ignore[return-value]  # REPLY is the runtime side of R

    async def send(self, to: str, body: Notice) -> None:
        """Send a notice; waits only while ``hwm`` frames are already queued."""
        frame = self._codec.encode(make_envelope(body, sender=self.name, to=to, id=self._next_id()))
        await self._open_owner().send((frame,))

    def _open_owner(self) -> ZmqSocket:
        if self._owner is None or self._closed:
            raise trio.ClosedResourceError(
                f"connection to {self.address} is not running: nursery.start(connection.run)"
            )
        return self._owner

    def _on_recv(self, frames: list[bytes]) -> None:
        """Take one frame: wake its request, or push it; called by the socket's task, so never raises."""
        try:
            env = self._codec.decode(frames[-1])
        except ProtocolError as exc:
            self.malformed += 1
            self._bad_frames.warning("%s: refused a frame of %d bytes: %s", self.address, len(frames[-1]), exc)
            pending = self._pending.get(exc.reply_to) if exc.reply_to is not None else None
            if pending is not None and not pending.done.is_set():
                # An unreadable reply still says which request it answers: that request fails now, not at its timeout.
                why = f"its reply could not be read: {exc.message}"
                pending.error = RemoteError(exc.code, why, field=exc.field, peer=self.address)
                pending.done.set()
            return
        pending = self._pending.get(env.re) if env.re is not None else None
        if pending is not None and not pending.done.is_set():
            pending.reply = env
            pending.done.set()
            return
        if env.re is not None:
            self.late_replies += 1
        if self._on_push is not None:
            self.pushed += 1
            try:
                self._on_push(env)
            except Exception:
                log.exception("%s: on_push failed on %s", self.address, env.type)
