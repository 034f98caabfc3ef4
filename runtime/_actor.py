"""The actor: a trio task with a mailbox.

An actor has a name, handlers registered per message type, and subscriptions
by type prefix. It answers requests, sends its own (`Actor.request` awaits the
correlated reply), publishes events, and watches its peers' heartbeats.

Handlers run as tasks of their own, up to ``max_concurrent`` at once; past that
the actor stops reading its mailbox and the transport's high-water mark pushes
back on senders. A handler written as a plain (non-async) function runs inline,
at once, with no task: right for cheap answers such as ``sys.ping``.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
import os
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import trio

from protocol import (
    MAX_ERROR_TEXT,
    AwenError,
    Envelope,
    ErrorCode,
    Event,
    FrameTooLarge,
    InvalidMessage,
    Message,
    Notice,
    ProtocolError,
    Reply,
    Request,
    clip,
    make_envelope,
)
from protocol.system import (
    ActorExited,
    Error,
    GetStatus,
    Heartbeat,
    Ok,
    PeerInfo,
    PeerLost,
    PeerUp,
    Ping,
    Pong,
    Status,
    Stopping,
    bounded_error,
)

from ._config import Address, Runtime
from ._errors import ActorStoppedError, PeerLostError, RemoteError, RequestTimeout, UnknownPeer
from ._transport import Inbound, Outbound, Publisher, Subscriber, scheme_of

log = logging.getLogger("awen.actor")

R = TypeVar("R", bound=Reply)
F = TypeVar("F", bound=Callable[..., Any])

NOT_READY_BACKOFF = (0.02, 1.0)
"""First and longest wait before a request answered ``not-ready`` is sent again (doubling, with jitter)."""

ANSWERED_WHILE_STARTING = frozenset({Ping.TYPE, GetStatus.TYPE})
"""Requests an actor answers before its `setup` has run; every other one is answered ``not-ready``."""

Handler = Callable[[Any, Envelope], Awaitable[Reply | None] | Reply | None]
EventHandler = Callable[[Any, Envelope], Awaitable[None] | None]


def handles(*types: type[Message]) -> Callable[[F], F]:
    """Mark a method as the handler of these message types.

    The method takes ``(body, envelope)``; for a request it returns the reply
    (``None`` means `Ok` where the request's reply type is `Ok`) or raises an
    `AwenError`, which becomes a ``sys.error`` reply with its code.

    A plain (non-async) method runs inline, at once; it may return an awaitable
    instead of the reply when only some requests need to wait (a write that
    also commits): the awaitable then runs as a task, like an async handler.
    """

    def mark(fn: F) -> F:
        fn._awen_handles = types  # type: ignore[attr-defined]
        return fn

    return mark


def subscribes(*prefixes: str) -> Callable[[F], F]:
    """Mark a method as a subscriber to events whose type starts with a prefix."""

    def mark(fn: F) -> F:
        fn._awen_subscribes = prefixes  # type: ignore[attr-defined]
        return fn

    return mark


class _RateLimitedLog:
    """Log the first few occurrences, then one summary per interval."""

    def __init__(self, logger: logging.Logger, *, burst: int = 5, interval: float = 10.0) -> None:
        self._log = logger
        self._burst = burst
        self._interval = interval
        self._count = 0
        self._suppressed = 0
        self._window_start = -math.inf

    def warning(self, msg: str, *args: Any) -> None:
        now = trio.current_time()
        if now - self._window_start > self._interval:
            if self._suppressed:
                self._log.warning("... and %d more like it in the last %.0f s", self._suppressed, self._interval)
            self._window_start, self._count, self._suppressed = now, 0, 0
        self._count += 1
        if self._count <= self._burst:
            self._log.warning(msg, *args)
        else:
            self._suppressed += 1


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


@dataclass
class _Peer:
    state: str = "unknown"
    incarnation: int | None = None
    last_seen: float = -math.inf
    interval: float = 1.0


class Actor:
    """Base class of every awen actor.

    Args:
        name: This actor's name; its addresses come from the runtime's
            directory. A name not in the directory makes a client-only actor
            that can request and subscribe but cannot be addressed.
        runtime: What the actor is given by whoever starts it.

    Subclasses add handlers with `handles` and `subscribes`, and may override
    `setup`, `main` and `teardown`.
    """

    KIND: ClassVar[str] = "actor"

    def __init__(self, name: str, runtime: Runtime) -> None:
        self.name = name
        self.runtime = runtime
        self.options = runtime.options
        self.codec = runtime.codec()
        self.address: Address | None = runtime.directory.get(name)
        self.pid = os.getpid()
        self.incarnation = random.getrandbits(62)
        self._ids = itertools.count(random.getrandbits(62))
        self._handlers: dict[str, Handler] = {}
        self._inline: dict[str, bool] = {}  # plain functions run at once, without a task
        self._subscriptions: list[tuple[str, EventHandler]] = []
        self._mine: dict[str, bool] = {}
        """Event types this actor's own subscriptions take (kept until they change)."""
        self._collect_marked_methods()
        self._peers: dict[str, _Peer] = {n: _Peer() for n in runtime.directory if n != name}
        self._peer_changed = trio.lowlevel.ParkingLot()
        self._pending: dict[int, _Pending] = {}
        self._deadlines: deque[_Pending] = deque()
        self._deadlines_added = trio.lowlevel.ParkingLot()
        self._unanswered: dict[int, tuple[Any, Envelope]] = {}
        self._handler_ids = itertools.count()
        self._outbound: dict[str, Outbound] = {}
        self._inbound: Inbound | None = None
        self._publisher: Publisher | None = None
        self._subscriber: Subscriber | None = None
        self._io: trio.Nursery | None = None
        self._work: trio.Nursery | None = None
        self._stopping = False
        self._serving = False
        """Set once `setup` has run: until then requests are answered ``not-ready``."""
        self._soon: list[Envelope] = []
        self._started_at = 0.0
        self._bad_frames = _RateLimitedLog(log)
        self.handled = 0
        self.failed = 0
        self.malformed = 0
        self.late_replies = 0
        self.in_flight = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # --- life cycle -------------------------------------------------------------------------

    async def setup(self) -> None:
        """Runs once the actor's endpoints are open, before it reports itself started."""

    async def main(self) -> None:
        """The actor's own activity; when it returns, the actor stops. Default: serve forever."""
        await trio.sleep_forever()

    async def teardown(self) -> None:
        """Runs when the actor stops, shielded, for at most ``stop_timeout`` seconds.

        The actor can still send, request and publish here.
        """

    @property
    def running(self) -> bool:
        """Whether background work can be started (from `setup` until the actor stops)."""
        return self._work is not None

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the background for as long as the actor runs (from `setup` on).

        It is cancelled when the actor stops, before `teardown`; an exception
        it raises stops the actor, as one in `main` would.
        """
        if self._work is None:
            raise ActorStoppedError(f"{self.name} is not running: background work starts from setup() on")
        self._work.start_soon(fn, *args)

    async def start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Like `start_soon`, for ``fn(*args, task_status=...)``: returns once it reports itself started."""
        if self._work is None:
            raise ActorStoppedError(f"{self.name} is not running: background work starts from setup() on")
        return await self._work.start(fn, *args)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or until `main` returns.

        Use as ``await nursery.start(actor.run)``, which returns once the
        actor's endpoints are bound and `setup` has run.
        """
        transport = self.runtime.transport()
        self._started_at = trio.current_time()
        async with trio.open_nursery() as io:
            self._io = io
            try:
                async with trio.open_nursery() as work:
                    self._work = work
                    if self.address is not None:
                        self._inbound = await transport.bind(io, self.address.address, self._on_request)
                        self._publisher = await transport.publisher(io, self.address.events)
                    self._subscriber = transport.subscriber(io, self._on_event)
                    for prefix in self._wanted_prefixes():
                        self._subscriber.subscribe(prefix.encode())
                    for peer, address in self.runtime.directory.items():
                        if peer != self.name and self._reachable(address.events):
                            self._subscriber.connect(address.events)
                    if self._publisher is not None:
                        work.start_soon(self._heartbeat_loop)
                    work.start_soon(self._liveness_loop)
                    work.start_soon(self._deadline_loop)
                    await self.setup()
                    self._serving = True
                    task_status.started()
                    log.debug("%s: serving at %s", self.name, self.address)
                    await self.main()
                    work.cancel_scope.cancel()
            finally:
                self._work = None  # closed: teardown runs without background work
                with trio.CancelScope(shield=True):
                    await self._stop()

    async def _stop(self) -> None:
        self._stopping = True
        if self._publisher is not None:
            self.publish(Stopping(name=self.name, incarnation=self.incarnation))
        with trio.move_on_after(self.options.stop_timeout) as scope:
            await self.teardown()
        if scope.cancelled_caught:
            log.error("%s: teardown did not finish within %.1f s", self.name, self.options.stop_timeout)
        for route, env in self._unanswered.values():
            self._reply(
                route,
                env,
                Error(code=ErrorCode.ACTOR_STOPPED, message=f"{self.name} stopped before answering {env.type}"),
            )
        self._unanswered.clear()
        self._fail_pending(lambda p: True, ActorStoppedError(f"{self.name} is stopping"))
        endpoints: list[Inbound | Outbound | Publisher | Subscriber | None] = [
            self._inbound,
            self._publisher,
            self._subscriber,
            *self._outbound.values(),
        ]
        for endpoint in endpoints:
            if endpoint is not None:
                endpoint.close()

    def _reachable(self, address: str) -> bool:
        return scheme_of(address) != "mem" or self.runtime.local is not None

    def _collect_marked_methods(self) -> None:
        seen: set[str] = set()
        for cls in type(self).__mro__:
            for attr, fn in vars(cls).items():
                if attr in seen:
                    continue
                seen.add(attr)
                for msg_type in getattr(fn, "_awen_handles", ()):
                    if msg_type.TYPE not in self._handlers:  # a subclass's handler wins
                        self.register(msg_type, getattr(self, attr))
                for prefix in getattr(fn, "_awen_subscribes", ()):
                    self._subscriptions.append((prefix, getattr(self, attr)))

    def register(self, msg_type: type[Message], handler: Handler) -> None:
        """Handle ``msg_type`` with ``handler(body, envelope)``; replaces any earlier handler."""
        if msg_type.TYPE not in self.codec.catalog:
            raise ValueError(f"{msg_type.__qualname__} ({msg_type.TYPE}) is not in this actor's catalog")
        self._handlers[msg_type.TYPE] = handler
        self._inline[msg_type.TYPE] = not inspect.iscoroutinefunction(handler)

    def _wanted_prefixes(self) -> set[str]:
        return {Heartbeat.TYPE, Stopping.TYPE, ActorExited.TYPE, *(prefix for prefix, _ in self._subscriptions)}

    def subscribe(self, prefix: str, handler: EventHandler) -> None:
        """Call ``handler(body, envelope)`` for each event whose type starts with ``prefix``."""
        self._subscriptions.append((prefix, handler))
        self._mine.clear()
        if self._subscriber is not None:
            self._subscriber.subscribe(prefix.encode())

    def unsubscribe(self, handler: EventHandler) -> None:
        self._subscriptions = [(p, h) for p, h in self._subscriptions if h != handler]
        self._mine.clear()

    @asynccontextmanager
    async def open_event_stream(
        self, prefix: str = "", *, capacity: int = 1000
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Envelope]]:
        """Events whose type starts with ``prefix``, as a channel, while the block runs.

        Events that arrive while the channel is full are dropped, as a slow
        ZeroMQ subscriber would miss them.
        """
        send, receive = trio.open_memory_channel[Envelope](capacity)

        def deliver(_body: Any, env: Envelope) -> None:
            try:
                send.send_nowait(env)
            except trio.WouldBlock:
                log.warning("%s: event stream for %r is full; dropped %s", self.name, prefix, env.type)

        self.subscribe(prefix, deliver)
        try:
            async with receive:
                yield receive
        finally:
            self.unsubscribe(deliver)
            send.close()

    # --- sending ----------------------------------------------------------------------------

    def _next_id(self) -> int:
        return next(self._ids) & (2**63 - 1)

    def _outbound_to(self, peer: str) -> Outbound:
        outbound = self._outbound.get(peer)
        if outbound is None:
            address = self.runtime.directory.get(peer)
            if address is None:
                known = ", ".join(sorted(self.runtime.directory)) or "none"
                raise UnknownPeer(f"{peer!r} is not in {self.name}'s directory (known: {known})")
            if self._io is None:
                raise ActorStoppedError(f"{self.name} is not running; start it with nursery.start(actor.run)")
            outbound = self.runtime.transport().connect(self._io, address.address, self._on_reply)
            self._outbound[peer] = outbound
        return outbound

    async def request(self, to: str, body: Request[R]) -> R:
        """Send a request and return its reply.

        The caller owns the timeout (``with trio.fail_after(2): ...``); without
        one, the runtime's ``request_timeout`` applies, so no request waits
        forever. A peer that answers ``not-ready`` (starting, or recovering
        what the request needs) is asked again with backoff and jitter until
        that deadline; every other error is final and raised at once.

        Raises:
            RemoteError: the peer answered with ``sys.error`` (``not-ready`` only
                once the runtime's deadline has passed).
            RequestTimeout: no reply within ``request_timeout``.
            PeerLostError: the peer was declared lost while we waited.
            UnknownPeer: ``to`` is not in the directory.
        """
        reply = await self._request_once(to, body)
        if not isinstance(reply, RemoteError):
            return reply
        began = trio.current_time()
        delay, longest = NOT_READY_BACKOFF
        while True:
            if trio.current_effective_deadline() == math.inf and trio.current_time() + delay > (
                began + self.options.request_timeout
            ):
                raise reply
            await trio.sleep(delay * (0.5 + random.random()))
            delay = min(2 * delay, longest)
            reply = await self._request_once(to, body)
            if not isinstance(reply, RemoteError):
                return reply

    async def _request_once(self, to: str, body: Request[R]) -> R | RemoteError:
        """One request and its reply; a ``not-ready`` answer is returned (to be asked again), any other raised."""
        outbound = self._outbound_to(to)
        msg_id = self._next_id()
        frame = self.codec.encode(make_envelope(body, sender=self.name, to=to, id=msg_id))
        now = trio.current_time()
        # The runtime's deadline, enforced by one sweeper task for all requests
        # (far cheaper than a cancel scope each). Whether the caller has a
        # deadline of its own is asked only if this one passes.
        pending = _Pending(to, body.TYPE, now, now + self.options.request_timeout)
        self._pending[msg_id] = pending
        self._deadlines.append(pending)
        if len(self._deadlines) == 1:
            self._deadlines_added.unpark_all()
        try:
            try:
                outbound.send_nowait(frame)
            except trio.WouldBlock:
                # The peer's queue is full or it is not there yet: wait, but
                # not past the deadline.
                sent = False
                with trio.move_on_at(self._own_deadline(pending)):
                    await outbound.send(frame)
                    sent = True
                if not sent:
                    pending.error = RequestTimeout(self._timeout_message(to, body.TYPE, self.options.request_timeout))
            while pending.error is None and pending.reply is None:
                await pending.done.wait()
                if pending.expired and pending.reply is None and pending.error is None:
                    if trio.current_effective_deadline() == math.inf:
                        pending.error = RequestTimeout(
                            self._timeout_message(to, body.TYPE, self.options.request_timeout)
                        )
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

    @staticmethod
    def _own_deadline(pending: _Pending) -> float:
        return pending.deadline if trio.current_effective_deadline() == math.inf else math.inf

    def _timeout_message(self, to: str, msg_type: str, waited: float) -> str:
        return f"no reply from {to} to {msg_type} within {waited:g} s: {self._why_silent(to)}"

    def _why_silent(self, to: str) -> str:
        peer = self._peers.get(to)
        if peer is None or peer.state == "unknown":
            return f"{to} has not been heard from (not started, or unreachable at {self.runtime.directory[to].address})"
        if peer.state == "lost":
            return f"{to} is lost"
        ago = trio.current_time() - peer.last_seen
        return f"{to} is alive (last heartbeat {ago:.1f} s ago) but slow or overloaded"

    async def send(self, to: str, body: Notice) -> None:
        """Send a notice: no reply, and no news if it is not handled.

        Waits only while the peer's queue is full or the peer is not there
        yet, and then no longer than the caller's deadline or, without one,
        ``request_timeout``.

        Raises:
            RequestTimeout: the notice could not be handed over in time.
        """
        outbound = self._outbound_to(to)
        frame = self.codec.encode(make_envelope(body, sender=self.name, to=to, id=self._next_id()))
        try:
            outbound.send_nowait(frame)
        except trio.WouldBlock:
            ceiling = self.options.request_timeout if trio.current_effective_deadline() == math.inf else math.inf
            with trio.move_on_after(ceiling):
                await outbound.send(frame)
                return
            raise RequestTimeout(
                f"could not hand {body.TYPE} to {to} within {ceiling:g} s: {self._why_silent(to)}"
            ) from None

    def publish(self, body: Event) -> None:
        """Publish an event to every subscriber, this actor's own included.

        Never waits: a subscriber that cannot keep up misses events. An event
        nobody subscribes to (here or at the publisher's socket) costs nothing.
        """
        if self._taken(body.TYPE):
            self._publish(make_envelope(body, sender=self.name, to="*", id=self._next_id()))

    def publish_soon(self, body: Event) -> None:
        """Publish an event once the running task has sent what it is about to send (a reply, a request).

        For events beside a reply someone waits for: each message sent is a
        wake-up of another process, and on a busy machine the reply should
        not queue behind them. Events published this way keep their order
        (and their time stamp: now).
        """
        if self._work is None:
            self.publish(body)
            return
        if not self._taken(body.TYPE):
            return
        self._soon.append(make_envelope(body, sender=self.name, to="*", id=self._next_id()))
        if len(self._soon) == 1:
            self._work.start_soon(self._publish_soon)

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
                self._publisher.publish(topic, self.codec.encode(env))
        self._dispatch_event(env)

    async def _deadline_loop(self) -> None:
        """Fail requests that outlive the runtime's ``request_timeout``.

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

    def _fail_pending(self, which: Callable[[_Pending], bool], error: AwenError) -> None:
        for pending in self._pending.values():
            if not pending.done.is_set() and which(pending):
                pending.error = error
                pending.done.set()

    # --- receiving --------------------------------------------------------------------------

    def _on_request(self, route: Any, frame: bytes) -> None:
        # Called by the transport's receiving task: whatever goes wrong here must
        # cost this frame, never the actor (and with it, for the supervisor, the system).
        try:
            self._receive_request(route, frame)
        except Exception:
            self.malformed += 1
            log.exception("%s: could not take a frame of %d bytes; dropped it", self.name, len(frame))

    def _receive_request(self, route: Any, frame: bytes) -> None:
        try:
            env = self.codec.decode(frame)
        except ProtocolError as exc:
            self.malformed += 1
            self._bad_frames.warning("%s: refused a frame: %s", self.name, exc)
            if self._answers_refusal(exc):
                self._reply_error(route, exc.code, exc.message, exc.field, re=exc.request_id, to=exc.sender or "?")
            return
        body = env.body
        is_request = isinstance(body, Request)
        if not is_request and not isinstance(body, Notice):
            self._bad_frames.warning("%s: %s (%s) was sent to its address; dropped", self.name, env.type, body.KIND)
            return
        if self._stopping:
            if is_request:
                self._reply(route, env, Error(code=ErrorCode.ACTOR_STOPPED, message=f"{self.name} is stopping"))
            return
        if not self._serving and is_request and env.type not in ANSWERED_WHILE_STARTING:
            self._reply(
                route, env, Error(code=ErrorCode.NOT_READY, message=f"{self.name} is starting; ask again shortly")
            )
            return
        if env.to != self.name:
            if is_request:
                self._reply(
                    route,
                    env,
                    Error(
                        code=ErrorCode.WRONG_RECIPIENT,
                        message=f"this is {self.name}, the message is addressed to {env.to!r}",
                        field="to",
                    ),
                )
            return
        handler = self._handlers.get(env.type)
        if handler is None:
            if is_request:
                self._reply(
                    route,
                    env,
                    Error(code=ErrorCode.NO_HANDLER, message=f"{self.name} does not handle {env.type}", field="type"),
                )
            else:
                log.debug("%s: no handler for notice %s", self.name, env.type)
            return
        rest: Awaitable[Reply | None] | None = None
        if self._inline[env.type]:
            try:
                result = handler(body, env)
            except Exception as exc:  # noqa: BLE001 - a handler's bug must not stop the actor
                self.handled += 1
                self._answer_failure(route, env, exc)
                return
            if not inspect.isawaitable(result):
                self.handled += 1
                if is_request:
                    self._answer(route, env, result)
                return
            rest = result  # the quick part is done; the rest needs to wait, so it runs as a task
        self.in_flight += 1
        if self.in_flight >= self.options.max_concurrent and self._inbound is not None:
            self._inbound.pause()
        assert self._work is not None
        self._work.start_soon(self._run_handler, handler, route, env, rest)

    def _answers_refusal(self, exc: ProtocolError) -> bool:
        """Whether a frame that could not be read is answered: not if its header names a notice, reply or event.

        A notice gets no reply, even on error, and replies and events are never
        answered; a frame whose type is unknown or unreadable might be a
        request, and is answered.
        """
        kind = exc.message_kind
        return kind is None or kind == Request.KIND

    async def _run_handler(
        self, handler: Handler, route: Any, env: Envelope, rest: Awaitable[Reply | None] | None = None
    ) -> None:
        token = next(self._handler_ids)
        is_request = isinstance(env.body, Request)
        if is_request:
            self._unanswered[token] = (route, env)
        try:
            result = await (rest if rest is not None else handler(env.body, env))  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - a handler's bug must not stop the actor
            self._unanswered.pop(token, None)
            self._answer_failure(route, env, exc)
        else:
            if self._unanswered.pop(token, None) is not None:
                self._answer(route, env, result)
        finally:
            self.handled += 1
            self.in_flight -= 1
            if self.in_flight == self.options.max_concurrent - 1 and self._inbound is not None:
                self._inbound.resume()

    def _answer(self, route: Any, env: Envelope, result: Reply | None) -> None:
        expected = type(env.body).REPLY
        if result is None and expected is Ok:
            result = Ok()
        if not isinstance(result, expected | Error):
            got = "nothing" if result is None else type(result).__qualname__
            log.error("%s: handler for %s returned %s, not %s", self.name, env.type, got, expected.__qualname__)
            self.failed += 1
            result = Error(
                code=ErrorCode.HANDLER_FAILED, message=f"{self.name}'s handler for {env.type} returned {got}"
            )
        self._reply(route, env, result)

    def _answer_failure(self, route: Any, env: Envelope, exc: Exception) -> None:
        self.failed += 1
        if isinstance(exc, AwenError):
            # A refusal is the requester's to handle; a lookup that finds nothing or a "not yet" is routine.
            level = logging.DEBUG if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.NOT_READY) else logging.INFO
            log.log(level, "%s: %s from %s failed: %s", self.name, env.type, env.sender, clip(str(exc), MAX_ERROR_TEXT))
            error = Error(code=exc.code, message=exc.message, field=exc.field)
        else:
            log.error("%s: handler for %s raised", self.name, env.type, exc_info=exc)
            error = Error(code=ErrorCode.HANDLER_FAILED, message=f"{self.name}: {type(exc).__name__}: {exc}")
        if isinstance(env.body, Request):
            self._reply(route, env, error)

    def _reply(self, route: Any, request: Envelope, body: Reply) -> None:
        self._send_reply(route, body, to=request.sender, re=request.id)

    def _reply_error(self, route: Any, code: str, message: str, field: str | None, *, re: int | None, to: str) -> None:
        self._send_reply(route, Error(code=code, message=message, field=field), to=to, re=re)

    def _send_reply(self, route: Any, body: Reply, *, to: str, re: int | None) -> None:
        if self._inbound is None:
            return
        if isinstance(body, Error):
            body = bounded_error(body)
        env = make_envelope(body, sender=self.name, to=to, id=self._next_id(), re=re)
        try:
            frame = self.codec.encode(env)
        except FrameTooLarge as exc:
            log.warning("%s: the reply %s to %s is too large to send: %s", self.name, body.TYPE, clip(to, 80), exc)
            error = Error(
                code=ErrorCode.TOO_LARGE,
                message=f"{self.name}: its reply ({body.TYPE}) would be too large: {exc.message}; ask for less",
            )
            frame = self.codec.encode(make_envelope(error, sender=self.name, to=to, id=self._next_id(), re=re))
        except (AwenError, TypeError, ValueError) as exc:
            log.error("%s: cannot encode the reply %s: %s", self.name, body.TYPE, clip(str(exc), MAX_ERROR_TEXT))
            error = bounded_error(
                Error(code=ErrorCode.HANDLER_FAILED, message=f"{self.name} could not encode its reply: {exc}")
            )
            frame = self.codec.encode(make_envelope(error, sender=self.name, to=to, id=self._next_id(), re=re))
        self._inbound.reply(route, frame)

    def _decode_or_count(self, frame: bytes, what: str) -> Envelope | None:
        """Decode a frame nobody can be answered about (a reply, an event), or count and log it."""
        try:
            return self.codec.decode(frame)
        except ProtocolError as exc:
            self.malformed += 1
            self._bad_frames.warning("%s: refused %s frame: %s", self.name, what, exc)
            if exc.reply_to is not None:
                # A reply that cannot be read still says which request it answers:
                # that request fails now, with the reason, rather than at its timeout.
                pending = self._pending.get(exc.reply_to)
                if pending is not None and not pending.done.is_set():
                    pending.error = RemoteError(
                        exc.code, f"its reply could not be read: {exc.message}", field=exc.field, peer=pending.peer
                    )
                    pending.done.set()
            return None

    def _on_reply(self, frame: bytes) -> None:
        try:
            self._receive_reply(frame)
        except Exception:
            self.malformed += 1
            log.exception("%s: could not take a reply of %d bytes; dropped it", self.name, len(frame))

    def _receive_reply(self, frame: bytes) -> None:
        env = self._decode_or_count(frame, "a reply")
        if env is None:
            return
        pending = self._pending.get(env.re) if env.re is not None else None
        if pending is None or pending.done.is_set():
            self.late_replies += 1
            log.debug("%s: reply %s to %s arrived after its request gave up", self.name, env.type, env.re)
            return
        pending.reply = env
        pending.done.set()

    def _on_event(self, frame: bytes) -> None:
        try:
            self._receive_event(frame)
        except Exception:
            self.malformed += 1
            log.exception("%s: could not take an event of %d bytes; dropped it", self.name, len(frame))

    def _receive_event(self, frame: bytes) -> None:
        env = self._decode_or_count(frame, "an event")
        if env is None:
            return
        body = env.body
        if isinstance(body, Heartbeat):
            self._on_heartbeat(body)
        elif isinstance(body, Stopping):
            self._mark_stopped(body.name, body.incarnation)
        elif isinstance(body, ActorExited) and not body.expected:
            self._mark_lost(body.actor, f"its process exited ({body.reason})", None)
        self._dispatch_event(env)

    def _dispatch_event(self, env: Envelope) -> None:
        if self._work is None or self._stopping:
            return
        for prefix, handler in self._subscriptions:
            if env.type.startswith(prefix):
                if inspect.iscoroutinefunction(handler):
                    self._work.start_soon(self._run_event_handler, handler, env)
                else:
                    try:
                        handler(env.body, env)
                    except Exception:
                        log.exception("%s: subscriber for %r failed on %s", self.name, prefix, env.type)

    async def _run_event_handler(self, handler: EventHandler, env: Envelope) -> None:
        try:
            await handler(env.body, env)  # type: ignore[misc]
        except Exception:
            log.exception("%s: subscriber failed on %s", self.name, env.type)

    # --- liveness ---------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.options.heartbeat_interval
        for seq in itertools.count():
            self.publish(
                Heartbeat(
                    name=self.name,
                    pid=self.pid,
                    incarnation=self.incarnation,
                    seq=seq,
                    interval=interval,
                    uptime=trio.current_time() - self._started_at,
                )
            )
            await trio.sleep(interval)

    async def _liveness_loop(self) -> None:
        while True:
            await trio.sleep(self.options.heartbeat_interval / 2)
            now = trio.current_time()
            for name, peer in self._peers.items():
                silent = now - peer.last_seen
                if peer.state == "up" and silent > self.options.liveness * peer.interval:
                    self._mark_lost(name, f"no heartbeat for {silent:.1f} s", silent)

    def _on_heartbeat(self, beat: Heartbeat) -> None:
        if beat.name == self.name:
            return
        peer = self._peers.setdefault(beat.name, _Peer())
        restarted = peer.incarnation is not None and peer.incarnation != beat.incarnation
        if restarted:
            # Requests sent before the new incarnation started went to the old
            # one, which will never answer them.
            born = trio.current_time() - beat.uptime
            self._fail_pending(
                lambda p: p.peer == beat.name and p.sent_at < born,
                PeerLostError(f"{beat.name} restarted while the request was pending"),
            )
        was_up = peer.state == "up"
        peer.state, peer.incarnation, peer.interval = "up", beat.incarnation, beat.interval
        peer.last_seen = trio.current_time()
        if not was_up or restarted:
            log.info("%s: peer %s is up%s", self.name, beat.name, " (restarted)" if restarted else "")
            self._peer_changed.unpark_all()
            self.publish(PeerUp(peer=beat.name, incarnation=beat.incarnation, restarted=restarted))

    def _mark_lost(self, name: str, reason: str, silent_for: float | None) -> None:
        peer = self._peers.get(name)
        if peer is None or name == self.name or peer.state in ("lost", "stopped"):
            return
        peer.state = "lost"
        log.warning("%s: peer %s lost: %s", self.name, name, reason)
        self._fail_pending(lambda p: p.peer == name, PeerLostError(f"{name} was lost: {reason}"))
        self._peer_changed.unpark_all()
        self.publish(PeerLost(peer=name, reason=reason, silent_for=silent_for))

    def _mark_stopped(self, name: str, incarnation: int) -> None:
        peer = self._peers.get(name)
        if peer is not None and peer.incarnation in (None, incarnation):
            peer.state = "stopped"
            log.info("%s: peer %s is stopping", self.name, name)
            self._peer_changed.unpark_all()

    def peer_state(self, name: str) -> str:
        """``unknown`` (never heard from), ``up``, ``lost`` or ``stopped`` (said it was stopping)."""
        peer = self._peers.get(name)
        return "unknown" if peer is None else peer.state

    async def wait_peer(self, name: str) -> None:
        """Wait until ``name`` has sent a heartbeat (is ``up``)."""
        while self.peer_state(name) != "up":
            await self._peer_changed.park()

    # --- built-in handlers ------------------------------------------------------------------

    @handles(Ping)
    def _handle_ping(self, msg: Ping, env: Envelope) -> Pong:
        return Pong(data=msg.data, pid=self.pid, incarnation=self.incarnation)

    @handles(GetStatus)
    def _handle_get_status(self, msg: GetStatus, env: Envelope) -> Status:
        return self.status()

    def status(self) -> Status:
        now = trio.current_time()
        return Status(
            name=self.name,
            kind=self.KIND,
            pid=self.pid,
            incarnation=self.incarnation,
            uptime=now - self._started_at,
            handled=self.handled,
            failed=self.failed,
            malformed=self.malformed,
            in_flight=self.in_flight,
            pending=len(self._pending),
            peers={
                name: PeerInfo(
                    state=peer.state,  # type: ignore[arg-type]
                    incarnation=peer.incarnation,
                    last_seen_ago=None if peer.last_seen == -math.inf else now - peer.last_seen,
                )
                for name, peer in sorted(self._peers.items())
            },
        )
