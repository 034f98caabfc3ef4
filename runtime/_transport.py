"""Where frames travel: ZeroMQ sockets, or trio memory channels in one process.

An actor never sees a socket. It asks a `Transport` for four endpoints, chosen
by the address's scheme:

* an inbound endpoint (requests and notices come in, replies go back the way
  the request came),
* an outbound endpoint per peer (requests go out, replies come back),
* a publisher (events go out to whoever subscribed),
* a subscriber (events come in, filtered by type prefix).

``inproc://``, ``ipc://`` and ``tcp://`` addresses are ZeroMQ: ROUTER inbound,
DEALER outbound, PUB/SUB for events. ``mem://`` addresses are trio memory
channels between actors of one process, carrying the very same encoded frames.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import trio
import zmq

from protocol import ConfigError

from ._zmq import Frames, ZmqSocket

log = logging.getLogger("awen.transport")

OnRequest = Callable[[Any, bytes], None]
"""Called with (route, frame); the route is handed back to `Inbound.reply`."""
OnFrame = Callable[[bytes], None]

SCHEMES = ("mem", "inproc", "ipc", "tcp")

MAX_ROUTE_FRAMES = 16
MAX_ROUTE_BYTES = 4096
"""A request's frames before its envelope (the peer's routing id, a REQ's delimiter, a proxy's
envelope) are sent back with its reply: more than this is not a client's routing but a way to make
the actor echo megabytes, and the request is dropped unanswered (docs/protocol.md, "Limits")."""


def scheme_of(address: str) -> str:
    scheme = urlsplit(address).scheme
    if scheme not in SCHEMES:
        raise ConfigError(f"address {address!r} must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    return scheme


class Inbound(Protocol):
    """Requests in, replies out."""

    address: str

    def reply(self, route: Any, frame: bytes) -> None:
        """Send a reply back the way the request came; never waits (drops if the peer cannot take it)."""
        ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class Outbound(Protocol):
    """Requests out to one peer, replies in."""

    address: str

    def send_nowait(self, frame: bytes) -> None:
        """Queue a frame; `trio.WouldBlock` if that would mean waiting."""
        ...

    async def send(self, frame: bytes) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class Publisher(Protocol):
    address: str

    def wants(self, topic: bytes) -> bool:
        """Whether a subscriber takes this topic now: if not, publishing it would send nothing anywhere."""
        ...

    def publish(self, topic: bytes, frame: bytes) -> None:
        """Publish without waiting; a subscriber that cannot keep up misses events."""
        ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


# --- ZeroMQ ------------------------------------------------------------------------------


def _prepare_bind(address: str) -> str:
    parts = urlsplit(address)
    if parts.scheme == "ipc":
        path = address[len("ipc://") :]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if parts.scheme == "tcp" and parts.port == 0:
        return address.rsplit(":", 1)[0] + ":*"
    return address


def _bind(sock: zmq.Socket[Any], address: str) -> str:
    """Bind, or close the socket and say why; the address actually bound (a port 0 made real)."""
    try:
        sock.bind(_prepare_bind(address))
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise ConfigError(f"cannot bind {address}: {exc}") from exc
    bound: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return bound


class _ZmqEndpoint:
    """What the three ZeroMQ endpoints share: an owned socket and where it is."""

    def __init__(self, owner: ZmqSocket, address: str) -> None:
        self._owner = owner
        self.address = address

    def close(self) -> None:
        self._owner.close()

    async def wait_closed(self) -> None:
        await self._owner.wait_closed()


class _ZmqInbound(_ZmqEndpoint, Inbound):
    def reply(self, route: Any, frame: bytes) -> None:
        try:
            self._owner.send_nowait([*route, frame])
        except trio.WouldBlock:
            self._owner.dropped += 1
            log.warning("%s: reply dropped, outbox full", self._owner.name)
        except trio.ClosedResourceError:
            self._owner.dropped += 1

    def pause(self) -> None:
        self._owner.pause_reading()

    def resume(self) -> None:
        self._owner.resume_reading()


class _ZmqOutbound(_ZmqEndpoint, Outbound):
    def send_nowait(self, frame: bytes) -> None:
        self._owner.send_nowait((frame,))

    async def send(self, frame: bytes) -> None:
        await self._owner.send((frame,))


class _Interest:
    """The topic prefixes a publisher's subscribers ask for, as its XPUB socket reports them.

    Without ``XPUB_VERBOSE`` zmq reports a prefix when the first subscriber
    asks for it and its end when the last one leaves: a set is the truth.
    """

    def __init__(self) -> None:
        self._prefixes: set[bytes] = set()
        self._topics: dict[bytes, bool] = {}

    def on_recv(self, frames: list[bytes]) -> None:
        message = frames[0]
        if message[:1] == b"\x01":
            self._prefixes.add(message[1:])
        elif message[:1] == b"\x00":
            self._prefixes.discard(message[1:])
        else:
            return
        self._topics.clear()

    def wants(self, topic: bytes) -> bool:
        wanted = self._topics.get(topic)
        if wanted is None:
            wanted = self._topics[topic] = any(topic.startswith(prefix) for prefix in self._prefixes)
        return wanted


class _ZmqPublisher(_ZmqEndpoint, Publisher):
    def __init__(self, owner: ZmqSocket, address: str, interest: _Interest) -> None:
        super().__init__(owner, address)
        self._interest = interest

    def wants(self, topic: bytes) -> bool:
        if self._interest.wants(topic):
            return True
        self._owner.poll()  # a subscription may have just arrived: a PUB socket would honour it
        return self._interest.wants(topic)

    def publish(self, topic: bytes, frame: bytes) -> None:
        try:
            self._owner.send_nowait((topic, frame))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._owner.dropped += 1


# --- memory channels ----------------------------------------------------------------------


class LocalNetwork:
    """The ``mem://`` addresses of one trio run: which actor listens where.

    Pass one instance to every actor that should reach the others by
    ``mem://``; it is the whole "network", so there is no global state.
    """

    def __init__(self) -> None:
        self._inbound: dict[str, _LocalInbound] = {}
        self._publishers: dict[str, _LocalPublisher] = {}
        self._waiting_subscribers: dict[str, list[_LocalSubscriber]] = {}
        self._changed = trio.lowlevel.ParkingLot()

    def _register_inbound(self, inbound: _LocalInbound) -> None:
        if inbound.address in self._inbound:
            raise ConfigError(f"{inbound.address} is already bound in this process")
        self._inbound[inbound.address] = inbound
        self._changed.unpark_all()

    def _unregister_inbound(self, inbound: _LocalInbound) -> None:
        if self._inbound.get(inbound.address) is inbound:
            del self._inbound[inbound.address]

    async def _wait_inbound(self, address: str) -> _LocalInbound:
        while (inbound := self._inbound.get(address)) is None:
            await self._changed.park()
        return inbound

    def _register_publisher(self, publisher: _LocalPublisher) -> None:
        if publisher.address in self._publishers:
            raise ConfigError(f"{publisher.address} is already bound in this process")
        self._publishers[publisher.address] = publisher
        for subscriber in self._waiting_subscribers.get(publisher.address, []):
            publisher.subscribers.append(subscriber)

    def _unregister_publisher(self, publisher: _LocalPublisher) -> None:
        if self._publishers.get(publisher.address) is publisher:
            del self._publishers[publisher.address]

    def _attach(self, address: str, subscriber: _LocalSubscriber) -> None:
        # Remembered so that a publisher that (re)starts later finds its subscribers.
        self._waiting_subscribers.setdefault(address, []).append(subscriber)
        publisher = self._publishers.get(address)
        if publisher is not None:
            publisher.subscribers.append(subscriber)

    def _detach(self, subscriber: _LocalSubscriber) -> None:
        for subscribers in self._waiting_subscribers.values():
            if subscriber in subscribers:
                subscribers.remove(subscriber)
        for publisher in self._publishers.values():
            if subscriber in publisher.subscribers:
                publisher.subscribers.remove(subscriber)


class _LocalInbound(Inbound):
    def __init__(self, network: LocalNetwork, address: str, on_request: OnRequest, capacity: int) -> None:
        self._network = network
        self.address = address
        self._on_request = on_request
        self.send_channel, self._receive = trio.open_memory_channel[tuple["_LocalOutbound", bytes]](capacity)
        self._resumed: trio.Event | None = None
        self._closed = trio.Event()
        self.dropped = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._network._register_inbound(self)
        task_status.started()
        try:
            with trio.CancelScope(shield=True):
                async with self._receive:
                    async for route, frame in self._receive:
                        self._on_request(route, frame)
                        if self._resumed is not None:
                            await self._resumed.wait()
        finally:
            self._network._unregister_inbound(self)
            self._closed.set()

    def reply(self, route: Any, frame: bytes) -> None:
        if not route.deliver(frame):
            self.dropped += 1

    def pause(self) -> None:
        if self._resumed is None:
            self._resumed = trio.Event()

    def resume(self) -> None:
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    def close(self) -> None:
        self._network._unregister_inbound(self)
        self.send_channel.close()
        self.resume()

    async def wait_closed(self) -> None:
        await self._closed.wait()


class _LocalQueue:
    """Frames in through a bounded channel, handed to a callback by one task.

    Like a zmq owner used by an actor, the task is shielded and ends when
    `close` is called.
    """

    def __init__(self, network: LocalNetwork, on_frame: OnFrame, capacity: int) -> None:
        self._network = network
        self._on_frame = on_frame
        self._in, self._out = trio.open_memory_channel[bytes](capacity)
        self._closed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            with trio.CancelScope(shield=True):
                async with self._out:
                    async for frame in self._out:
                        self._on_frame(frame)
        finally:
            self._ended()
            self._closed.set()

    def _ended(self) -> None:
        """Clean-up when the task ends."""

    def deliver(self, frame: bytes) -> bool:
        """Queue a frame without waiting; False if it was dropped (full or closed)."""
        try:
            self._in.send_nowait(frame)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def close(self) -> None:
        self._in.close()

    async def wait_closed(self) -> None:
        await self._closed.wait()


class _LocalOutbound(_LocalQueue, Outbound):
    """Requests to one mem:// peer; its replies come back through this queue."""

    def __init__(self, network: LocalNetwork, address: str, on_reply: OnFrame, capacity: int) -> None:
        super().__init__(network, on_reply, capacity)
        self.address = address

    def send_nowait(self, frame: bytes) -> None:
        inbound = self._network._inbound.get(self.address)
        if inbound is None:
            raise trio.WouldBlock
        try:
            inbound.send_channel.send_nowait((self, frame))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._network._unregister_inbound(inbound)
            raise trio.WouldBlock from None

    async def send(self, frame: bytes) -> None:
        while True:
            inbound = await self._network._wait_inbound(self.address)
            try:
                await inbound.send_channel.send((self, frame))
                return
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                # The peer stopped; like a zmq DEALER, wait for it to come back.
                self._network._unregister_inbound(inbound)


class _LocalPublisher(Publisher):
    def __init__(self, network: LocalNetwork, address: str) -> None:
        self._network = network
        self.address = address
        self.subscribers: list[_LocalSubscriber] = []
        self._closed = trio.Event()
        self.dropped = 0

    def wants(self, topic: bytes) -> bool:
        return any(subscriber.wants(topic) for subscriber in self.subscribers)

    def publish(self, topic: bytes, frame: bytes) -> None:
        for subscriber in self.subscribers:
            if subscriber.wants(topic) and not subscriber.deliver(frame):
                self.dropped += 1

    def close(self) -> None:
        self._network._unregister_publisher(self)
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()


class _LocalSubscriber(_LocalQueue):
    """Events from mem:// publishers whose topic starts with a subscribed prefix."""

    def __init__(self, network: LocalNetwork, on_event: OnFrame, capacity: int) -> None:
        super().__init__(network, on_event, capacity)
        self._prefixes: set[bytes] = set()

    def _ended(self) -> None:
        self._network._detach(self)

    def wants(self, topic: bytes) -> bool:
        return any(topic.startswith(prefix) for prefix in self._prefixes)

    def connect(self, address: str) -> None:
        self._network._attach(address, self)

    def subscribe(self, prefix: bytes) -> None:
        self._prefixes.add(prefix)


# --- the composite subscriber and the factory -------------------------------------------


class Subscriber:
    """Events in, from ZeroMQ publishers and ``mem://`` publishers alike."""

    def __init__(self, transport: Transport, nursery: trio.Nursery, on_event: OnFrame) -> None:
        self._transport = transport
        self._nursery = nursery
        self._on_event = on_event
        self._prefixes: set[bytes] = set()
        self._zmq: ZmqSocket | None = None
        self._local: _LocalSubscriber | None = None
        self._connected: set[str] = set()

    def connect(self, address: str) -> None:
        if address in self._connected:
            return
        self._connected.add(address)
        if scheme_of(address) == "mem":
            if self._local is None:
                network = self._transport.require_local(address)
                self._local = _LocalSubscriber(network, self._on_event, self._transport.hwm)
                for prefix in self._prefixes:
                    self._local.subscribe(prefix)
                self._nursery.start_soon(self._local.run)
            self._local.connect(address)
        else:
            if self._zmq is None:
                sock = self._transport.socket(zmq.SUB)
                self._zmq = ZmqSocket(
                    sock,
                    name="sub",
                    on_recv=lambda frames: self._on_event(frames[-1]),
                    linger=0,
                    shield=True,
                )
                for prefix in self._prefixes:
                    sock.setsockopt(zmq.SUBSCRIBE, prefix)
                self._nursery.start_soon(self._zmq.run)
            self._zmq.control(lambda s: s.connect(address))

    def subscribe(self, prefix: bytes) -> None:
        if prefix in self._prefixes:
            return
        self._prefixes.add(prefix)
        if self._local is not None:
            self._local.subscribe(prefix)
        if self._zmq is not None:
            self._zmq.control(lambda s: s.setsockopt(zmq.SUBSCRIBE, prefix))

    def close(self) -> None:
        for part in (self._zmq, self._local):
            if part is not None:
                part.close()

    async def wait_closed(self) -> None:
        for part in (self._zmq, self._local):
            if part is not None:
                await part.wait_closed()


class Transport:
    """Opens endpoints by address scheme.

    Args:
        context: The process's zmq context (``inproc://`` needs one shared context).
        local: The `LocalNetwork` for ``mem://`` addresses, if any are used.
        hwm: High-water mark: zmq SNDHWM/RCVHWM and the capacity of every queue.
        linger: Seconds zmq keeps delivering after close.
        max_frame_bytes: The codec's limit; zmq cuts connections that send frames
            over four times this (the codec answers anything between with an error).
    """

    def __init__(
        self,
        *,
        context: zmq.Context[Any],
        local: LocalNetwork | None,
        hwm: int,
        linger: float,
        max_frame_bytes: int,
    ) -> None:
        self.context = context
        self.local = local
        self.hwm = hwm
        self.linger = linger
        self.max_frame_bytes = max_frame_bytes

    def require_local(self, address: str) -> LocalNetwork:
        if self.local is None:
            raise ConfigError(f"{address} is a mem:// address, but this actor has no LocalNetwork to reach it")
        return self.local

    def socket(self, kind: int) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.context.socket(kind)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_frame_bytes)
        sock.setsockopt(zmq.LINGER, int(self.linger * 1000))
        return sock

    async def bind(
        self, nursery: trio.Nursery, address: str | Sequence[str], on_request: OnRequest, *, handover: bool = False
    ) -> Inbound:
        """A ROUTER at ``address``, or one ROUTER at each of several (a gateway's ipc and tcp: one route space).

        ``handover``: a peer that connects again with a routing id in use takes
        it over (``ZMQ_ROUTER_HANDOVER``), so a reconnected client keeps its route.
        """
        addresses = [address] if isinstance(address, str) else list(address)
        if not addresses:
            raise ConfigError("an inbound endpoint needs an address")
        if scheme_of(addresses[0]) == "mem":
            if len(addresses) > 1:
                raise ConfigError(f"a mem:// endpoint has one address, not {len(addresses)}")
            local = _LocalInbound(self.require_local(addresses[0]), addresses[0], on_request, self.hwm)
            await nursery.start(local.run)
            return local
        sock = self.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if handover:
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        bound = ", ".join(_bind(sock, a) for a in addresses)

        def on_recv(frames: list[bytes]) -> None:
            route = frames[:-1]
            if len(route) > MAX_ROUTE_FRAMES or sum(len(f) for f in route) > MAX_ROUTE_BYTES:
                owner.dropped += 1
                if owner.dropped & (owner.dropped - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a flood logs little
                    log.warning(
                        "%s: dropped a request with %d routing frames (%d bytes); at most %d frames of %d bytes"
                        " in all are answered (%d dropped so far)",
                        bound,
                        len(route),
                        sum(len(f) for f in route),
                        MAX_ROUTE_FRAMES,
                        MAX_ROUTE_BYTES,
                        owner.dropped,
                    )
                return
            on_request(route, frames[-1])

        owner = ZmqSocket(
            sock,
            name=f"router {bound}",
            on_recv=on_recv,
            outbox_limit=self.hwm,
            drop_when_full=True,
            linger=self.linger,
            shield=True,
        )
        await nursery.start(owner.run)
        return _ZmqInbound(owner, bound)

    def connect(self, nursery: trio.Nursery, address: str, on_reply: OnFrame) -> Outbound:
        """Open the way to a peer. Synchronous: frames sent before its task runs are queued."""
        if scheme_of(address) == "mem":
            local = _LocalOutbound(self.require_local(address), address, on_reply, self.hwm)
            nursery.start_soon(local.run)
            return local
        sock = self.socket(zmq.DEALER)
        # Queue nothing for a peer that is not connected: the request waits
        # (and times out) instead of vanishing into a queue.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(address)

        def on_recv(frames: Frames) -> None:
            on_reply(frames[-1])

        owner = ZmqSocket(
            sock,
            name=f"dealer {address}",
            on_recv=on_recv,
            outbox_limit=self.hwm,
            linger=self.linger,
            single_part=True,
            shield=True,
        )
        nursery.start_soon(owner.run)
        return _ZmqOutbound(owner, address)

    async def publisher(self, nursery: trio.Nursery, address: str) -> Publisher:
        if scheme_of(address) == "mem":
            network = self.require_local(address)
            publisher = _LocalPublisher(network, address)
            network._register_publisher(publisher)
            return publisher
        # XPUB: a PUB that hears its subscriptions, so an event nobody takes is not even encoded.
        sock = self.socket(zmq.XPUB)
        bound = _bind(sock, address)
        interest = _Interest()
        owner = ZmqSocket(
            sock,
            name=f"pub {bound}",
            on_recv=interest.on_recv,
            outbox_limit=self.hwm,
            drop_when_full=True,
            linger=self.linger,
            shield=True,
        )
        await nursery.start(owner.run)
        return _ZmqPublisher(owner, bound, interest)

    def subscriber(self, nursery: trio.Nursery, on_event: OnFrame) -> Subscriber:
        return Subscriber(self, nursery, on_event)
