"""Actors in one process: requests, events, errors, timeouts, liveness, backpressure."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import zmq

from protocol import Codec, ErrorCode, make_envelope
from protocol.system import GetStatus, Heartbeat, Ping
from runtime import (
    Actor,
    ActorStoppedError,
    Address,
    Directory,
    LocalNetwork,
    PeerLostError,
    RemoteError,
    RequestTimeout,
    Runtime,
    RuntimeOptions,
    UnknownPeer,
)
from runtime._system import free_tcp_port

from .actors import TEST_CATALOG, Add, Changed, Counter, Fail, Note, SlowToStart, Stubborn, Total
from .helpers import eventually, recv_message
from .stack import start_running

TRANSPORTS = ["mem", "inproc", "ipc", "tcp"]


def directory(transport: str, names: list[str], tmp_path: Any) -> Directory:
    entries = {}
    for name in names:
        if transport == "ipc":
            entries[name] = Address(address=f"ipc://{tmp_path}/{name}", events=f"ipc://{tmp_path}/{name}.ev")
        elif transport == "tcp":
            entries[name] = Address(
                address=f"tcp://127.0.0.1:{free_tcp_port()}", events=f"tcp://127.0.0.1:{free_tcp_port()}"
            )
        else:
            entries[name] = Address(address=f"{transport}://{name}", events=f"{transport}://{name}.ev")
    return Directory(entries)


def runtime(transport: str, names: list[str], tmp_path: Any, **options: Any) -> Runtime:
    return Runtime(
        directory(transport, names, tmp_path),
        RuntimeOptions(**{"heartbeat_interval": 0.1, **options}),
        local=LocalNetwork() if transport == "mem" else None,
        catalog=TEST_CATALOG,
    )


@asynccontextmanager
async def started(*actors: Actor) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        for actor in actors:
            await nursery.start(actor.run)
        yield nursery
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_request_reply_notice_and_events_on_every_transport(transport, tmp_path):
    rt = runtime(transport, ["client", "counter"], tmp_path)
    client, counter = Actor("client", rt), Counter("counter", rt)
    async with started(client, counter):
        with trio.fail_after(10):
            await client.wait_peer("counter")
            async with client.open_event_stream("test.") as events:
                assert await client.request("counter", Add(n=2)) == Total(total=2)
                assert await client.request("counter", Add(n=3)) == Total(total=5)
                first, second = await events.receive(), await events.receive()
            assert (first.body, second.body) == (Changed(total=2), Changed(total=5))
            assert first.sender == "counter"
            for seq in range(5):
                await client.send("counter", Note(seq=seq))
            pong = await client.request("counter", Ping(data=b"\x00\x01"))
            assert pong.data == b"\x00\x01"
            await counter.wait_notes(5)
        assert sorted(counter.notes) == [0, 1, 2, 3, 4]


async def test_events_published_soon_follow_the_reply_in_their_order(tmp_path):
    rt = runtime("ipc", ["client", "counter"], tmp_path)
    client, counter = Actor("client", rt), Counter("counter", rt)
    async with started(client, counter), counter.open_event_stream("test.") as own:
        with trio.fail_after(10):
            await client.wait_peer("counter")
            async with client.open_event_stream("test.") as events:
                before = time.time()
                for n in (2, 3, 4):
                    await client.request("counter", Add(n=n, soon=True))
                received = [await events.receive() for _ in range(3)]
            assert [e.body for e in received] == [Changed(total=2), Changed(total=5), Changed(total=9)]
            assert before <= received[0].ts <= received[1].ts <= received[2].ts
            assert [(await own.receive()).body.total for _ in range(3)] == [2, 5, 9]  # its own subscribers too


async def test_an_event_nobody_subscribes_to_is_not_even_encoded(tmp_path, monkeypatch):
    rt = runtime("ipc", ["client", "counter"], tmp_path)
    client, counter = Actor("client", rt), Counter("counter", rt)
    encoded: list[str] = []
    encode = counter.codec.encode

    def counting(env: Any) -> bytes:
        encoded.append(env.type)
        return encode(env)

    monkeypatch.setattr(counter.codec, "encode", counting)
    async with started(client, counter):
        with trio.fail_after(10):
            await client.wait_peer("counter")
            for _ in range(3):
                await client.request("counter", Add(n=1))
            assert "test.changed" not in encoded
            async with client.open_event_stream("test.") as events:

                async def heard() -> Any:  # the subscription reaches the counter in its own time
                    await client.request("counter", Add(n=1))
                    with trio.move_on_after(0.2):
                        return (await events.receive()).body
                    return None

                first = await heard() or await eventually(heard)
            assert first.total >= 4
            assert "test.changed" in encoded


async def test_errors_come_back_typed_and_the_actor_keeps_serving(tmp_path):
    rt = runtime("mem", ["client", "counter"], tmp_path)
    client, counter = Actor("client", rt), Counter("counter", rt)
    async with started(client, counter):
        with pytest.raises(RemoteError) as caught:
            await client.request("counter", Fail(how="awen"))
        assert caught.value.code == ErrorCode.BAD_REQUEST
        assert caught.value.field == "body.shots"
        assert "shots must be positive" in str(caught.value)
        with pytest.raises(RemoteError) as caught:
            await client.request("counter", Fail(how="bug"))
        assert caught.value.code == ErrorCode.HANDLER_FAILED
        assert "ZeroDivisionError" in str(caught.value)
        assert await client.request("counter", Add(n=1)) == Total(total=1)
        status = await client.request("counter", GetStatus())
        assert status.failed == 2


async def test_a_type_the_actor_does_not_handle_gets_no_handler(tmp_path):
    rt = runtime("mem", ["client", "plain"], tmp_path)
    client, plain = Actor("client", rt), Actor("plain", rt)
    async with started(client, plain):
        with pytest.raises(RemoteError) as caught:
            await client.request("plain", Add(n=1))
        assert caught.value.code == ErrorCode.NO_HANDLER
        assert caught.value.field == "type"


async def test_unknown_peer_fails_at_once(tmp_path):
    rt = runtime("mem", ["client"], tmp_path)
    client = Actor("client", rt)
    async with started(client):
        with pytest.raises(UnknownPeer, match="'nobody' is not in client's directory"):
            await client.request("nobody", Ping())


async def test_request_to_an_absent_peer_times_out_with_a_clear_error(tmp_path, autojump_clock):
    rt = runtime("mem", ["client", "absent"], tmp_path, request_timeout=2.0)
    client = Actor("client", rt)
    async with started(client):
        start = trio.current_time()
        with pytest.raises(
            RequestTimeout, match=r"no reply from absent to sys\.ping within 2 s: absent has not been heard from"
        ):
            await client.request("absent", Ping())
        assert trio.current_time() - start == pytest.approx(2.0, abs=0.1)


async def test_the_callers_deadline_wins_over_the_default(tmp_path, autojump_clock):
    rt = runtime("mem", ["client", "absent"], tmp_path, request_timeout=100.0)
    client = Actor("client", rt)
    async with started(client):
        start = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(0.5):
                await client.request("absent", Ping())
        assert trio.current_time() - start == pytest.approx(0.5)
        # A longer deadline than the default also wins: long operations are allowed.
        rt_counter = Counter("absent", rt)
        async with started(rt_counter):
            with trio.fail_after(300):
                assert await client.request("absent", Add(n=1, delay=150.0)) == Total(total=1)


class Partitioned(Counter):
    """Stops publishing heartbeats on demand: a peer that is cut off or hung."""

    silent = False

    def publish(self, body: Any) -> None:
        if not (self.silent and isinstance(body, Heartbeat)):
            super().publish(body)


async def test_heartbeat_loss_is_detected_published_and_fails_pending_requests(tmp_path, autojump_clock):
    rt = runtime("mem", ["client", "counter"], tmp_path, heartbeat_interval=1.0, liveness=3, request_timeout=60.0)
    client, counter = Actor("client", rt), Partitioned("counter", rt)
    async with started(client, counter):
        await client.wait_peer("counter")
        async with client.open_event_stream("peer.") as events:
            counter.silent = True
            start = trio.current_time()
            with pytest.raises(PeerLostError, match="counter was lost: no heartbeat for"):
                await client.request("counter", Add(n=1, delay=1000.0))
            waited = trio.current_time() - start
            assert 3.0 <= waited <= 4.5  # liveness x interval, not the 60 s request timeout

            async def next_about_counter() -> Any:
                async for event in events:
                    if event.sender == "client" and event.body.peer == "counter":
                        return event
                raise AssertionError("event stream ended")

            lost = await next_about_counter()
            assert lost.type == "peer.lost"
            assert client.peer_state("counter") == "lost"
            counter.silent = False
            back = await next_about_counter()
            assert (back.type, back.body.restarted) == ("peer.up", False)
        assert client.peer_state("counter") == "up"


async def test_a_stopping_actor_answers_what_it_still_owes(tmp_path):
    rt = runtime("mem", ["client", "counter"], tmp_path, request_timeout=60.0)
    client, counter = Actor("client", rt), Counter("counter", rt)
    async with trio.open_nursery() as outer:
        await outer.start(client.run)
        running = await start_running(outer, counter)
        async with trio.open_nursery() as nursery:

            async def stop_soon() -> None:
                await counter.adding.wait()
                running.scope.cancel()

            nursery.start_soon(stop_soon)
            with trio.fail_after(5), pytest.raises(RemoteError) as caught:
                await client.request("counter", Add(n=1, delay=1000.0))
        assert caught.value.code == ErrorCode.ACTOR_STOPPED
        outer.cancel_scope.cancel()


class Lingering(Counter):
    """A counter whose background task takes its time to wind down once the actor stops (a last flush)."""

    def __init__(self, name: str, runtime: Runtime) -> None:
        super().__init__(name, runtime)
        self.winding = trio.Event()
        self.release = trio.Event()

    async def setup(self) -> None:
        self.start_soon(self._linger)

    async def _linger(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                self.winding.set()
                await self.release.wait()


async def test_while_its_work_winds_down_a_stopping_actor_refuses_new_work_instead_of_crashing(tmp_path):
    # The window between the end of main and the end of the actor's work: its tasks are being
    # cancelled and the nursery takes no new one. A request or start_soon arriving then used to raise
    # "Nursery is closed to new arrivals" inside the actor (seen as a traceback when awen up stopped).
    rt = runtime("mem", ["client", "lingering"], tmp_path, request_timeout=60.0)
    client, lingering = Actor("client", rt), Lingering("lingering", rt)
    async with trio.open_nursery() as outer:
        await outer.start(client.run)
        running = await start_running(outer, lingering)
        running.scope.cancel()
        with trio.fail_after(5):
            await lingering.winding.wait()
            assert not lingering.running
            with pytest.raises(ActorStoppedError):
                lingering.start_soon(trio.sleep, 0)
            with pytest.raises(RemoteError) as caught:
                await client.request("lingering", Add(n=1, delay=0.01))
            assert caught.value.code == ErrorCode.ACTOR_STOPPED
        lingering.release.set()
        outer.cancel_scope.cancel()
    assert lingering.total == 0


async def test_teardown_is_cut_off_after_stop_timeout(tmp_path, autojump_clock):
    rt = runtime("mem", ["stubborn"], tmp_path, stop_timeout=3.0)
    stubborn = Stubborn("stubborn", rt)
    async with trio.open_nursery() as nursery:
        await nursery.start(stubborn.run)
        start = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start == pytest.approx(3.0)


async def test_one_at_a_time_keeps_arrival_order(tmp_path):
    rt = runtime("mem", ["client", "counter"], tmp_path, max_concurrent=1)
    client, counter = Actor("client", rt), Counter("counter", rt)
    async with started(client, counter):
        for seq in range(200):
            await client.send("counter", Note(seq=seq))
        with trio.fail_after(10):
            await client.request("counter", Add(n=0))  # handled after every note
        assert counter.notes == list(range(200))


async def test_concurrency_is_bounded_and_the_rest_waits(tmp_path, autojump_clock):
    rt = runtime("mem", ["client", "counter"], tmp_path, max_concurrent=3)
    client, counter = Actor("client", rt), Counter("counter", rt)
    async with started(client, counter):
        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(client.request, "counter", Add(n=1, delay=0.01))
        assert counter.total == 30
        assert counter.most_in_flight == 3


async def test_a_client_outside_the_directory_can_ask(tmp_path):
    rt = runtime("ipc", ["counter"], tmp_path)
    client, counter = Actor("cli", rt), Counter("counter", rt)
    assert client.address is None
    async with started(counter, client):
        with trio.fail_after(5):
            assert await client.request("counter", Add(n=4)) == Total(total=4)


async def test_a_message_for_someone_else_is_refused(tmp_path):
    rt = runtime("ipc", ["counter"], tmp_path)
    counter = Counter("counter", rt)
    codec = Codec(TEST_CATALOG)
    async with started(counter):
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.connect(rt.directory["counter"].address)
        sock.send(codec.encode(make_envelope(Add(n=1), sender="x", to="hal", id=5)))
        with trio.fail_after(5):
            (frame,) = await recv_message(sock)
        reply = codec.decode(frame)
        sock.close(linger=0)
    assert reply.re == 5
    assert reply.body.code == ErrorCode.WRONG_RECIPIENT
    assert counter.total == 0


async def test_ten_thousand_malformed_frames_do_not_stop_an_actor(tmp_path):
    rt = runtime("ipc", ["counter"], tmp_path, hwm=20000)
    counter = Counter("counter", rt)
    codec = Codec(TEST_CATALOG)
    bad = [
        b"\xc1",
        b"not msgpack at all",
        msgspec.msgpack.encode({"v": 1, "id": 1}),
        msgspec.msgpack.encode(
            {"v": 99, "id": 2, "type": "test.add", "from": "x", "to": "counter", "ts": 0.0, "body": {}}
        ),
        codec.encode(make_envelope(Add(n=1), sender="x", to="counter", id=3))[:-2],
    ]
    async with started(counter):
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, 20000)
        sock.setsockopt(zmq.RCVHWM, 20000)
        sock.connect(rt.directory["counter"].address)
        for i in range(10_000):
            sock.send(bad[i % len(bad)])
        sock.send(codec.encode(make_envelope(Add(n=7), sender="x", to="counter", id=99)))
        replies: list[Any] = []
        with trio.fail_after(120):
            while len(replies) < 10_001:
                (frame,) = await recv_message(sock)
                replies.append(codec.decode(frame))
        sock.close(linger=0)
    errors = [r for r in replies if r.type == "sys.error"]
    assert len(errors) == 10_000
    assert {r.body.code for r in errors} == {"malformed", "invalid", "unsupported-version"}
    answer = [r for r in replies if r.re == 99]
    assert [r.body for r in answer] == [Total(total=7)]
    assert counter.malformed == 10_000


async def test_an_actor_answers_not_ready_until_it_is_set_up_and_requests_ask_again(tmp_path):
    rt = runtime("inproc", ["client", "counter"], tmp_path)
    client, counter = Actor("client", rt), SlowToStart("counter", rt)
    codec = Codec(TEST_CATALOG)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        nursery.start_soon(counter.run)
        with trio.fail_after(10):
            while counter.bound_address is None:  # noqa: ASYNC110 - bound before setup runs
                await trio.sleep(0.001)
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.connect(counter.bound_address)
        try:
            raw.send(codec.encode(make_envelope(Add(n=1), sender="raw", to="counter", id=1)))
            with trio.fail_after(10):
                answer = codec.decode((await recv_message(raw))[-1]).body
            assert (answer.code, "counter is starting" in answer.message) == (ErrorCode.NOT_READY, True)
        finally:
            raw.close(linger=0)
        assert (await client.request("counter", Ping(data=b"up?"))).data == b"up?"  # answered while starting
        got: list[Total] = []

        async def add() -> None:
            got.append(await client.request("counter", Add(n=2)))

        async with trio.open_nursery() as waiting:
            waiting.start_soon(add)
            await trio.sleep(0.2)  # asked, refused, asked again...
            assert got == []
            counter.opened.set()  # ...until the actor is ready: then served, once
        assert got == [Total(total=2)]
        assert counter.total == 2
        nursery.cancel_scope.cancel()


async def test_a_not_ready_peer_is_asked_until_the_callers_deadline_then_the_error_is_raised(tmp_path, autojump_clock):
    rt = runtime("mem", ["client", "counter"], tmp_path, request_timeout=0.5)
    client, counter = Actor("client", rt), SlowToStart("counter", rt)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        nursery.start_soon(counter.run)
        with pytest.raises(RemoteError) as caught:
            await client.request("counter", Add(n=1))
        assert caught.value.code == ErrorCode.NOT_READY
        with pytest.raises(trio.TooSlowError), trio.fail_after(0.3):  # the caller's own deadline rules
            await client.request("counter", Add(n=1))
        assert counter.total == 0
        nursery.cancel_scope.cancel()


async def test_leaving_an_event_stream_while_events_arrive_loses_nothing_else(tmp_path, caplog):
    """A stream's reader leaves at a checkpoint before its subscription ends: an event published
    in that moment is dropped for it, not raised into the publisher (BrokenResourceError did)."""
    rt = runtime("ipc", ["client", "counter"], tmp_path)
    client, counter = Actor("client", rt), Counter("counter", rt)
    async with started(client, counter):
        with trio.fail_after(30):
            await client.wait_peer("counter")
            totals = []

            async def adding() -> None:
                for _ in range(1000):
                    totals.append((await client.request("counter", Add(n=1))).total)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(adding)
                while len(totals) < 1000:
                    for actor in (counter, client):  # its own events, and a peer's from the wire
                        async with actor.open_event_stream("test.") as stream:
                            with trio.move_on_after(0.001):
                                await stream.receive()
    assert totals == list(range(1, 1001))  # every request answered, in order
    assert not [r for r in caplog.records if "BrokenResourceError" in r.getMessage() or r.exc_info]
