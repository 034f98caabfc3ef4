"""Hostile frames at one actor: each is answered with its documented code (or, for notices, not at all),
the actor keeps serving, and what it logs stays short."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio
import zmq

from protocol import MAX_ERROR_TEXT, Codec, ErrorCode, make_envelope
from protocol.system import MAX_ERROR_MESSAGE, Ping, Pong
from runtime import Actor, Address, Directory, RemoteError, Runtime, RuntimeOptions, handles
from runtime._logging import MAX_LOG_RECORD, configure_logging
from runtime._zmq import ZmqSocket

from .actors import TEST_CATALOG, Add, Counter, Note, Total
from .helpers import recv_message
from .test_hostile import HEADER, frame_with_body, ndarray_ext, nested, ping_with

codec = Codec(TEST_CATALOG)


def runtime(tmp_path: Any, names: list[str], **options: Any) -> Runtime:
    return Runtime(
        Directory({n: Address(address=f"ipc://{tmp_path}/{n}", events=f"ipc://{tmp_path}/{n}.ev") for n in names}),
        RuntimeOptions(**{"heartbeat_interval": 0.1, **options}),
        catalog=TEST_CATALOG,
    )


@asynccontextmanager
async def serving(actor: Actor) -> AsyncIterator[zmq.Socket[Any]]:
    """The actor running, and a raw DEALER connected to its address (a client written from the docs)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        assert actor.address is not None
        sock.connect(actor.address.address)
        try:
            yield sock
        finally:
            sock.close()
            nursery.cancel_scope.cancel()


async def ask(sock: zmq.Socket[Any], frame: bytes) -> Any:
    sock.send(frame)
    with trio.fail_after(10):
        (reply,) = await recv_message(sock)
    return codec.decode(reply)


async def still_serving(sock: zmq.Socket[Any], counter: Counter) -> None:
    before = counter.total
    reply = await ask(sock, codec.encode(make_envelope(Add(n=1), sender="client", to="counter", id=424242)))
    assert (reply.re, reply.body) == (424242, Total(total=before + 1))


HOSTILE = [
    ("nested-1000", ping_with(nested(1_000)), ErrorCode.TOO_LARGE),
    ("nested-map-1000", ping_with(nested(1_000, kind="map")), ErrorCode.TOO_LARGE),
    ("nested-100000-bare", nested(100_000), ErrorCode.TOO_LARGE),
    ("dtype-f1", ping_with(ndarray_ext("<f1", [1], b"x")), ErrorCode.INVALID),
    ("dtype-b2", ping_with(ndarray_ext("|b2", [1], b"xx")), ErrorCode.INVALID),
    ("dtype-i16", ping_with(ndarray_ext("<i16", [1], b"x" * 16)), ErrorCode.INVALID),
    ("dtype-c4", ping_with(ndarray_ext("<c4", [1], b"x" * 4)), ErrorCode.INVALID),
    ("shape-2**63", ping_with(ndarray_ext("<f8", [0, 2**63], b"")), ErrorCode.INVALID),
    ("shape-2**64-1", ping_with(ndarray_ext("<f8", [0, 2**64 - 1], b"")), ErrorCode.INVALID),
    ("shape-overflow", ping_with(ndarray_ext("<f8", [0, 2**62, 2**62], b"")), ErrorCode.INVALID),
    ("type-4MB", frame_with_body(b"\x80", type="x" * 4_000_000), ErrorCode.INVALID),
    ("field-4MB", msgpack.packb({**HEADER, "to": "counter", "body": {"d" * 4_000_000: 1}}), ErrorCode.INVALID),
    ("from-4MB", msgpack.packb({**HEADER, "from": "f" * 4_000_000, "body": {}}), ErrorCode.INVALID),
    ("garbage", b"\xc1\xc1\xc1", ErrorCode.MALFORMED),
]


@pytest.mark.parametrize(("name", "frame", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_a_hostile_frame_is_answered_with_its_code_and_the_actor_keeps_serving(tmp_path, name, frame, code):
    counter = Counter("counter", runtime(tmp_path, ["counter"]))
    async with serving(counter) as sock:
        reply = await ask(sock, frame)
        assert reply.type == "sys.error"
        assert reply.body.code == code
        assert len(reply.body.message) <= MAX_ERROR_TEXT
        assert reply.body.field is None or len(reply.body.field) <= 200
        assert len(reply.to) <= 256
        await still_serving(sock, counter)
    assert counter.malformed == 1


async def test_every_hostile_frame_in_a_row_from_one_client(tmp_path):
    counter = Counter("counter", runtime(tmp_path, ["counter"]))
    async with serving(counter) as sock:
        for _, frame, code in HOSTILE * 3:
            assert (await ask(sock, frame)).body.code == code
        await still_serving(sock, counter)


async def test_a_notice_that_cannot_be_read_gets_no_reply(tmp_path):
    counter = Counter("counter", runtime(tmp_path, ["counter"]))
    note = msgpack.packb({**HEADER, "type": Note.TYPE, "to": "counter", "body": {"seq": "one"}})
    deep_note = frame_with_body(b"\x81\xa3seq" + nested(1_000), type=Note.TYPE)
    event = msgpack.packb({**HEADER, "type": "test.changed", "to": "counter", "body": {"total": "many"}})
    async with serving(counter) as sock:
        for frame in (note, deep_note, event):
            sock.send(frame)
        # The next reply on the socket is the answer to this ping: nothing came back for the three above.
        pong = await ask(sock, codec.encode(make_envelope(Ping(data=1), sender="client", to="counter", id=77)))
        assert (pong.type, pong.re) == ("sys.pong", 77)
    assert counter.malformed == 3


class Loud(Actor):
    """Handlers that go wrong in ways a client's input must never reach; here they are made to."""

    @handles(Ping)
    def huge_echo(self, msg: Ping, env: Any) -> Any:
        if msg.data == "raise":
            raise ValueError("x" * 4_000_000)
        return Pong(data=msg.data, pid=self.pid, incarnation=self.incarnation)


async def test_a_reply_too_large_to_send_is_answered_too_large_not_handler_failed(tmp_path):
    # The request fits; its echo, with the pid and incarnation besides, does not.
    frame = codec.encode(make_envelope(Ping(data=b"x" * 450), sender="client", to="counter", id=5))
    actor = Actor("counter", runtime(tmp_path, ["counter"], max_frame_bytes=len(frame) + 10))
    async with serving(actor) as sock:
        sock.send(frame)
        with trio.fail_after(10):
            (reply,) = await recv_message(sock)
        error = codec.decode(reply)
    assert (error.re, error.body.code) == (5, ErrorCode.TOO_LARGE)
    assert actor.failed == 0


async def test_a_handler_that_raises_is_answered_with_bounded_text_and_the_actor_keeps_serving(tmp_path, caplog):
    loud = Loud("counter", runtime(tmp_path, ["counter"]))
    async with serving(loud) as sock:
        error = await ask(sock, codec.encode(make_envelope(Ping(data="raise"), sender="c", to="counter", id=3)))
        assert error.body.code == ErrorCode.HANDLER_FAILED
        assert len(error.body.message) <= MAX_ERROR_MESSAGE
        pong = await ask(sock, codec.encode(make_envelope(Ping(data=1), sender="c", to="counter", id=4)))
        assert pong.body.data == 1
    assert loud.failed == 1


async def test_a_broken_receive_path_costs_one_frame_not_the_actor(tmp_path, monkeypatch, caplog):
    counter = Counter("counter", runtime(tmp_path, ["counter"]))
    real = counter.codec.decode
    calls = 0

    def flaky(frame: bytes) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug on the receive path")
        return real(frame)

    monkeypatch.setattr(counter.codec, "decode", flaky)
    async with serving(counter) as sock:
        sock.send(codec.encode(make_envelope(Add(n=5), sender="client", to="counter", id=1)))
        await still_serving(sock, counter)
    assert "a bug on the receive path" in caplog.text


async def test_an_unreadable_reply_fails_the_request_at_once_not_at_its_timeout(tmp_path):
    rt = runtime(tmp_path, ["client", "fake"], request_timeout=60.0)
    client = Actor("client", rt)
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(rt.directory["fake"].address)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)

            async def answer_badly() -> None:
                identity, frame = await recv_message(router)
                request = codec.decode(frame)
                bad = msgpack.packb(
                    {**HEADER, "type": "sys.pong", "from": "fake", "to": "client", "re": request.id, "body": {"x": 1}}
                )
                router.send_multipart([identity, bad])

            nursery.start_soon(answer_badly)
            with trio.fail_after(10), pytest.raises(RemoteError, match="unknown field `x`") as caught:
                await client.request("fake", Ping())
            assert (caught.value.code, caught.value.peer) == (ErrorCode.INVALID, "fake")
            deep = frame_with_body(nested(1_000), type="sys.pong", to="client")

            async def answer_deep() -> None:
                identity, frame = await recv_message(router)
                request = codec.decode(frame)
                router.send_multipart([identity, deep.replace(b"\xa2re\xc0", b"\xa2re\xcf" + request.id.to_bytes(8))])

            nursery.start_soon(answer_deep)
            with trio.fail_after(10), pytest.raises(RemoteError, match="could not be read") as caught:
                await client.request("fake", Ping())
            assert caught.value.code == ErrorCode.TOO_LARGE
            nursery.cancel_scope.cancel()
    finally:
        router.close()


def test_log_records_are_cut_to_a_bounded_length(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", actor="memory")
        logging.getLogger("awen.test").warning("refused %s", "y" * 4_000_000)
        try:
            raise ValueError("z" * 4_000_000)
        except ValueError:
            logging.getLogger("awen.test").exception("a handler raised")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = capsys.readouterr().err.splitlines()
    assert lines
    assert max(len(line) for line in lines) <= MAX_LOG_RECORD
    assert sum(len(line) for line in lines) <= 3 * MAX_LOG_RECORD
    assert any("ValueError" in line for line in lines)  # the end of a traceback is kept: it names the error


async def test_a_burst_of_frames_slow_to_take_does_not_starve_the_other_tasks():
    # 40 frames of 10 ms each arrive at once: taking them all in one pump would hold the
    # event loop for 400 ms (a flood of large frames, each decoded in turn, for seconds,
    # long enough for the heartbeats to stop and the supervisor to kill the actor as hung).
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind("inproc://slow")
    dealer = context.socket(zmq.DEALER)
    dealer.connect("inproc://slow")
    taken = 0

    def slow(frames: list[bytes]) -> None:
        nonlocal taken
        busy = time.perf_counter() + 0.01  # 10 ms of work holding the event loop, as decoding a large frame does
        while time.perf_counter() < busy:
            pass
        taken += 1

    owner = ZmqSocket(router, name="router", on_recv=slow)
    gaps: list[float] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(owner.run)
            for i in range(40):
                dealer.send(b"%d" % i)

            async def tick() -> None:
                last = time.monotonic()
                while taken < 40:
                    await trio.lowlevel.checkpoint()
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            with trio.fail_after(10):
                await tick()
            nursery.cancel_scope.cancel()
    finally:
        dealer.close(linger=0)
        context.destroy(linger=0)
    assert max(gaps) < 0.2, f"the event loop was held for {max(gaps):.3f} s"
