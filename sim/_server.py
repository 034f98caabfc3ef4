"""The simulator on the wire: a raw TCP port and a pseudo-terminal, like real controllers.

`DeviceServer` reads messages from any trio stream, hands them to the
`Device` one at a time (several TCP clients may be connected; their commands
never interleave), writes the replies, and injects the transport faults of
the device description: close the connection, delay a reply, corrupt a byte of
it. Nothing a client sends stops the server.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import tty
from collections.abc import Callable
from pathlib import Path

import trio

from protocol import scpi

from ._config import SimConfig
from ._device import TRANSPORT_FAULTS, Device
from ._record import RecordTarget

log = logging.getLogger("awen.sim")

BUSY_SLEEP_THRESHOLD = 1e-3
"""Commands whose modelled duration (shots, settling) exceeds this keep the device busy for real."""


class DeviceServer:
    """One simulated device, shared by every connection.

    Args:
        config: The device description.
        seed: The seed (overrides the file's).
        record: Where the device's audit record goes (a file or a callback; see `Device`).
    """

    def __init__(self, config: SimConfig, *, seed: int | None = None, record: RecordTarget | None = None) -> None:
        self.config = config
        self.seed = seed
        self.record = record
        self._device: Device | None = None
        self._lock = trio.Lock()
        self._poke = trio.Event()
        self._watching_until = math.inf
        self.connections = 0
        self.slow = 0.0
        """Seconds every reply is held back (the control port's ``slow``), on top of any ``delay`` fault."""

    @property
    def device(self) -> Device:
        if self._device is None:
            # Built in trio, so that the watchdog follows trio's clock (and a test's autojump clock).
            self._device = Device(self.config, seed=self.seed, host_clock=trio.current_time, record=self.record)
        return self._device

    def banner(self) -> str:
        d = self.device
        return (
            f"Photonica {d.description.identity.model} {d.description.identity.serial} "
            f"({self.config.modes} modes, seed {d.seed})"
        )

    async def run_watchdog(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Put the device in its safe state when an armed watchdog runs out, even with no client."""
        task_status.started()
        device = self.device
        while True:
            self._poke = trio.Event()
            deadline = device.watchdog_deadline()
            self._watching_until = math.inf if deadline is None else deadline + 1e-6
            with trio.move_on_at(self._watching_until):
                await self._poke.wait()
            async with self._lock:
                if device.check_watchdog():
                    log.warning("watchdog expired: heaters at 0 V, sources off")

    async def serve_stream(
        self, stream: trio.abc.Stream, *, on_close: Callable[[], None] | None = None, peer: str = "stream"
    ) -> bool:
        """Answer one client until it leaves; True if an injected fault closed the connection.

        ``peer`` names the client in the audit record.
        """
        device = self.device
        framer = scpi.Framer()
        self.connections += 1
        connection = device.connect(peer)
        try:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return False
                if not data:
                    return False
                for item in framer.feed(bytes(data)):
                    if isinstance(item, scpi.Overrun):
                        device.overrun(item.size)
                        continue
                    reply = await self.respond(item, connection=connection)
                    if reply is CLOSE:
                        await stream.aclose()
                        if on_close is not None:
                            on_close()
                        return True
                    if reply is None:
                        continue
                    try:
                        await stream.send_all(reply)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        return False
        finally:
            self.connections -= 1
            device.disconnect(connection)

    async def respond(self, message: bytes, *, connection: int | None = None) -> bytes | None:
        """One message carried out: the reply line to send (newline included), None, or `CLOSE`.

        Takes as long as the device would (shots, settling, an injected delay).
        The device is held, other clients waiting, only while it is busy with
        the message; an injected delay holds back the reply alone, as a slow
        link would, so the watchdog and other clients carry on meanwhile.
        """
        device = self.device
        async with self._lock:
            faults = device.faults.next(message)
            transport = {f.kind: f for f in faults if f.kind in TRANSPORT_FAULTS}
            if "close" in transport:
                log.info("fault: closing the connection instead of answering %r", message[:60])
                return CLOSE
            before = device.clock
            try:
                with device.attributed_to(connection):
                    reply = device.handle(message, [f for f in faults if f.kind not in TRANSPORT_FAULTS])
            except Exception:
                log.exception("the simulator failed on %r", message[:60])
                device.errors.append(scpi.ScpiError(scpi.DEVICE_ERROR, "internal simulator error; see its log"))
                reply = None
            deadline = device.watchdog_deadline()
            if deadline is not None and deadline < self._watching_until:
                self._poke.set()  # armed or shortened: the watchdog must wake sooner than it would
            busy = device.clock - before
            if busy > BUSY_SLEEP_THRESHOLD:
                try:
                    await trio.sleep(busy)
                finally:
                    # Busy for a client is not silence: the watchdog counts from the end.
                    device.feed_watchdog()
            if reply and "corrupt" in transport:
                at = transport["corrupt"].at
                position = min(at, len(reply) - 1) if at is not None else int(device.faults.rng.integers(len(reply)))
                corrupted = bytearray(reply)
                flipped = corrupted[position] ^ 0x01
                corrupted[position] = flipped if flipped != 0x0A else corrupted[position] ^ 0x02
                reply = bytes(corrupted)
        if reply is None:
            return None
        delay = self.slow + (transport["delay"].seconds if "delay" in transport else 0.0)
        if delay > 0:
            await trio.sleep(delay)
        return reply + b"\n"


CLOSE = b"<close>"
"""What `DeviceServer.respond` returns when an injected fault closes the connection instead of answering."""


class InProcessStream(trio.abc.Stream):
    """A client's connection to a `DeviceServer` in the same process, without a byte pipe in between.

    ``send_all`` carries the complete messages out at once (taking as long as
    the device would) and ``receive_some`` hands back the replies: the same
    bytes and faults as over TCP, with no task and no copy between the two
    ends. An injected ``close`` ends the stream as a dropped link would.
    """

    def __init__(self, server: DeviceServer) -> None:
        self._server = server
        self._framer = scpi.Framer()
        self._replies = bytearray()
        self._arrived = trio.Event()
        self._eof = False
        self._closed = False
        self._sending = False
        self._connection: int | None = None  # numbered by the device at the first message
        server.connections += 1

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        if self._eof:
            raise trio.BrokenResourceError("the device closed the connection")
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._connection is None:
                self._connection = self._server.device.connect("in-process")
            for item in self._framer.feed(bytes(data)):
                if isinstance(item, scpi.Overrun):
                    self._server.device.overrun(item.size)
                    continue
                reply = await self._server.respond(item, connection=self._connection)
                if reply is CLOSE:
                    self._eof = True
                    self._arrived.set()
                    raise trio.BrokenResourceError("the device closed the connection")
                if reply is not None:
                    self._replies += reply
                    self._arrived.set()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the stream was closed")
        if self._replies or self._eof:
            await trio.lowlevel.checkpoint()
        while not self._replies and not self._eof:
            self._arrived = trio.Event()
            await self._arrived.wait()
        size = len(self._replies) if max_bytes is None else min(max_bytes, len(self._replies))
        data = bytes(self._replies[:size])
        del self._replies[:size]
        return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._server.connections -= 1
            if self._connection is not None:
                self._server.device.disconnect(self._connection)
        await trio.lowlevel.checkpoint()


async def serve_tcp(
    server: DeviceServer,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the device on a raw TCP port (``port`` 0 picks a free one); reports (host, port) when listening."""

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                host, port = stream.socket.getpeername()[:2]
                peer = f"tcp {host}:{port}"
            except OSError:
                peer = "tcp"
            await server.serve_stream(stream, peer=peer)

    async with trio.open_nursery() as nursery:
        await nursery.start(server.run_watchdog)
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, port, host=host))
        bound_host, bound_port = listeners[0].socket.getsockname()[:2]
        task_status.started((bound_host, bound_port))


class PseudoTerminal:
    """A pty pair whose far end a client opens like a USB-serial adapter."""

    def __init__(self, link: Path | None = None) -> None:
        self.link = link
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line editing: bytes pass as they are
        self.path = os.ttyname(self.slave)
        if link is not None:
            tmp = link.with_name(link.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self.path)
            tmp.replace(link)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


async def serve_pty(
    server: DeviceServer,
    *,
    link: Path | None = None,
    on_path: Callable[[str], None] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the device on a pseudo-terminal; reports the path of its far end.

    An injected ``close`` fault hangs the line up, as an unplugged adapter
    does, and opens a new pty (reported through ``on_path``, and ``link``
    re-pointed to it if given) before the old one hangs up: a client that
    follows the link when its line goes dead finds the new one there.
    """
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run_watchdog)
        pty = PseudoTerminal(link)
        task_status.started(pty.path)
        try:
            while True:
                stream = trio.lowlevel.FdStream(os.dup(pty.master))
                try:
                    closed = await server.serve_stream(stream, peer=f"pty {pty.path}")
                finally:
                    await stream.aclose()
                if not closed:
                    # The master reported end of file: the far end stays ours, so
                    # this only happens on an error; start a fresh line.
                    await trio.sleep(0.05)
                old, pty = pty, PseudoTerminal(link)
                if on_path is not None:
                    on_path(pty.path)
                old.close()
        finally:
            pty.close()
