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

log = logging.getLogger("awen.sim")

BUSY_SLEEP_THRESHOLD = 1e-3
"""Commands whose modelled duration (shots, settling) exceeds this keep the device busy for real."""


class DeviceServer:
    """One simulated device, shared by every connection.

    Args:
        config: The device description.
        seed: The seed (overrides the file's).
    """

    def __init__(self, config: SimConfig, *, seed: int | None = None) -> None:
        self.config = config
        self.seed = seed
        self._device: Device | None = None
        self._lock = trio.Lock()
        self._poke = trio.Event()
        self.connections = 0

    @property
    def device(self) -> Device:
        if self._device is None:
            # Built in trio, so that the watchdog follows trio's clock (and a test's autojump clock).
            self._device = Device(self.config, seed=self.seed, host_clock=trio.current_time)
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
            with trio.move_on_at(math.inf if deadline is None else deadline + 1e-6):
                await self._poke.wait()
            async with self._lock:
                if device.check_watchdog():
                    log.warning("watchdog expired: heaters at 0 V, sources off")

    async def serve_stream(self, stream: trio.abc.Stream, *, on_close: Callable[[], None] | None = None) -> bool:
        """Answer one client until it leaves; True if an injected fault closed the connection."""
        device = self.device
        framer = scpi.Framer()
        self.connections += 1
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
                    closed = await self._answer(stream, item)
                    if closed:
                        if on_close is not None:
                            on_close()
                        return True
        finally:
            self.connections -= 1

    async def _answer(self, stream: trio.abc.Stream, message: bytes) -> bool:
        device = self.device
        async with self._lock:
            faults = device.faults.next()
            transport = {f.kind: f for f in faults if f.kind in TRANSPORT_FAULTS}
            if "close" in transport:
                log.info("fault: closing the connection instead of answering %r", message[:60])
                await stream.aclose()
                return True
            before = device.clock
            try:
                reply = device.handle(message, [f for f in faults if f.kind not in TRANSPORT_FAULTS])
            except Exception:
                log.exception("the simulator failed on %r", message[:60])
                device.errors.append(scpi.ScpiError(scpi.DEVICE_ERROR, "internal simulator error; see its log"))
                reply = None
            self._poke.set()
            busy = device.clock - before
            if busy > BUSY_SLEEP_THRESHOLD:
                await trio.sleep(busy)
            if reply is None:
                return False
            if "delay" in transport:
                await trio.sleep(transport["delay"].seconds)
            if "corrupt" in transport and reply:
                position = int(device.faults.rng.integers(len(reply)))
                corrupted = bytearray(reply)
                flipped = corrupted[position] ^ 0x01
                corrupted[position] = flipped if flipped != 0x0A else corrupted[position] ^ 0x02
                reply = bytes(corrupted)
            try:
                await stream.send_all(reply + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return False
            return False


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
            await server.serve_stream(stream)

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
    re-pointed to it if given).
    """
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run_watchdog)
        started = False
        while True:
            pty = PseudoTerminal(link)
            if not started:
                task_status.started(pty.path)
                started = True
            elif on_path is not None:
                on_path(pty.path)
            stream = trio.lowlevel.FdStream(os.dup(pty.master))
            try:
                closed = await server.serve_stream(stream)
            finally:
                await stream.aclose()
                pty.close()
            if not closed:
                # The master reported end of file: the far end stays ours, so
                # this only happens on an error; start a fresh line.
                await trio.sleep(0.05)
