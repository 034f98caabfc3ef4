"""One device under the HAL: its link, its limits, its safety.

`ManagedDevice` owns a `drivers.PhotonicaDriver` for the device's whole life:
it connects (and keeps retrying while the device is away), checks every write
against the device's limits before anything reaches the wire, reads back what
it wrote, arms and feeds the device's host watchdog, watches the interlock and
the temperature, and puts the device in its safe state when it stops. One
command stream at a time per device; different devices proceed in parallel.

Every decision on the device's state is made under the device's lock, in the
same step as the action it allows: a heater setting is checked against the
state its write will leave, read back and compared with what the device should
then hold, before any other request may touch the device. Concurrent requests
therefore behave as if run one after another, in the order they took the lock.
Each change of the device's state (heaters, inputs, program, safe state,
interlock, reconnect) adds one to its `version`; a request that carries the
version it expects is refused with `StateChanged` if another came between.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import numpy as np
import trio

from drivers import IdentityChanged, PhotonicaDriver, ShotCounts, endpoint_from_url
from protocol import (
    AwenError,
    ConfigError,
    DeviceError,
    ErrorCode,
    Event,
    InterlockError,
    LinkError,
    NotReady,
    SafetyLimitError,
    StateChanged,
)
from protocol.hal import (
    DelayRoute,
    DeviceConnected,
    DeviceDisconnected,
    DeviceInfo,
    DeviceReconnected,
    DeviceState,
    InputSetting,
    InterlockReset,
    InterlockTripped,
    ReadbackMismatch,
    Temperature,
)
from protocol.mesh import MeshLayout
from protocol.photonica import INTERLOCK_TRIPPED, DeviceDescription, StatusReport

from ._config import DeviceConfig, identity_matches, per_heater

log = logging.getLogger("awen.hal")

T = TypeVar("T")
Emit = Callable[[Event], None]


class NoSuchHeater(AwenError):
    """A request names a heater the device does not have."""

    code = ErrorCode.INVALID


class DeviceUnavailable(AwenError):
    """The device was refused (another identity, other capabilities, a configuration that does not fit it)."""

    code = ErrorCode.UNAVAILABLE


class WrongIdentity(IdentityChanged):
    """The device answers with another identity than the configured one (`DeviceConfig.identity`)."""


class ManagedDevice:
    """A configured device and everything the HAL knows about it.

    Args:
        config: Its registry entry.
        emit: Publishes the HAL's events (connected, interlock, ...).
    """

    def __init__(self, config: DeviceConfig, emit: Emit) -> None:
        self.config = config
        self.name = config.name
        self.emit = emit
        self.state: DeviceState = "connecting"
        self.detail = ""
        self.driver: PhotonicaDriver | None = None
        self.description: DeviceDescription | None = None
        self.layout: MeshLayout | None = None
        self.limits = np.zeros(0)
        """The voltage each heater may be set to: the strictest of the device's and the configured
        voltage limits, and the voltage at which it would draw its configured power limit."""
        self.heater_power_max = np.zeros(0)
        """The power each heater may draw (W; ``inf`` where only its voltage limit applies)."""
        self.heater_v_max = np.zeros(0)
        """The voltage limits alone (the device's and the configured), without the power-derived ones."""
        self.resistance = np.ones(0)
        self.power_budget = 0.0
        self.volts = np.zeros(0)
        """The heaters as last read back."""
        self.expected = np.zeros(0)
        """What the heaters should hold: the last setting the device accepted (0 V after a safe state)."""
        self.version = random.getrandbits(48)
        """Adds one with every change of the device's state; see `StateChanged`. It starts anywhere, so that
        a version a client holds from before a HAL restart is never taken for one of the new HAL's."""
        self._alarmed: tuple[int, ...] = ()
        """Heaters an idle read-back has already raised an alarm for (not raised again until they change)."""
        self.interlocked = False
        self._lock = trio.Lock()
        self._last_command = -math.inf
        self._attempted = trio.Event()
        """Set after the first attempt to connect, whatever its outcome."""
        self._connected = trio.Event()

    # --- life cycle ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the device until cancelled; reports started after the first connection attempt.

        The driver's link keeps trying to reach a device that is away, and runs
        `_set_up` on every connection, first and re-connections alike: the one
        reconnect loop is the driver's.
        """
        async with trio.open_nursery() as nursery:
            self.driver = PhotonicaDriver(
                endpoint_from_url(self.config.url),
                name=self.name,
                timeout=self.config.timeout_s,
                on_event=self._on_link_event,
                set_up=self._set_up,
            )
            try:
                nursery.start_soon(self._connect, nursery)
                await self._attempted.wait()
                task_status.started()
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(self.config.timeout_s * 2 + 1):
                    await self._final_safe_state()
                with trio.CancelScope(shield=True):
                    await self.driver.aclose()

    async def _connect(self, nursery: trio.Nursery) -> None:
        """The first connection (until the device answers), then the watchdog and the temperature."""
        assert self.driver is not None
        try:
            async with held(self._lock):
                await self.driver.connect(nursery, keep_trying=True)
        except IdentityChanged as exc:
            self._refuse(str(exc))
            return
        except ConfigError as exc:
            self._refuse(f"its configuration does not fit the device: {exc}")
            return
        nursery.start_soon(self._feed_watchdog)
        nursery.start_soon(self._watch_temperature)

    async def wait_connected(self) -> None:
        """Until the device is connected, or refused for good (`state` says which)."""
        await self._connected.wait()

    def info(self) -> DeviceInfo:
        return DeviceInfo(
            name=self.name,
            url=self.config.url,
            state=self.state,
            identity=self.driver.identity if self.driver else None,
            detail=self.detail,
        )

    def _on_link_event(self, kind: str, detail: str) -> None:
        if kind == "disconnected":
            if self.state == "connected":
                self.state = "reconnecting"
            self.detail = detail
            self.emit(DeviceDisconnected(device=self.name, reason=detail))
        elif kind == "unreachable":
            if self.state in ("connecting", "unreachable"):
                if self.state == "connecting":
                    log.warning("%s: %s; retrying", self.name, detail)
                self.state = "unreachable"
            self.detail = detail
            self._attempted.set()

    def _refuse(self, why: str) -> None:
        self.state, self.detail = "refused", why
        log.error("%s: %s", self.name, why)
        self.emit(DeviceDisconnected(device=self.name, reason=why))
        self._attempted.set()
        self._connected.set()  # nobody need wait for it any longer

    async def _set_up(self, first: bool) -> None:
        """After every connection, before anything else is sent: limits, watchdog, the device's state.

        Runs inside the driver's reconnect loop, with the device's lock held by
        whoever caused the connection. The link has checked that the device is
        the same one with the same capabilities.
        """
        driver = self.driver
        assert driver is not None
        self._check_identity(driver.identity or "")
        description = driver.description
        assert description is not None
        self.description = description
        self.layout = description.layout()
        self._set_limits(description)
        if self.config.watchdog_s:
            await driver.arm_watchdog(self.config.watchdog_s)
        self.interlocked = await driver.interlock()
        volts = await driver.read_heaters()
        if first and (volts.any() or await driver.sources()):
            # Left as a HAL that died (or someone else) had it: nobody here asked
            # for that state, so start from the safe one.
            log.warning("%s: found heaters on or sources enabled at start; putting it in its safe state", self.name)
            await driver.safe_state(heaters=not self.interlocked)
            volts = np.zeros_like(volts)
        elif not first and self.expected.shape == volts.shape and not np.array_equal(self.expected, volts):
            log.warning(
                "%s: after the reconnect the heaters hold other voltages than were set (heaters %s)",
                self.name,
                [int(h) for h in np.flatnonzero(self.expected != volts)][:16],
            )
        # What the device holds now is what it should hold: whoever set it before must set it again.
        self.volts, self.expected, self._alarmed = volts, volts.copy(), ()
        self.version += 1
        self._last_command = trio.current_time()
        self.state = "interlocked" if self.interlocked else "connected"
        self.detail = ""
        self._attempted.set()
        self._connected.set()
        if first:
            log.info("%s: connected to %s (%s)", self.name, driver.identity, self.config.url)
            self.emit(DeviceConnected(device=self.name, identity=driver.identity or ""))
        else:
            log.info("%s: reconnected and re-checked", self.name)
            self.emit(DeviceReconnected(device=self.name, identity=driver.identity or ""))

    def _check_identity(self, identity: str) -> None:
        """Refuse a device that answers as another than the configured one, before anything is sent to it.

        Checked on every connection: a reconnect may find another device behind the address (a swapped cable).
        """
        configured = self.config.identity
        if configured is not None and not identity_matches(configured, identity):
            raise WrongIdentity(
                f"answers as {identity!r}, configured as {configured!r}: is this the right device? "
                "fix the address or the identity in the configuration"
            )

    def _set_limits(self, description: DeviceDescription) -> None:
        """The limits the HAL enforces: the stricter of the device's and the configuration's, per heater."""
        heaters = description.heaters
        count = heaters.count
        config = self.config
        v_config = per_heater(config.v_max, count, what="v_max")
        p_config = per_heater(config.power_max_w, count, what="power_max_w")
        resistance = np.array(heaters.resistance_ohm, dtype=np.float64)
        # The device holds each heater to its power with the true resistance, the HAL knows the nominal one:
        # the same margin as for the total keeps the HAL's refusals ahead of the device's.
        p_device = heaters.power_max_w
        margin = 1 - config.power_margin
        power_max = np.minimum(p_config, np.array(p_device, dtype=np.float64) * margin if p_device else np.inf)
        self.heater_v_max = np.minimum(np.array(heaters.v_max, dtype=np.float64), v_config)
        self.limits = np.minimum(self.heater_v_max, np.sqrt(power_max * resistance))
        self.heater_power_max = power_max
        self.resistance = resistance
        device_limit = heaters.power_limit_w
        if config.power_limit_w is not None:
            device_limit = min(device_limit, config.power_limit_w)
        self.power_budget = device_limit * (1 - config.power_margin)

    async def _feed_watchdog(self) -> None:
        """Any command feeds the device's watchdog; when idle, read the heaters back.

        A heater that no longer holds what it was set to (stuck, or its driver
        gone) raises the same alarm as a read-back after setting it. Also keeps
        trying to reach a device that went away, so that it is back in use
        within a reconnect backoff of its return.
        """
        period = max(0.1, (self.config.watchdog_s or 3.0) / 3)
        while True:
            await trio.sleep(max(0.0, self._last_command + period - trio.current_time()))
            if trio.current_time() - self._last_command >= period:
                try:
                    await self.call(self._idle_readback)
                except DeviceUnavailable:
                    return  # refused: nothing more is sent to it
                except (LinkError, DeviceError, InterlockError) as exc:
                    log.debug("%s: watchdog feed failed: %s", self.name, exc)
                    self._last_command = trio.current_time()

    async def _idle_readback(self, driver: PhotonicaDriver) -> None:
        """Read the heaters back and compare with what they should hold (the lock is held: nobody sets them)."""
        volts = await driver.read_heaters()
        self.volts = volts
        if self.interlocked or volts.shape != self.expected.shape:
            return
        differ = tuple(int(h) for h in np.flatnonzero(np.abs(volts - self.expected) > self.config.readback_tolerance_v))
        if differ != self._alarmed:
            self._alarmed = differ
            self._compare(self.expected, volts)

    async def _watch_temperature(self) -> None:
        while True:
            await trio.sleep(self.config.temperature_every_s)
            try:
                celsius = await self.call(self._read_temperature)
            except DeviceUnavailable:
                return
            except (LinkError, DeviceError, InterlockError, ValueError):
                continue
            self.emit(Temperature(device=self.name, celsius=celsius))

    async def _read_temperature(self, driver: PhotonicaDriver) -> float:
        """The temperature, and whether the device tripped its interlock on its own (the lock is held)."""
        celsius = await driver.temperature()
        if await driver.interlock() and not self.interlocked:
            self._tripped("the device reports its interlock tripped")
        return celsius

    async def _final_safe_state(self) -> None:
        if self.driver is None or self.state in ("refused",) or self.driver.identity is None:
            return
        try:
            await self.safe_state()
            log.info("%s: left in its safe state", self.name)
        except (LinkError, DeviceError, InterlockError, trio.TooSlowError) as exc:
            log.error("%s: could not put the device in its safe state on stopping: %s", self.name, exc)

    # --- commands -----------------------------------------------------------------------

    async def call(self, operation: Callable[[PhotonicaDriver], Awaitable[T]]) -> T:
        """Run ``operation(driver)`` with the device to ourselves."""
        driver = self.usable()
        async with held(self._lock):
            try:
                return await operation(driver)
            except DeviceError as exc:
                if exc.scpi_code == INTERLOCK_TRIPPED:
                    self._tripped(exc.scpi_text)
                    raise InterlockError(f"{self.name}: interlock tripped: {exc.scpi_text}") from exc
                raise
            except IdentityChanged as exc:  # a reconnect found another device behind the address
                why = str(exc).removeprefix(f"{self.name}: ").removesuffix("; refused")
                if not isinstance(exc, WrongIdentity):
                    why += ": is this the right device? check its cable and its address"
                self._refuse(f"{why}; refused until the HAL restarts")
                raise DeviceUnavailable(f"{self.name}: refused: {self.detail}") from exc
            finally:
                self._last_command = trio.current_time()

    def usable(self) -> PhotonicaDriver:
        """The driver, once the device is described and safe.

        Raises:
            NotReady: it is not connected yet (ask again shortly).
            DeviceUnavailable: it was refused, until the HAL restarts.
        """
        if self.state == "refused":
            raise DeviceUnavailable(f"{self.name}: refused: {self.detail}")
        driver = self.driver
        if driver is None or driver.description is None or not len(self.limits):
            why = f"{self.state}: {self.detail}" if self.detail else self.state
            raise NotReady(f"{self.name} is not connected yet ({why}); ask again shortly")
        return driver

    def _tripped(self, reason: str) -> None:
        self.interlocked = True
        self.state = "interlocked"
        self.volts = np.zeros_like(self.volts)
        self.expected = np.zeros_like(self.expected)
        self.version += 1
        log.error("%s: interlock tripped: %s", self.name, reason)
        self.emit(InterlockTripped(device=self.name, reason=reason))

    def _expect(self, version: int | None) -> None:
        """Refuse a request made for another state of the device than the one it is in (lock held)."""
        if version is not None and version != self.version:
            raise StateChanged(
                f"{self.name}: the device is at state version {self.version}, not {version}: "
                "another request changed it since; set it again",
                field="expect_version",
            )

    def _changed(self) -> int:
        """A change of the device's state is about to go out (lock held): its new version."""
        self.version += 1
        return self.version

    def heater(self, heater: int, *, field: str) -> int:
        """``heater`` if the device has it; `NoSuchHeater` naming the field otherwise."""
        self.usable()
        count = len(self.limits)
        if not 0 <= heater < count:
            raise NoSuchHeater(
                f"{self.name}: heater {heater} does not exist (the device has heaters 0-{count - 1})", field=field
            )
        return heater

    def check(self, volts: np.ndarray) -> None:
        """Refuse, before the wire, a setting over any heater's limit or the power budget."""
        if volts.shape != self.limits.shape:
            raise SafetyLimitError(
                f"{self.name}: expected {len(self.limits)} voltages (one per heater), got {volts.shape}", field="volts"
            )
        bad = np.flatnonzero(~np.isfinite(volts) | (volts < 0) | (volts > self.limits))
        if len(bad):
            h = int(bad[0])
            what = self.layout.describe_heater(h) if self.layout else f"heater {h}"
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            if 0 <= volts[h] <= self.heater_v_max[h]:  # within its voltage limit: over its power limit
                draws = float(volts[h]) ** 2 / self.resistance[h]
                raise SafetyLimitError(
                    f"{self.name}: heater {h} ({what}): {volts[h]:g} V draws {draws:.4f} W, over its limit of "
                    f"{self.heater_power_max[h]:g} W (at most {self.limits[h]:.4g} V){more}",
                    field="volts",
                )
            raise SafetyLimitError(
                f"{self.name}: heater {h} ({what}): {volts[h]:g} V is outside 0-{self.limits[h]:g} V{more}",
                field="volts",
            )
        power = float(np.sum(volts * volts / self.resistance))
        if power > self.power_budget:
            interlock = self.description.heaters.power_limit_w if self.description else math.nan
            raise SafetyLimitError(
                f"{self.name}: these voltages draw {power:.3f} W, over the budget of {self.power_budget:.3f} W "
                f"(the device's interlock trips at {interlock:g} W; "
                f"the HAL keeps a {self.config.power_margin:.0%} margin)",
                field="volts",
            )

    async def set_heaters(
        self, volts: np.ndarray | None, changes: dict[int, float], *, expect_version: int | None = None
    ) -> tuple[np.ndarray, list[int], int]:
        """Set all heaters, or some; (the read-back, the heaters that differ from it, the new version).

        Everything is decided with the device held: ``changes`` apply to what the
        heaters should hold at that moment, the limits are checked against the
        state the write leaves, and the read-back is compared with that state.
        """
        for heater in changes:
            self.heater(heater, field="changes")
        setting = None if volts is None else np.asarray(volts, dtype=np.float64)

        async def write_and_read(driver: PhotonicaDriver) -> tuple[np.ndarray, list[int], int]:
            self._expect(expect_version)
            if self.interlocked:
                raise InterlockError(f"{self.name}: the interlock has tripped; reset it (hal.reset_interlock) first")
            target = (self.expected if setting is None else setting).copy()
            for heater, value in changes.items():
                target[heater] = value
            self.check(target)
            # From here the device may hold the new setting even if the exchange fails.
            self.expected, self._alarmed = target, ()
            version = self._changed()
            if setting is None and len(changes) == 1:
                ((heater, value),) = changes.items()
                await driver.set_heater(heater, value)
            else:
                await driver.set_heaters(target)
            readback = await driver.read_heaters()
            # A reconnect on the way took what the device held then for what it should hold: it holds this now.
            self.expected, self.volts = target, readback
            mismatched = self._compare(target, readback)
            self._alarmed = tuple(mismatched)  # an idle read-back raises these again only if they change
            return readback, mismatched, version

        return await self.call(write_and_read)

    def _compare(self, expected: np.ndarray, readback: np.ndarray) -> list[int]:
        """Heaters reading back other than expected: logged and raised as an alarm (`ReadbackMismatch`)."""
        if expected.shape != readback.shape:
            return []
        heaters = [int(h) for h in np.flatnonzero(np.abs(readback - expected) > self.config.readback_tolerance_v)]
        if heaters:
            log.error("%s: read differs from set on heater(s) %s", self.name, heaters)
            self.emit(
                ReadbackMismatch(
                    device=self.name,
                    heaters=heaters,
                    set_v=[float(expected[h]) for h in heaters],
                    read_v=[float(readback[h]) for h in heaters],
                )
            )
        return heaters

    async def get_heaters(self) -> np.ndarray:
        async def read(driver: PhotonicaDriver) -> np.ndarray:
            self.volts = await driver.read_heaters()
            return self.volts

        return await self.call(read)

    async def get_heater(self, heater: int) -> float:
        self.heater(heater, field="heater")
        return await self.call(lambda driver: driver.read_heater(heater))

    async def configure_inputs(
        self, inputs: list[InputSetting], clear: bool, *, expect_version: int | None = None
    ) -> int:
        """Set the inputs; the sources are switched on when any input carries light. Returns the new version."""
        sources_on = any(item.state != "vacuum" for item in inputs)
        return await self._change(
            lambda driver: driver.configure_inputs(inputs, clear=clear, sources_on=sources_on), expect_version
        )

    async def program(
        self,
        ff_modes: list[int],
        rules: dict[str, dict[int, float]],
        delay_lines: list[DelayRoute],
        *,
        expect_version: int | None = None,
    ) -> int:
        """Replace the feed-forward and delay-line program; returns the new version."""
        return await self._change(lambda driver: driver.program(ff_modes, rules, delay_lines), expect_version)

    async def _change(self, send: Callable[[PhotonicaDriver], Awaitable[None]], expect_version: int | None) -> int:
        """Send what changes the device's state (not its heaters); the new version."""

        async def change(driver: PhotonicaDriver) -> int:
            self._expect(expect_version)
            version = self._changed()
            await send(driver)
            return version

        return await self.call(change)

    async def run_shots(self, shots: int, *, expect_version: int | None = None, per_shot: bool = False) -> ShotCounts:
        """Fire ``shots``: how many read each distinct pattern (``per_shot``: every shot's, in order)."""

        async def run(driver: PhotonicaDriver) -> ShotCounts:
            self._expect(expect_version)
            return await driver.run_shots(shots, per_shot=per_shot)

        return await self.call(run)

    async def read_powers(self, *, expect_version: int | None = None) -> np.ndarray:
        async def read(driver: PhotonicaDriver) -> np.ndarray:
            self._expect(expect_version)
            return await driver.read_powers()

        return await self.call(read)

    async def status(self) -> StatusReport:
        async def read(driver: PhotonicaDriver) -> StatusReport:
            status = await driver.status()
            if status.interlock and not self.interlocked:
                self._tripped("the device reports its interlock tripped")
            return status

        return await self.call(read)

    async def reset_interlock(self) -> None:
        async def reset(driver: PhotonicaDriver) -> None:
            await driver.reset_interlock()
            volts = await driver.read_heaters()
            self.interlocked = False
            self.state = "connected"
            self.volts, self.expected, self._alarmed = volts, volts.copy(), ()
            self._changed()

        await self.call(reset)
        self.emit(InterlockReset(device=self.name))

    async def safe_state(self) -> None:
        """Heaters to 0 V (unless the interlock already put them there) and sources off."""

        async def make_safe(driver: PhotonicaDriver) -> None:
            if not self.interlocked:
                self.expected, self._alarmed = np.zeros_like(self.expected), ()
            self._changed()
            await driver.safe_state(heaters=not self.interlocked)
            if not self.interlocked:
                self.volts = np.zeros_like(self.volts)

        await self.call(make_safe)


@asynccontextmanager
async def held(lock: trio.Lock) -> AsyncIterator[None]:
    """Hold ``lock``; waits only if another task has it.

    ``async with lock`` is a full trio checkpoint even when the lock is free,
    about 18 us on a 2-core VM; on the path of every device command that was
    a visible share of a HAL request, so the free case takes the lock at once.
    """
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
    try:
        yield
    finally:
        lock.release()
