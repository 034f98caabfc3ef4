"""The actor: a trio task with a mailbox, composed of parts with one job each.

An actor has a name, handlers registered per message type, and subscriptions
by type prefix. It answers requests, sends its own (`Actor.request` awaits the
correlated reply), publishes events, and watches its peers' heartbeats. The
class itself is the owner that wires its parts, runs their tasks and keeps the
public API; each part is a module of its own:

* `runtime._mailbox`: what arrives at its address, dispatched to its
  handlers (`runtime._handlers`), each request answered;
* `runtime._requests`: what it asks of its peers, and their replies;
* `runtime._events`: what it publishes, and the events it subscribes to;
* `runtime._liveness`: heartbeats, and which peers are up.

Handlers run as tasks of their own, up to ``max_concurrent`` at once; past that
the actor stops reading its mailbox and the transport's high-water mark pushes
back on senders. A handler written as a plain (non-async) function runs inline,
at once, with no task: right for cheap answers such as ``sys.ping``.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeVar

import trio

from protocol import Envelope, Event, Message, Notice, Reply, Request
from protocol.system import GetStatus, PeerState, Ping, Pong, Status, Stopping

from ._config import Address, Runtime
from ._errors import ActorStoppedError
from ._events import Events
from ._gateway import Gateway
from ._handlers import EventHandler, Handler, Handlers, handles, marked_methods
from ._lifecycle import Lifecycle
from ._liveness import Liveness, Peers
from ._logging import RateLimitedLog
from ._mailbox import Mailbox
from ._metrics import Metrics, count_messages
from ._requests import Requests
from ._transport import Transport

log = logging.getLogger("awen.actor")

R = TypeVar("R", bound=Reply)


class Actor:
    """Base class of every awen actor.

    Args:
        name: This actor's name; its addresses come from the runtime's
            directory. A name not in the directory makes a client-only actor
            that can request and subscribe but cannot be addressed.
        runtime: What the actor is given by whoever starts it.

    Subclasses add handlers with `handles` and `subscribes`, and may override
    `setup`, `main` and `teardown`.

    Its parts are private to this class (``self.__mailbox``: Python mangles the
    name), so that no subclass's attribute or method can replace one by
    sharing its name.
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
        next_id = _envelope_ids()
        bad_frames = RateLimitedLog(log)  # one for all three ways in: a flood through any is logged a little
        self.__life = Lifecycle()
        self.metrics = Metrics()
        """Its metrics, reported on its heartbeats (decision 0015 §2); the runtime counts its messages here."""
        count_messages(self.metrics, self)
        self.__handlers = Handlers(self.codec.catalog)
        self.__peers = Peers(name, runtime.directory)
        self.__requests = Requests(
            name, runtime, self.codec, next_id=next_id, why_silent=self.__peers.why_silent, bad_frames=bad_frames
        )
        # Liveness publishes (heartbeats, peer.up, peer.lost) through the actor: the events part comes next.
        self.__liveness = Liveness(
            name,
            self.pid,
            self.incarnation,
            self.options,
            peers=self.__peers,
            requests=self.__requests,
            publish=self.publish,
            life=self.__life,
            metrics=self.metrics,
        )
        self.__events = Events(
            name, self.codec, next_id=next_id, life=self.__life, liveness=self.__liveness, bad_frames=bad_frames
        )
        self.__mailbox = Mailbox(
            name,
            self.codec,
            self.__handlers,
            max_concurrent=self.options.max_concurrent,
            next_id=next_id,
            life=self.__life,
            bad_frames=bad_frames,
        )
        self.__next_id = next_id
        self.__bad_frames = bad_frames
        self.__io: tuple[Transport, trio.Nursery] | None = None
        self.__gateways: list[Mailbox] = []
        handlers, subscribers = marked_methods(self)
        for msg_type, handler in handlers:
            if msg_type not in self.__handlers:  # a subclass's handler wins
                self.register(msg_type, handler)
        for prefix, subscriber in subscribers:
            self.__events.subscribe(prefix, subscriber)

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
        return self.__life.work is not None

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the background for as long as the actor runs (from `setup` on).

        It is cancelled when the actor stops, before `teardown`; an exception
        it raises stops the actor, as one in `main` would.
        """
        if self.__life.work is None:
            raise ActorStoppedError(f"{self.name} is not running: background work starts from setup() on")
        self.__life.work.start_soon(fn, *args)

    async def start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Like `start_soon`, for ``fn(*args, task_status=...)``: returns once it reports itself started."""
        if self.__life.work is None:
            raise ActorStoppedError(f"{self.name} is not running: background work starts from setup() on")
        return await self.__life.work.start(fn, *args)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or until `main` returns.

        Use as ``await nursery.start(actor.run)``, which returns once the
        actor's endpoints are bound and `setup` has run.
        """
        transport = self.runtime.transport()
        life = self.__life
        life.started_at = trio.current_time()
        # Two nurseries: the endpoints' tasks (io) outlive the actor's own work, so that
        # teardown, which runs once the work is cancelled, can still send and publish.
        async with trio.open_nursery() as io:
            self.__io = (transport, io)
            self.__requests.open(transport, io)
            try:
                async with trio.open_nursery() as work:
                    life.work = work
                    try:
                        if self.address is not None:
                            await self.__mailbox.bind(transport, io, self.address.address)
                            await self.__events.bind(transport, io, self.address.events)
                        peers = (a.events for peer, a in self.runtime.directory.items() if peer != self.name)
                        self.__events.connect(transport, io, peers)
                        if self.__events.publishing:
                            work.start_soon(self.__liveness.heartbeats)
                        work.start_soon(self.__liveness.watch)
                        work.start_soon(self.__requests.sweep_deadlines)
                        await self.setup()
                        life.serving = True
                        task_status.started()
                        log.debug("%s: serving at %s", self.name, self.address)
                        await self.main()
                    finally:
                        # From here the nursery takes no new task, while its tasks wind down: a request,
                        # an event's subscriber or start_soon arriving now is refused as the actor's
                        # stop, never started in it ("Nursery is closed to new arrivals").
                        life.work = None
                        life.stopping = True
                        work.cancel_scope.cancel()
            finally:
                life.work = None  # closed: teardown runs without background work
                with trio.CancelScope(shield=True):
                    await self._stop()

    async def _stop(self) -> None:
        self.__life.stopping = True
        if self.__events.publishing:
            self.publish(Stopping(name=self.name, incarnation=self.incarnation))
        with trio.move_on_after(self.options.stop_timeout) as scope:
            await self.teardown()
        if scope.cancelled_caught:
            log.error("%s: teardown did not finish within %.1f s", self.name, self.options.stop_timeout)
        self.__mailbox.refuse_unanswered()
        self.__requests.fail_all(ActorStoppedError(f"{self.name} is stopping"))
        for gateway in self.__gateways:
            gateway.refuse_unanswered()
            gateway.close()
        self.__mailbox.close()
        self.__events.close()
        self.__requests.close()

    async def open_gateway(
        self,
        addresses: Sequence[str],
        handlers: Iterable[tuple[type[Message], Handler]],
        *,
        recipients: Callable[[str], bool] | None = None,
        on_envelope: Callable[[Any, Envelope], None] | None = None,
    ) -> Gateway:
        """Open a second way in, for clients: one ROUTER at ``addresses``, answered by ``handlers`` (from `setup` on).

        ``recipients`` says which names other than this actor's the gateway
        takes messages for; ``on_envelope(route, envelope)`` sees every
        readable message first (who is there, and by which route). See
        `runtime._gateway`.
        """
        if self.__io is None or self.__life.work is None:
            raise ActorStoppedError(f"{self.name} is not running: a gateway opens from setup() on")
        table = Handlers(self.codec.catalog)
        for msg_type, handler in handlers:
            table.register(msg_type, handler)
        mailbox = Mailbox(
            self.name,
            self.codec,
            table,
            max_concurrent=self.options.max_concurrent,
            next_id=self.__next_id,
            life=self.__life,
            bad_frames=self.__bad_frames,
            recipients=recipients,
            on_envelope=on_envelope,
        )
        transport, io = self.__io
        await mailbox.bind(transport, io, addresses, handover=True)
        self.__gateways.append(mailbox)
        return Gateway(self.name, mailbox, self.codec, self.__next_id)

    @property
    def bound_address(self) -> str | None:
        """Where its mailbox is bound, once `run` has bound it (a ``tcp://host:0`` with its real port); else None."""
        inbound = self.__mailbox.inbound
        return None if inbound is None else inbound.address

    # --- handlers and subscriptions ---------------------------------------------------------

    def register(self, msg_type: type[Message], handler: Handler) -> None:
        """Handle ``msg_type`` with ``handler(body, envelope)``; replaces any earlier handler."""
        self.__handlers.register(msg_type, handler)

    def subscribe(self, prefix: str, handler: EventHandler) -> None:
        """Call ``handler(body, envelope)`` for each event whose type starts with ``prefix``."""
        self.__events.subscribe(prefix, handler)

    def unsubscribe(self, handler: EventHandler) -> None:
        self.__events.unsubscribe(handler)

    @asynccontextmanager
    async def open_event_stream(
        self, prefix: str = "", *, capacity: int = 1000
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Envelope]]:
        """Events whose type starts with ``prefix``, as a channel, while the block runs.

        Events that arrive while the channel is full are dropped, as a slow
        ZeroMQ subscriber would miss them.
        """
        async with self.__events.open_stream(prefix, capacity) as receive:
            yield receive

    # --- sending ----------------------------------------------------------------------------

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
        return await self.__requests.request(to, body)

    async def send(self, to: str, body: Notice) -> None:
        """Send a notice: no reply, and no news if it is not handled.

        Waits only while the peer's queue is full or the peer is not there
        yet, and then no longer than the caller's deadline or, without one,
        ``request_timeout``.

        Raises:
            RequestTimeout: the notice could not be handed over in time.
        """
        await self.__requests.send(to, body)

    def publish(self, body: Event) -> None:
        """Publish an event to every subscriber, this actor's own included.

        Never waits: a subscriber that cannot keep up misses events. An event
        nobody subscribes to (here or at the publisher's socket) costs nothing.
        """
        self.__events.publish(body)

    def publish_soon(self, body: Event) -> None:
        """Publish an event once the running task has sent what it is about to send (a reply, a request).

        For events beside a reply someone waits for: each message sent is a
        wake-up of another process, and on a busy machine the reply should
        not queue behind them. Events published this way keep their order
        (and their time stamp: now).
        """
        self.__events.publish_soon(body)

    # --- peers ------------------------------------------------------------------------------

    def peer_state(self, name: str) -> PeerState:
        """``unknown`` (never heard from), ``up``, ``lost`` or ``stopped`` (said it was stopping)."""
        return self.__peers.state(name)

    async def wait_peer(self, name: str) -> None:
        """Wait until ``name`` has sent a heartbeat (is ``up``)."""
        await self.__peers.wait_up(name)

    def _mark_lost(self, name: str, reason: str) -> None:
        """Declare ``name`` lost now: for the supervisor, which learns of a child's death before a heartbeat is due."""
        self.__liveness.mark_lost(name, reason, None)

    # --- built-in handlers and status -------------------------------------------------------

    @handles(Ping)
    def _handle_ping(self, msg: Ping, env: Envelope) -> Pong:
        return Pong(data=msg.data, pid=self.pid, incarnation=self.incarnation)

    @handles(GetStatus)
    def _handle_get_status(self, msg: GetStatus, env: Envelope) -> Status:
        return self.status()

    # Counters, for tests and `status`: each part keeps its own.

    @property
    def handled(self) -> int:
        """Messages whose handler has finished."""
        return self.__mailbox.handled

    @property
    def failed(self) -> int:
        """Handlers that raised, or returned the wrong reply type."""
        return self.__mailbox.failed

    @property
    def malformed(self) -> int:
        """Frames that could not be read: requests and notices, replies, events."""
        return self.__mailbox.malformed + self.__requests.malformed + self.__events.malformed

    @property
    def late_replies(self) -> int:
        """Replies that came after their request had given up."""
        return self.__requests.late_replies

    @property
    def in_flight(self) -> int:
        """Handlers running as tasks now."""
        return self.__mailbox.in_flight

    def status(self) -> Status:
        now = trio.current_time()
        return Status(
            name=self.name,
            kind=self.KIND,
            pid=self.pid,
            incarnation=self.incarnation,
            uptime=now - self.__life.started_at,
            handled=self.handled,
            failed=self.failed,
            malformed=self.malformed,
            in_flight=self.in_flight,
            pending=self.__requests.pending,
            peers=self.__peers.info(now),
        )


def _envelope_ids() -> Callable[[], int]:
    """An actor's envelope ids: one counter, from a random start, for all it sends."""
    ids = itertools.count(random.getrandbits(62))
    return lambda: next(ids) & (2**63 - 1)
