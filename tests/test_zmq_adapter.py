"""The trio adapter for pyzmq: each pitfall it exists to avoid, shown not to bite."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio
import zmq

from protocol import Codec, make_envelope
from protocol.catalog import CATALOG
from protocol.system import Ping
from runtime import Actor, Address, Directory, Runtime
from runtime._zmq import RECV_BATCH, ZmqSocket, close_socket

from .helpers import recv_message

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def pair(context: zmq.Context[Any], name: str) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
    """A ROUTER (plain, driven by the test) and a DEALER connected to it."""
    router = context.socket(zmq.ROUTER)
    router.bind(f"inproc://{name}")
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"dealer")
    dealer.connect(f"inproc://{name}")
    return router, dealer


async def test_message_arriving_while_another_task_sends_is_delivered(context):
    # The fd is edge-triggered: a send from another task consumes the signal
    # that a reply arrived. The pump checks EVENTS after every send, so the
    # reply is still taken; a wait on the fd alone would hang here forever.
    router, dealer = pair(context, "edge")
    received: list[list[bytes]] = []
    got = trio.Event()

    def on_recv(frames: list[bytes]) -> None:
        received.append(frames)
        got.set()

    owner = ZmqSocket(dealer, name="dealer", on_recv=on_recv)
    async with trio.open_nursery() as nursery:
        await nursery.start(owner.run)
        owner.send_nowait([b"hello"])
        with trio.fail_after(5):
            route, payload = await recv_message(router)
        assert payload == b"hello"
        # inproc delivers at once: the reply is queued at the dealer and its fd
        # signalled, and the owner has not run yet when this task sends again.
        router.send_multipart([route, b"reply-1"])
        owner.send_nowait([b"again"])
        with trio.fail_after(5):
            await got.wait()
        assert received == [[b"reply-1"]]
        owner.close()
    router.close(linger=0)


async def test_a_burst_is_drained_completely(context):
    # One edge for many messages: the owner must keep taking until EVENTS is empty.
    router, dealer = pair(context, "burst")
    count = 3 * RECV_BATCH + 7
    received = 0
    done = trio.Event()

    def on_recv(frames: list[bytes]) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    owner = ZmqSocket(dealer, name="dealer", on_recv=on_recv)
    async with trio.open_nursery() as nursery:
        await nursery.start(owner.run)
        owner.send_nowait([b"hi"])
        route, _ = await recv_message(router)
        for i in range(count):
            router.send_multipart([route, str(i).encode()])
        with trio.fail_after(10):
            await done.wait()
        owner.close()
    assert received == count
    router.close(linger=0)


async def test_many_tasks_share_one_socket_through_its_owner(context):
    router, dealer = pair(context, "share")
    owner = ZmqSocket(dealer, name="dealer", outbox_limit=8)  # small: senders must wait their turn
    producers, each = 20, 50

    async def produce(n: int) -> None:
        for i in range(each):
            await owner.send([f"{n}:{i}".encode()])

    seen: dict[int, list[int]] = {n: [] for n in range(producers)}
    async with trio.open_nursery() as nursery:
        await nursery.start(owner.run)
        for n in range(producers):
            nursery.start_soon(produce, n)
        with trio.fail_after(10):
            for _ in range(producers * each):
                _, payload = await recv_message(router)
                n, i = map(int, payload.split(b":"))
                seen[n].append(i)
        owner.close()
    assert all(order == list(range(each)) for order in seen.values())  # per-producer order kept
    router.close(linger=0)


async def test_notify_closing_wakes_a_waiter_instead_of_leaving_it_hanging(context):
    sock = context.socket(zmq.DEALER)
    sock.connect("inproc://nobody")
    outcome: list[BaseException] = []
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                try:
                    await trio.lowlevel.wait_readable(sock.FD)
                except trio.ClosedResourceError as exc:
                    outcome.append(exc)

            nursery.start_soon(waiter)
            await trio.sleep(0.01)
            close_socket(sock)
    assert sock.closed
    assert len(outcome) == 1


async def test_close_ends_an_idle_owner_and_closes_its_socket(context):
    router, dealer = pair(context, "close")
    owner = ZmqSocket(dealer, name="dealer", on_recv=lambda frames: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(owner.run)
        await trio.sleep(0.01)
        owner.close()
        with trio.fail_after(2):
            await owner.wait_closed()
    assert dealer.closed
    router.close(linger=0)


async def test_an_idle_socket_does_not_wake_up(context):
    # No polling: with nothing arriving, the owner sits in one wait.
    router, dealer = pair(context, "idle")
    owner = ZmqSocket(dealer, name="dealer", on_recv=lambda frames: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(owner.run)
        await trio.sleep(0.05)  # connection set-up may wake it once or twice
        before = owner.wakeups
        await trio.sleep(0.3)
        assert owner.wakeups == before
        owner.close()
    router.close(linger=0)


async def test_no_thread_per_socket(context):
    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    sockets = [context.socket(zmq.DEALER) for _ in range(1)]
    baseline = threads()  # the context's I/O thread exists now
    owners = []
    async with trio.open_nursery() as nursery:
        for i in range(50):
            sock = context.socket(zmq.DEALER)
            sock.connect(f"inproc://t{i}")
            owner = ZmqSocket(sock, name=f"s{i}", on_recv=lambda frames: None)
            await nursery.start(owner.run)
            owners.append(owner)
        assert threads() == baseline
        for owner in owners:
            owner.close()
    for sock in sockets:
        sock.close()


async def test_a_full_outbox_makes_senders_wait_not_grow(context, tmp_path):
    # A DEALER with IMMEDIATE and no peer takes nothing: the outbox fills to its
    # limit and the next send waits (backpressure) instead of queueing forever.
    # (ipc, not inproc: an inproc connect before bind gets a pipe at once.)
    address = f"ipc://{tmp_path}/absent"
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IMMEDIATE, 1)
    dealer.connect(address)
    owner = ZmqSocket(dealer, name="dealer", outbox_limit=5)
    router = context.socket(zmq.ROUTER)
    async with trio.open_nursery() as nursery:
        await nursery.start(owner.run)
        for i in range(5):
            await owner.send([b"%d" % i])
        with trio.move_on_after(0.2) as waited:
            await owner.send([b"one too many"])
        assert waited.cancelled_caught
        assert owner.statistics()["queued"] == 5
        # The peer appears: the queue drains and the waiting stops.
        router.bind(address)
        with trio.fail_after(5):
            await owner.send([b"now it fits"])
            for expected in [b"0", b"1", b"2", b"3", b"4", b"now it fits"]:
                assert (await recv_message(router))[1] == expected
        owner.close()
    router.close(linger=0)


async def test_a_request_with_a_mountain_of_routing_frames_is_dropped_and_the_next_answered():
    # Routing frames come back in front of the reply: 10,000 of them (or a few huge ones) would have the
    # actor echo whatever a client put there. Such a request is dropped; the socket keeps serving.
    directory = Directory({"alpha": Address(address="tcp://127.0.0.1:0", events="tcp://127.0.0.1:0")})
    actor = Actor("alpha", Runtime(directory))
    codec = Codec(CATALOG)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        assert actor.bound_address is not None
        context = zmq.Context.instance()
        client = context.socket(zmq.DEALER)
        client.connect(actor.bound_address)
        try:
            frame = codec.encode(make_envelope(Ping(data=b"hi"), sender="client", to="alpha", id=1))
            client.send_multipart([b""] * 10_000 + [frame])
            client.send_multipart([b"x" * 5000, frame])
            client.send_multipart([b"", b"hop", frame])
            with trio.fail_after(10):
                reply = await recv_message(client)
            assert reply[:2] == [b"", b"hop"]
            assert codec.decode(reply[-1]).body.data == b"hi"
        finally:
            client.close(linger=0)
        nursery.cancel_scope.cancel()
