"""Where a device is, chosen by URL, and how to open a fresh stream to it.

* ``tcp://HOST:PORT``: a raw socket (trio).
* ``serial:///dev/ttyUSB0?baud=115200&parity=N&bytesize=8&stopbits=1``:
  pyserial configures the port, then trio reads and writes its file
  descriptor (`trio.lowlevel.FdStream`), so serial I/O never blocks the
  event loop (pyserial's own ``readline`` reads a byte per system call).
* ``sim://?seed=1&modes=8&device=FILE&fault=SPEC``: a simulated device in
  this process, reached through an in-memory stream; the simulated chip lives
  as long as the endpoint, across reconnects.
"""

from __future__ import annotations

import abc
import functools
import os
import termios
from typing import Any
from urllib.parse import parse_qs, urlsplit

import serial
import trio

from protocol import ConfigError


class Endpoint(abc.ABC):
    """A device's address; `open` gives a new stream each time (for reconnects)."""

    url: str

    @abc.abstractmethod
    async def open(self, nursery: trio.Nursery) -> trio.abc.Stream:
        """A fresh stream to the device; ``nursery`` hosts any helper tasks."""

    async def aclose(self) -> None:  # noqa: B027 - most endpoints hold nothing between connections
        """Release what outlives single connections."""


class TcpEndpoint(Endpoint):
    def __init__(self, url: str, host: str, port: int) -> None:
        self.url, self.host, self.port = url, host, port

    async def open(self, nursery: trio.Nursery) -> trio.abc.Stream:
        return await trio.open_tcp_stream(self.host, self.port)


class _SerialStream(trio.abc.Stream):
    """A configured serial port as a trio stream over its file descriptor."""

    def __init__(self, port: serial.Serial) -> None:
        self._port = port
        self._fd = trio.lowlevel.FdStream(os.dup(port.fileno()))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._fd.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._fd.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data: bytes = await self._fd.receive_some(max_bytes)
        return data

    async def aclose(self) -> None:
        await self._fd.aclose()
        self._port.close()


class SerialEndpoint(Endpoint):
    def __init__(self, url: str, path: str, settings: dict[str, Any]) -> None:
        self.url, self.path, self.settings = url, path, settings

    async def open(self, nursery: trio.Nursery) -> trio.abc.Stream:
        try:
            port = serial.Serial(self.path, exclusive=True, **self.settings)
        except (serial.SerialException, ValueError) as exc:
            raise OSError(f"cannot open {self.path}: {exc}") from exc
        # pyserial leaves VMIN = 0, and then a read of an empty tty returns 0
        # bytes, which a stream takes for end of file. With VMIN = 1 it says
        # EAGAIN instead (the fd is non-blocking under trio), as a socket does.
        attributes = termios.tcgetattr(port.fileno())
        attributes[6][termios.VMIN], attributes[6][termios.VTIME] = 1, 0
        termios.tcsetattr(port.fileno(), termios.TCSANOW, attributes)
        return _SerialStream(port)


class SimEndpoint(Endpoint):
    """A simulated Photonica device in this process (`sim.DeviceServer`)."""

    def __init__(self, url: str, seed: int | None, modes: int | None, device_file: str | None, faults: list[str]):
        import sim  # the one place below the CLI that starts the simulator

        self.url = url
        try:
            config = sim.load_config(device_file) if device_file else sim.SimConfig()
            if modes is not None:
                config = sim.parse_config({**_plain(config), "modes": modes}, source=url)
            extra = [sim.parse_fault(spec) for spec in faults]
        except sim.SimConfigError as exc:
            raise ConfigError(f"{url}: {exc}") from exc
        if extra:
            config = sim.parse_config({**_plain(config), "faults": [*_plain(config)["faults"], *map(_plain, extra)]})
        self.server = sim.DeviceServer(config, seed=seed)
        self._connect = functools.partial(sim.InProcessStream, self.server)
        # The simulated device's watchdog outlives cancellation of whoever uses
        # it, as a real controller's would; aclose() ends it.
        self._scopes: list[trio.CancelScope] = []
        self._watchdog_started = False

    async def open(self, nursery: trio.Nursery) -> trio.abc.Stream:
        if not self._watchdog_started:
            await nursery.start(self._shielded, self.server.run_watchdog)
            self._watchdog_started = True
        return self._connect()  # the same bytes and faults as over TCP, without a pipe and a task between

    async def _shielded(self, task: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        scope = trio.CancelScope(shield=True)
        self._scopes.append(scope)
        try:
            with scope:
                await task(task_status=task_status)
        finally:
            self._scopes.remove(scope)

    async def aclose(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()


def _plain(struct: Any) -> Any:
    import msgspec

    return msgspec.to_builtins(struct)


def endpoint_from_url(url: str) -> Endpoint:
    """The endpoint a URL names; `ConfigError` saying what is wrong otherwise."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)

    def one(key: str) -> str | None:
        values = query.get(key)
        return values[-1] if values else None

    if parts.scheme == "tcp":
        if not parts.hostname or parts.port is None:
            raise ConfigError(f"{url!r}: a TCP device URL looks like tcp://HOST:PORT")
        return TcpEndpoint(url, parts.hostname, parts.port)
    if parts.scheme == "serial":
        if not parts.path:
            raise ConfigError(f"{url!r}: a serial device URL looks like serial:///dev/ttyUSB0?baud=115200")
        settings: dict[str, Any] = {"baudrate": int(one("baud") or 115200)}
        if one("parity"):
            settings["parity"] = one("parity")
        if one("bytesize"):
            settings["bytesize"] = int(one("bytesize") or 8)
        if one("stopbits"):
            settings["stopbits"] = float(one("stopbits") or 1)
        return SerialEndpoint(url, parts.path, settings)
    if parts.scheme == "sim":
        seed, modes = one("seed"), one("modes")
        try:
            return SimEndpoint(
                url,
                int(seed) if seed is not None else None,
                int(modes) if modes is not None else None,
                one("device"),
                query.get("fault", []),
            )
        except ValueError as exc:
            raise ConfigError(f"{url!r}: {exc}") from exc
    raise ConfigError(f"{url!r}: a device URL starts with tcp://, serial:// or sim://")
