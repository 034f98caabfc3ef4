"""Events: published to whoever subscribed, this actor's own subscribers included; received from peers.

An event goes out on the actor's publisher (an XPUB socket, or a ``mem://``
fan-out) only if a subscriber there takes its type, and is encoded only
then; most of a job's play-by-play has nobody listening. The actor's own
subscribers get it at once, without the wire. Events that arrive from peers
feed liveness first (heartbeats, stop notices, exits), then the subscribers.
An event carries the trace of the message being handled when it was
published; its subscribers run with that trace (or, if it has none, the
event's id) and its body's ``job`` set (`runtime._trace`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from protocol import Codec, Envelope, Event, ProtocolError, make_envelope

from ._handlers import EventHandler
from ._lifecycle import Lifecycle
from ._liveness import Liveness
from ._logging import RateLimitedLog
from ._trace import current_job, current_trace, job_of
from ._transport import Publisher, Subscriber, Transport, scheme_of

log = logging.getLogger("awen.actor")


class Events:
    """An actor's publisher, its subscriber endpoint, and its subscriptions by event-type prefix.

    Args:
        name: The actor's name, the sender of what it publishes.
        codec: Encodes what goes out, decodes what comes in.
        next_id: The actor's envelope ids.
        life: Whether the actor runs (and where async subscribers run), or stops.
        liveness: Learns from each event that arrives, before the subscribers.
        bad_frames: Where events that cannot be read are logged.

    Attributes:
        malformed: Events that could not be read, or whose reading failed.
    """

    def __init__(
        self,
        name: str,
        codec: Codec,
        *,
        next_id: Callable[[], int],
        life: Lifecycle,
        liveness: Liveness,
        bad_frames: RateLimitedLog,
    ) -> None:
        self._name = name
        self._codec = codec
        self._next_id = next_id
        self._life = life
        self._liveness = liveness
        self._bad_frames = bad_frames
        self._subscriptions: list[tuple[str, EventHandler]] = []
        self._mine: dict[str, bool] = {}
        """Event types this actor's own subscriptions take (kept until they change)."""
        self._publisher: Publisher | None = None
        self._subscriber: Subscriber | None = None
        self._soon: list[Envelope] = []
        self.malformed = 0

    @property
    def publishing(self) -> bool:
        """Whether the actor has a publisher (it has an address)."""
        return self._publisher is not None

    async def bind(self, transport: Transport, io: trio.Nursery, address: str) -> None:
        """Open the publisher at ``address``."""
        self._publisher = await transport.publisher(io, address)

    def connect(self, transport: Transport, io: trio.Nursery, addresses: Iterable[str]) -> None:
        """Open the subscriber endpoint and connect it to the peers' publishers at ``addresses`` it can reach."""
        self._subscriber = transport.subscriber(io, self.on_event)
        for prefix in {*Liveness.WATCHED, *(prefix for prefix, _ in self._subscriptions)}:
            self._subscriber.subscribe(prefix.encode())
        for address in addresses:
            if scheme_of(address) != "mem" or transport.local is not None:
                self._subscriber.connect(address)

    def close(self) -> None:
        for endpoint in (self._publisher, self._subscriber):
            if endpoint is not None:
                endpoint.close()

    # --- subscriptions ----------------------------------------------------------------------

    def subscribe(self, prefix: str, handler: EventHandler) -> None:
        self._subscriptions.append((prefix, handler))
        self._mine.clear()
        if self._subscriber is not None:
            self._subscriber.subscribe(prefix.encode())

    def unsubscribe(self, handler: EventHandler) -> None:
        self._subscriptions = [(p, h) for p, h in self._subscriptions if h != handler]
        self._mine.clear()

    @asynccontextmanager
    async def open_stream(self, prefix: str, capacity: int) -> AsyncIterator[trio.MemoryReceiveChannel[Envelope]]:
        """Events whose type starts with ``prefix``, as a channel, while the block runs (`Actor.open_event_stream`)."""
        send, receive = trio.open_memory_channel[Envelope](capacity)

        def deliver(_body: Any, env: Envelope) -> None:
            try:
                send.send_nowait(env)
            except trio.WouldBlock:
                log.warning("%s: event stream for %r is full; dropped %s", self._name, prefix, env.type)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the stream is closing (its reader left at a checkpoint before the unsubscribe): nobody reads

        self.subscribe(prefix, deliver)
        try:
            async with receive:
                yield receive
        finally:
            self.unsubscribe(deliver)
            send.close()

    # --- publishing -------------------------------------------------------------------------

    def publish(self, body: Event) -> None:
        if self._taken(body.TYPE):
            self._publish(make_envelope(body, sender=self._name, to="*", id=self._next_id(), trace=current_trace.get()))

    def publish_soon(self, body: Event) -> None:
        work = self._life.work
        if work is None:
            self.publish(body)
            return
        if not self._taken(body.TYPE):
            return
        self._soon.append(make_envelope(body, sender=self._name, to="*", id=self._next_id(), trace=current_trace.get()))
        if len(self._soon) == 1:
            work.start_soon(self._publish_soon)

    async def _publish_soon(self) -> None:
        soon, self._soon = self._soon, []
        for env in soon:
            self._publish(env)

    def _taken(self, event_type: str) -> bool:
        """Whether anyone takes events of this type now: this actor, or a subscriber of its publisher."""
        mine = self._mine.get(event_type)
        if mine is None:
            mine = self._mine[event_type] = any(event_type.startswith(prefix) for prefix, _ in self._subscriptions)
        if mine:
            return True
        return self._publisher is not None and self._publisher.wants(event_type.encode())

    def _publish(self, env: Envelope) -> None:
        if self._publisher is not None:
            topic = env.type.encode()
            if self._publisher.wants(topic):
                self._publisher.publish(topic, self._codec.encode(env))
        self._dispatch(env)

    # --- receiving --------------------------------------------------------------------------

    def on_event(self, frame: bytes) -> None:
        """Take one event; called by the subscriber endpoint's receiving task."""
        try:
            self._receive(frame)
        except Exception:
            self.malformed += 1
            log.exception("%s: could not take an event of %d bytes; dropped it", self._name, len(frame))

    def _receive(self, frame: bytes) -> None:
        try:
            env = self._codec.decode(frame)
        except ProtocolError as exc:
            self.malformed += 1
            self._bad_frames.warning("%s: refused %s frame: %s", self._name, "an event", exc)
            return
        self._liveness.observe(env.body)
        self._dispatch(env)

    def _dispatch(self, env: Envelope) -> None:
        """Hand an event to each subscriber that takes it, with its trace and job set (`runtime._trace`)."""
        work = self._life.work
        if work is None or self._life.stopping:
            return
        trace = job = None
        try:
            for prefix, handler in self._subscriptions:
                if env.type.startswith(prefix):
                    if trace is None:  # set once, for the first subscriber that takes it
                        trace = current_trace.set(env.trace if env.trace is not None else env.id)
                        job = current_job.set(job_of(env.body))
                    if inspect.iscoroutinefunction(handler):
                        work.start_soon(self._run_subscriber, handler, env)
                    else:
                        try:
                            handler(env.body, env)
                        except Exception:
                            log.exception("%s: subscriber for %r failed on %s", self._name, prefix, env.type)
        finally:
            if trace is not None and job is not None:
                current_job.reset(job)
                current_trace.reset(trace)

    async def _run_subscriber(self, handler: EventHandler, env: Envelope) -> None:
        # Started while _dispatch had the event's trace and job set: trio copied them into this task.
        try:
            await handler(env.body, env)  # type: ignore[misc]
        except Exception:
            log.exception("%s: subscriber failed on %s", self._name, env.type)
