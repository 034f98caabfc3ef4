"""The Photonica driver: the device's commands as typed methods.

Each method sends one message, composed from the device's command set
(`protocol.photonica`), and returns its reply as a value (`drivers._replies`);
device errors come back as `DeviceError` with their SCPI number. Commands that
must reach the device together (a set-up of its inputs, shots with their
fetch) go as one message, one exchange: a `Batch`. How a message travels, and
how the link heals when it fails, is `drivers._link`.

The driver has no policy: limits, read-back, what to make safe when, are the
HAL's (`actors.hal`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, TypeVar

import numpy as np
import trio

from protocol import LinkError, ProtocolError, scpi
from protocol import photonica as px
from protocol.hal import MAX_MODES, DelayRoute, InputSetting
from protocol.photonica import Command, DeviceDescription, StatusReport

from . import _replies as replies
from ._endpoint import Endpoint, endpoint_from_url
from ._link import EventHook, Link, ReconnectPolicy, SetUp

T = TypeVar("T")


class ShotCounts(NamedTuple):
    """A run's detections: each distinct pattern (k x width uint8) and how many shots read it (k int64).

    ``per_shot``: ``patterns`` holds every shot's, in firing order, and each count is 1.
    """

    patterns: np.ndarray
    counts: np.ndarray
    width: int
    per_shot: bool = False


class Batch:
    """Commands that go to the device as one message: one exchange, one reply.

    ``Batch().add(px.CLEAR_INPUTS).add(px.SET_INPUT, 0, "photon")``. At most
    one of them may be a query: the message's reply is that query's.
    """

    __slots__ = ("_parts", "idempotent", "query")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.idempotent = True
        """Whether sending it twice is the same as once (every command in it is)."""
        self.query: Command | None = None

    def add(self, command: Command, *args: object) -> Batch:
        """Add ``command`` with its arguments (`Command.compose`); returns the batch."""
        if command.query:
            if self.query is not None:
                raise ValueError(f"a batch holds one query, and has {self.query.short} already")
            self.query = command
        self._parts.append(command.compose(*args))
        self.idempotent = self.idempotent and command.idempotent
        return self

    def message(self) -> bytes:
        return scpi.SEPARATOR.join(self._parts)

    def __bool__(self) -> bool:
        return bool(self._parts)


class PhotonicaDriver:
    """One Photonica device. Use as ``async with open_driver(url) as driver:``.

    One task at a time uses a driver (the HAL holds the device's lock around
    every use); `drivers._link.Link` documents the arguments.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        name: str = "device",
        timeout: float = 2.0,
        reconnect: ReconnectPolicy | None = None,
        attempts: int = 3,
        on_event: EventHook | None = None,
        set_up: SetUp | None = None,
    ) -> None:
        self._link = Link(
            endpoint,
            name=name,
            timeout=timeout,
            reconnect=reconnect,
            attempts=attempts,
            on_event=on_event,
            set_up=set_up,
        )

    @property
    def endpoint(self) -> Endpoint:
        return self._link.endpoint

    @property
    def identity(self) -> str | None:
        """The ``*IDN?`` reply of the first connection (every reconnect checks it again)."""
        return self._link.identity

    @property
    def description(self) -> DeviceDescription | None:
        """The capabilities of the first connection (every reconnect checks them again)."""
        return self._link.description

    @property
    def reconnects(self) -> int:
        return self._link.reconnects

    # --- life cycle ---------------------------------------------------------------------

    async def connect(self, nursery: trio.Nursery, *, keep_trying: bool = False) -> None:
        """Open the link, learn the identity and capabilities, run the set-up (once, or ``keep_trying``)."""
        await self._link.connect(nursery, keep_trying=keep_trying)

    async def aclose(self) -> None:
        await self._link.aclose()

    # --- any commands, as one message ---------------------------------------------------

    async def send(self, batch: Batch, *, reply_timeout: float | None = None) -> None:
        """Send the batch's commands as one message; `DeviceError` if the device refused any."""
        if batch:
            await self._link.send(batch.message(), idempotent=batch.idempotent, reply_timeout=reply_timeout)

    async def ask(self, batch: Batch, parse: Callable[[bytes], T], *, reply_timeout: float | None = None) -> T:
        """Send the batch (which holds one query) as one message; the query's reply as ``parse`` reads it."""
        if batch.query is None:
            raise ValueError("ask() needs a batch with a query; send() sends one without")
        return await self._link.ask(batch.message(), parse, idempotent=batch.idempotent, reply_timeout=reply_timeout)

    async def _ask(self, parse: Callable[[bytes], T], command: Command, *args: object) -> T:
        return await self._link.ask(command.compose(*args), parse, idempotent=command.idempotent)

    async def _send(self, command: Command, *args: object) -> None:
        await self._link.send(command.compose(*args), idempotent=command.idempotent)

    # --- the device ---------------------------------------------------------------------

    async def read_identity(self) -> str:
        return await self._ask(replies.text, px.IDENTITY)

    async def capabilities(self) -> DeviceDescription:
        return await self._ask(replies.description, px.CAPABILITIES)

    async def arm_watchdog(self, seconds: float) -> None:
        """With no message for ``seconds`` the device goes to its safe state by itself (0 disarms)."""
        await self._send(px.ARM_WATCHDOG, seconds)

    async def interlock(self) -> bool:
        """Whether the power interlock has tripped."""
        return await self._ask(replies.flag, px.INTERLOCK)

    async def reset_interlock(self) -> None:
        await self._send(px.RESET_INTERLOCK)

    async def status(self) -> StatusReport:
        """Temperature, power, interlock, settling, watchdog, sources, device time."""
        return await self._ask(replies.status, px.STATUS)

    async def temperature(self) -> float:
        """The chip's temperature in °C."""
        return await self._ask(float, px.TEMPERATURE)

    async def read_heaters(self) -> np.ndarray:
        """Every heater's voltage, as the device reads it back."""
        return await self._ask(replies.volts, px.HEATERS)

    async def read_heater(self, heater: int) -> float:
        return await self._ask(float, px.HEATER, heater)

    async def set_heaters(self, volts: np.ndarray) -> None:
        """Every heater at once (one block of float64)."""
        await self._send(px.SET_HEATERS, np.asarray(volts, dtype="<f8").tobytes())

    async def set_heater(self, heater: int, volts: float) -> None:
        await self._send(px.SET_HEATER, heater, volts)

    async def sources(self) -> bool:
        """Whether the sources (photons and laser) are on."""
        return await self._ask(replies.flag, px.SOURCES)

    async def enable_sources(self, on: bool) -> None:
        await self._send(px.ENABLE_SOURCES, on)

    async def configure_inputs(self, inputs: Sequence[InputSetting], *, clear: bool, sources_on: bool) -> None:
        """These modes' inputs (``clear``: every other mode to vacuum first), the sources on if asked: one message."""
        batch = Batch()
        if clear:
            batch.add(px.CLEAR_INPUTS)
        for item in inputs:
            light = (item.power_w, item.phase_rad) if item.state == "coherent" else ()
            batch.add(px.SET_INPUT, item.mode, item.state, *light)
        if sources_on:
            batch.add(px.ENABLE_SOURCES, True)
        await self.send(batch)

    async def program(
        self, ff_modes: Sequence[int], rules: Mapping[str, Mapping[int, float]], delay_lines: Sequence[DelayRoute]
    ) -> None:
        """Replace the feed-forward and delay-line program: one message."""
        batch = Batch().add(px.CLEAR_FEEDFORWARD).add(px.CLEAR_DELAY_LINES)
        for route in delay_lines:
            batch.add(px.ROUTE_DELAY_LINE, route.line, route.out_mode, route.in_mode, route.rounds)
        if ff_modes:
            batch.add(px.SET_FEEDFORWARD_MODES, ff_modes)
        for pattern, phases in rules.items():
            batch.add(px.ADD_FEEDFORWARD_RULE, pattern, *itertools.chain.from_iterable(phases.items()))
        await self.send(batch)

    async def run_shots(self, shots: int, *, per_shot: bool = False) -> ShotCounts:
        """Fire ``shots`` and fetch how often each pattern came, in one exchange (``FETCh:HISTogram?``).

        ``per_shot``: fetch every shot's pattern instead, in firing order (``FETCh:PATTerns?``,
        shots x width bytes), each counted once.
        """
        timeout = self._shots_timeout(shots)
        if per_shot:
            batch = Batch().add(px.RUN_SHOTS, shots).add(px.PATTERNS)
            patterns, width = await self.ask(batch, replies.patterns(shots), reply_timeout=timeout)
            return ShotCounts(patterns, np.ones(shots, dtype=np.int64), width, per_shot=True)
        modes = self.description.modes if self.description is not None else None
        widths = [modes, 2 * modes] if modes else range(1, 2 * MAX_MODES + 1)
        batch = Batch().add(px.RUN_SHOTS, shots).add(px.HISTOGRAM)
        data, fits = await self.ask(batch, replies.histogram(shots, widths), reply_timeout=timeout)
        width = fits[0]
        if len(fits) > 1:  # records that read as more than one width (almost never): the device says which
            width = await self._ask(int, px.WIDTH)
            if width not in fits:
                raise ProtocolError(f"{self._link.name}: a histogram of {shots} shots does not read at width {width}")
        patterns, counts = px.decode_histogram(data, width)
        return ShotCounts(patterns, counts, width)

    async def read_powers(self) -> np.ndarray:
        """Photodiode power per output mode, in W."""
        return await self._ask(replies.floats, px.POWERS)

    async def safe_state(self, *, heaters: bool = True) -> None:
        """Sources off and every heater to 0 V, in one message.

        Args:
            heaters: False when a tripped interlock holds them at 0 V already
                (the device refuses heater writes until it is reset).
        """
        batch = Batch().add(px.ENABLE_SOURCES, False)
        if heaters:
            count = self.description.heaters.count if self.description else 0
            batch.add(px.SET_HEATERS, *[0] * count)
        await self.send(batch)

    def _shots_timeout(self, shots: int) -> float:
        """How long a run of ``shots`` may take to answer."""
        base = self._link.timeout
        rate = self.description.shot_rate_hz if self.description is not None else 1e5
        return base + 2 * shots / rate + 1.0 if math.isfinite(rate) else base


@asynccontextmanager
async def open_driver(url: str, **options: Any) -> AsyncIterator[PhotonicaDriver]:
    """A connected driver for the device at ``url``; closed on exit."""
    driver = PhotonicaDriver(endpoint_from_url(url), **options)
    failed: LinkError | None = None
    async with trio.open_nursery() as nursery:
        try:
            await driver.connect(nursery)
        except LinkError as exc:  # raised below, outside the nursery, so not in a group
            failed = exc
            await driver.aclose()
            nursery.cancel_scope.cancel()
        else:
            try:
                yield driver
            finally:
                await driver.aclose()
                nursery.cancel_scope.cancel()
    if failed is not None:
        raise failed
