"""pyzmq on trio: one waiter per socket, and a pump that drains it.

pyzmq has no trio support, so this module is the adapter. The pitfalls it
exists to avoid, each of which hangs or slows an event loop:

1. The socket's ``FD`` is edge-triggered: it signals that *something* changed,
   and any call on the socket (a send, a ``getsockopt``) may consume that
   signal. So after every operation we ask ``zmq.EVENTS`` and drain until
   nothing is ready; we wait on the descriptor only when EVENTS says there is
   nothing to do.
2. One task owns the socket: only it waits on the descriptor (trio allows one
   waiter per fd, and two tasks taking turns on a socket measured 3-5x slower).
   Other tasks never wait on it; they put frames in its outbox. Every socket
   call happens inside `ZmqSocket._pump`, a synchronous, non-reentrant
   function, so calls never interleave.
3. ``trio.lowlevel.notify_closing`` precedes ``close``, so no task is left
   waiting on a descriptor that no longer exists.

A task that queues a frame while the owner waits runs the pump itself, at
once: it sends, then checks EVENTS. If the send consumed the fd's signal while
input was waiting, that same pump call takes the input, so the owner's wait
stays correct without a wake-up. While the owner is busy (it just took input
and yields once so the tasks it woke can answer), frames are only queued, and
the owner's next pump sends them together. Waking the owner (by cancelling its wait, which costs an exception,
about 100 us on a 2-core VM) is left for the rare cases: a pump that stopped
after a full batch with input still waiting, a resume, and close. There is no
thread per socket and no polling loop. docs/decisions/0003-zmq-on-trio.md has
the measurements.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import trio
import zmq

log = logging.getLogger("awen.zmq")

Frames = Sequence[bytes]

# Plain ints: pyzmq's constants are enum members, and enum arithmetic on the hot
# path cost more than the socket calls themselves.
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_EVENTS = int(zmq.EVENTS)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
RECV_BATCH = 256
"""Messages one pump call takes before it yields to other tasks."""

PUMP_BUDGET_S = 0.02
"""Seconds one pump call may spend taking messages before it yields, whatever their number: a burst of
frames that are each slow to take (large, or hostile) must not keep heartbeats and replies from running."""


def close_socket(sock: zmq.Socket[Any], *, linger_ms: int = 0) -> None:
    """Close a socket the trio way: wake anything waiting on its fd first."""
    if sock.closed:
        return
    trio.lowlevel.notify_closing(sock.FD)
    sock.close(linger=linger_ms)


class ZmqSocket:
    """A zmq socket, its outbox, and the one task that waits on it.

    Args:
        sock: The socket; from now on only this object touches it.
        name: For logs and statistics.
        on_recv: Called synchronously with each received multipart message.
            It must not raise. It may queue frames on this same socket.
        outbox_limit: Frames queued for sending before `send` waits.
        drop_when_full: Drop a frame zmq refuses with EAGAIN (a ROUTER reply to
            a peer whose queue is full, a PUB event) instead of waiting for
            room; dropped frames are counted.
        linger: Seconds zmq keeps trying to deliver queued frames after close.
        single_part: Every message is one frame (a DEALER talking to awen
            ROUTERs): skip the per-part "more" check. A multipart message
            then arrives as several messages, which the decoder refuses.
        shield: Keep running when the surrounding scope is cancelled, until
            `close` is called: for an owner whose user sends last messages
            while it stops (an actor's teardown). Whoever sets it must close.
    """

    def __init__(
        self,
        sock: zmq.Socket[Any],
        *,
        name: str,
        on_recv: Callable[[list[bytes]], None] | None = None,
        outbox_limit: int = 1000,
        drop_when_full: bool = False,
        linger: float = 1.0,
        single_part: bool = False,
        shield: bool = False,
    ) -> None:
        self.sock = sock
        self._single_part = single_part
        self._shield = shield
        self.name = name
        self._fd = sock.FD
        self._on_recv = on_recv
        self._outbox: deque[Frames] = deque()
        self._limit = outbox_limit
        self._drop_when_full = drop_when_full
        self._linger_ms = int(linger * 1000)
        self._space = trio.lowlevel.ParkingLot()
        self._wait_scope: trio.CancelScope | None = None
        self._pumping = False
        self._owner_busy = False
        self._paused = on_recv is None
        self._closing = False
        self._closed = trio.Event()
        self.sent = 0
        self.received = 0
        self.dropped = 0
        self.wakeups = 0

    # --- called by any task -------------------------------------------------------------

    def send_nowait(self, frames: Frames) -> None:
        """Queue a multipart message and send what can be sent now.

        Raises:
            trio.WouldBlock: the outbox is full.
            trio.ClosedResourceError: the socket is closing.
        """
        if self._closing:
            raise trio.ClosedResourceError(f"{self.name}: socket is closed")
        if len(self._outbox) >= self._limit:
            raise trio.WouldBlock
        self._outbox.append(frames)
        if not self._owner_busy and self._pump():
            self._wake()

    async def send(self, frames: Frames) -> None:
        """Queue a multipart message, waiting while the outbox is full.

        Only waits (and so only checkpoints) when the outbox is full; the
        caller awaits the reply or its next message anyway.
        """
        while True:
            try:
                self.send_nowait(frames)
                return
            except trio.WouldBlock:
                await self._space.park()

    def control(self, operation: Callable[[zmq.Socket[Any]], object]) -> None:
        """Run ``operation(socket)`` (connect, subscribe, ...) and re-check the socket."""
        if self._closing:
            raise trio.ClosedResourceError(f"{self.name}: socket is closed")
        operation(self.sock)
        if not self._owner_busy and self._pump():
            self._wake()

    def poll(self) -> None:
        """Take what has arrived and send what is queued, now, rather than on the owner's next turn."""
        if not self._closing and not self._owner_busy and self._pump():
            self._wake()

    def pause_reading(self) -> None:
        """Stop taking messages off the socket; zmq's queue (and HWM) holds them."""
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused and self._on_recv is not None and not self._closing:
            self._paused = False
            if self._pump():
                self._wake()

    def close(self) -> None:
        """Ask the owner to send what it can without waiting, then close.

        Safe to call from any task, any number of times; `wait_closed` waits.
        """
        if not self._closing:
            self._closing = True
            self._wake()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def statistics(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "received": self.received,
            "dropped": self.dropped,
            "queued": len(self._outbox),
            "wakeups": self.wakeups,
        }

    def _wake(self) -> None:
        scope = self._wait_scope
        if scope is not None:
            self._wait_scope = None
            scope.cancel()

    # --- the pump: the only code that calls the socket --------------------------------------

    def _pump(self) -> bool:
        """Send queued frames and take received ones until the socket has nothing ready.

        Returns True if it stopped after a full batch with input still waiting:
        then the fd will not signal again, and the owner must come round.
        """
        if self._pumping or self._closing:
            return False  # the pump up the stack, or the closing owner, will see to it
        self._pumping = True
        try:
            sock = self.sock
            outbox = self._outbox
            deadline = time.monotonic() + PUMP_BUDGET_S
            for _ in range(RECV_BATCH):
                if outbox:
                    self._flush(sock, outbox)
                events: int = sock.getsockopt(_EVENTS)  # type: ignore[assignment]
                if events & _POLLIN and not self._paused:
                    # Frame.more reads the message's flag; sock.recv_multipart
                    # asks the socket (getsockopt) per part, 3x slower here.
                    try:
                        if self._single_part:
                            frames = [sock.recv(_NOBLOCK)]
                        else:
                            part = sock.recv(_NOBLOCK, copy=False)
                            frames = [part.bytes]
                            while part.more:
                                part = sock.recv(_NOBLOCK, copy=False)
                                frames.append(part.bytes)
                    except zmq.Again:
                        continue
                    self.received += 1
                    self._on_recv(frames)  # type: ignore[misc]
                    if time.monotonic() > deadline:
                        return True  # the owner comes round after a checkpoint
                elif outbox and events & _POLLOUT:
                    continue
                else:
                    return False
            return True
        finally:
            self._pumping = False

    def _flush(self, sock: zmq.Socket[Any], outbox: deque[Frames]) -> None:
        was_full = len(outbox) >= self._limit
        while outbox:
            frames = outbox[0]
            try:
                # A multipart message is atomic in zmq: if the first part goes,
                # the rest go too, so EAGAIN can only come on the first.
                last = len(frames) - 1
                for i, part in enumerate(frames):
                    sock.send(part, _NOBLOCK | _SNDMORE if i < last else _NOBLOCK)
            except zmq.Again:
                if not self._drop_when_full:
                    break
                self.dropped += 1
            except zmq.ZMQError as exc:  # EHOSTUNREACH: a ROUTER peer that left
                self.dropped += 1
                log.debug("%s: dropped a message: %s", self.name, exc)
            else:
                self.sent += 1
            outbox.popleft()
        if was_full and len(outbox) < self._limit:
            self._space.unpark_all()

    # --- the owner ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wait on the socket and pump it, until `close` is called (or, unless
        shielded, until cancelled)."""
        task_status.started()
        try:
            with trio.CancelScope(shield=self._shield):
                while not self._closing:
                    # One scope per wake-up by cancellation, not per wait:
                    # entering a cancel scope is itself a cost on this path.
                    with trio.CancelScope() as scope:
                        self._wait_scope = scope
                        while not self._closing:
                            self._owner_busy = True
                            received = self.received
                            if self._pump() or self.received != received:
                                # Input came: the tasks it woke will queue
                                # replies and requests now. Let them run, and
                                # meanwhile they only queue (the owner is
                                # busy); the next pump sends them all with
                                # one EVENTS check instead of one per frame.
                                await trio.lowlevel.checkpoint()
                                continue
                            self._owner_busy = False
                            # EVENTS said nothing is ready, and nothing ran
                            # since: the fd will signal on the next change.
                            await trio.lowlevel.wait_readable(self._fd)
                            self.wakeups += 1
                    self._wait_scope = None
                    self._owner_busy = False
        finally:
            self._closing = True
            self._wait_scope = None
            self._last_flush()
            close_socket(self.sock, linger_ms=self._linger_ms)
            self._space.unpark_all()
            self._closed.set()

    def _last_flush(self) -> None:
        """Hand zmq what it will take without waiting; it delivers during linger."""
        outbox = self._outbox
        while outbox:
            try:
                self.sock.send_multipart(outbox[0], _NOBLOCK, copy=False)
                self.sent += 1
            except zmq.ZMQError:
                self.dropped += 1
            outbox.popleft()
