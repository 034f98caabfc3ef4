"""runtime.Connection, a client's DEALER to the door: requests matched to their replies, pushes, garbage, restarts.

The server is the runtime's own ROUTER (`Transport.bind`) on real tcp and ipc sockets, answering as
each test tells it; the client is a `Connection` on its own zmq context.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import zmq

from protocol import DEFAULT_MAX_FRAME_BYTES, Codec, ConfigError, Envelope, Message, make_envelope
from protocol.catalog import CATALOG
from protocol.system import Error, Heartbeat, Ok, Ping, Pong
from runtime import Connection, RemoteError, RequestTimeout
from runtime._transport import Inbound, Transport

CODEC = Codec(CATALOG)

Answer = Callable[["Server", list[bytes], Envelope], None]


def pong(server: Server, route: list[bytes], env: Envelope) -> None:
    assert isinstance(env.body, Ping)
    server.reply(route, env, Pong(data=env.body.data, pid=os.getpid(), incarnation=server.incarnation))


class Server:
    """A ROUTER that decodes each request, remembers it and answers it with ``answer``."""

    def __init__(self, answer: Answer, incarnation: int) -> None:
        self.answer = answer
        self.incarnation = incarnation
        self.received: list[Envelope] = []
        self.routes: list[list[bytes]] = []
        self.got = trio.Event()
        self.inbound: Inbound | None = None

    def on_request(self, route: list[bytes], frame: bytes) -> None:
        env = CODEC.decode(frame)
        self.received.append(env)
        self.routes.append(route)
        self.got.set()
        self.answer(self, route, env)

    def raw(self, route: list[bytes], frame: bytes) -> None:
        assert self.inbound is not None
        self.inbound.reply(route, frame)

    def reply(self, route: list[bytes], env: Envelope, body: Message) -> None:
        self.raw(route, CODEC.encode(make_envelope(body, sender=env.to, to=env.sender, id=1, re=env.id)))

    def push(self, route: list[bytes], body: Message) -> None:
        self.raw(route, CODEC.encode(make_envelope(body, sender="door", to="client", id=2)))


@pytest.fixture
def context() -> Any:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture(params=["tcp", "ipc"])
def address(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    return "tcp://127.0.0.1:0" if request.param == "tcp" else f"ipc://{tmp_path}/door.sock"


@asynccontextmanager
async def serve(context: Any, address: str, answer: Answer = pong, incarnation: int = 1) -> AsyncIterator[Server]:
    """A server bound at ``address`` (its real one in ``server.inbound.address``) until the block ends.

    An address a closed server just released may take a moment to be free again: binding is retried.
    """
    transport = Transport(context=context, local=None, hwm=1000, linger=0, max_frame_bytes=DEFAULT_MAX_FRAME_BYTES)
    server = Server(answer, incarnation)
    async with trio.open_nursery() as nursery:
        while server.inbound is None:
            try:
                server.inbound = await transport.bind(nursery, address, server.on_request)
            except ConfigError:
                await trio.sleep(0.05)
        try:
            yield server
        finally:
            server.inbound.close()


@asynccontextmanager
async def connected(address: str, **options: Any) -> AsyncIterator[Connection]:
    connection = Connection(address, name="client", codec=CODEC, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(connection.run)
        try:
            yield connection
        finally:
            connection.close()


async def test_request_is_answered(context, address):
    with trio.fail_after(10):
        async with serve(context, address) as server, connected(server.inbound.address) as client:
            reply = await client.request("scheduler", Ping(data=b"hi"), timeout=5)
            assert reply == Pong(data=b"hi", pid=os.getpid(), incarnation=1)
            (env,) = server.received
            assert server.routes == [[client.routing_id]]  # the door's ROUTER_HANDOVER keys on it
            assert (env.sender, env.to) == ("client", "scheduler")
            assert client.pending == 0
            assert client.malformed == 0


async def test_error_reply_raises_remote_error(context, address):
    def refuse(server: Server, route: list[bytes], env: Envelope) -> None:
        server.reply(route, env, Error(code="no-handler", message="not forwarded", field="type"))

    with trio.fail_after(10):
        async with serve(context, address, refuse) as server, connected(server.inbound.address) as client:
            with pytest.raises(RemoteError) as caught:
                await client.request("hal", Ping(), timeout=5)
    assert caught.value.code == "no-handler"
    assert caught.value.field == "type"
    assert caught.value.remote_message == "not forwarded"


async def test_reply_of_the_wrong_type_is_refused(context, address):
    def ok(server: Server, route: list[bytes], env: Envelope) -> None:
        server.reply(route, env, Ok())

    with trio.fail_after(10):
        async with serve(context, address, ok) as server, connected(server.inbound.address) as client:
            with pytest.raises(Exception, match=r"answered sys\.ping with sys\.ok"):
                await client.request("hal", Ping(), timeout=5)


async def test_push_reaches_on_push(context, address):
    heartbeat = Heartbeat(name="door", pid=1, incarnation=7, seq=3, interval=1.0, uptime=2.0)

    def push_then_answer(server: Server, route: list[bytes], env: Envelope) -> None:
        server.push(route, heartbeat)  # the same pipe: it arrives before the reply
        pong(server, route, env)

    pushed: list[Envelope] = []
    with trio.fail_after(10):
        async with (
            serve(context, address, push_then_answer) as server,
            connected(server.inbound.address, on_push=pushed.append) as client,
        ):
            await client.request("door", Ping(), timeout=5)
    assert [env.body for env in pushed] == [heartbeat]
    assert pushed[0].re is None
    assert (client.pushed, client.late_replies) == (1, 0)


async def test_garbage_is_counted_and_the_connection_goes_on(context, address):
    def garbage_then_answer(server: Server, route: list[bytes], env: Envelope) -> None:
        server.raw(route, b"\xc1 not msgpack")
        server.raw(route, msgspec.msgpack.encode(["not", "an", "envelope"]))
        pong(server, route, env)

    pushed: list[Envelope] = []
    with trio.fail_after(10):
        async with (
            serve(context, address, garbage_then_answer) as server,
            connected(server.inbound.address, on_push=pushed.append) as client,
        ):
            await client.request("door", Ping(data=1), timeout=5)
            await client.request("door", Ping(data=2), timeout=5)
    assert client.malformed == 4
    assert pushed == []


async def test_unreadable_reply_fails_its_request_at_once(context, address):
    def broken_pong(server: Server, route: list[bytes], env: Envelope) -> None:
        frame = {"v": 1, "id": 5, "type": "sys.pong", "from": env.to, "to": env.sender, "re": env.id}
        server.raw(route, msgspec.msgpack.encode({**frame, "ts": time.time(), "body": {"pid": 1}}))

    with trio.fail_after(10):
        async with serve(context, address, broken_pong) as server, connected(server.inbound.address) as client:
            with pytest.raises(RemoteError) as caught:
                await client.request("door", Ping())  # no timeout: only the unreadable reply can end it
    assert caught.value.code == "invalid"
    assert client.malformed == 1
    assert client.pending == 0


async def test_concurrent_requests_get_their_own_replies(context, address):
    replies: dict[int, Any] = {}
    with trio.fail_after(20):
        async with serve(context, address) as server, connected(server.inbound.address) as client:

            async def ask(i: int) -> None:
                replies[i] = (await client.request("door", Ping(data=i), timeout=10)).data

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(ask, i)
    assert replies == {i: i for i in range(50)}
    assert len({env.id for env in server.received}) == 50


async def test_late_reply_is_counted_and_pushed(context, address):
    held: list[tuple[list[bytes], Envelope]] = []
    pushed: list[Envelope] = []
    came = trio.Event()

    def on_push(env: Envelope) -> None:
        pushed.append(env)
        came.set()

    with trio.fail_after(10):
        async with (
            serve(context, address, lambda server, route, env: held.append((route, env))) as server,
            connected(server.inbound.address, on_push=on_push) as client,
        ):
            with pytest.raises(RequestTimeout):
                await client.request("door", Ping(), timeout=0.2)
            (route, env), *_ = held
            server.reply(route, env, Pong(pid=1, incarnation=1))
            await came.wait()
    assert pushed[0].re == env.id
    assert client.late_replies == 1
    assert client.pending == 0


async def test_request_before_run_is_refused():
    client = Connection("tcp://127.0.0.1:1", name="client", codec=CODEC)
    with pytest.raises(trio.ClosedResourceError, match="not running"):
        await client.request("door", Ping(), timeout=1)


async def test_server_restarted_mid_request(context):
    def silent(server: Server, route: list[bytes], env: Envelope) -> None:
        pass

    with trio.fail_after(20):
        async with serve(context, "tcp://127.0.0.1:0", silent) as first:
            bound = first.inbound.address
            async with connected(bound) as client:
                lost: list[RequestTimeout] = []

                async def ask() -> None:
                    with pytest.raises(RequestTimeout) as caught:
                        await client.request("door", Ping(data="lost"), timeout=1)
                    lost.append(caught.value)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask)
                    await first.got.wait()
                    first.inbound.close()  # the daemon dies with the request in hand
                    await first.inbound.wait_closed()
                assert len(lost) == 1
                assert client.pending == 0

                async with serve(context, bound, incarnation=2) as second:
                    reply = await client.request("door", Ping(data="again"), timeout=10)
    assert [env.body.data for env in first.received] == ["lost"]
    assert [env.body.data for env in second.received] == ["again"]
    assert (reply.data, reply.incarnation) == ("again", 2)


async def test_request_sent_while_the_server_is_down_is_answered_when_it_is_back(context):
    replies: list[Pong] = []
    answered = trio.Event()
    with trio.fail_after(20):
        async with serve(context, "tcp://127.0.0.1:0") as first:
            bound = first.inbound.address
            async with connected(bound) as client:
                await client.request("door", Ping(), timeout=10)  # connected
                first.inbound.close()
                await first.inbound.wait_closed()
                await trio.sleep(0.3)  # let the client's zmq see the connection go

                async def ask() -> None:
                    replies.append(await client.request("door", Ping(data="queued")))
                    answered.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask)
                    await trio.sleep(0.1)
                    assert client.pending == 1
                    assert not replies
                    async with serve(context, bound, incarnation=2):
                        await answered.wait()
    assert [(r.data, r.incarnation) for r in replies] == [("queued", 2)]
