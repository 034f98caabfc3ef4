"""One device under the HAL: its link, its limits, its safety.

`ManagedDevice` owns a `drivers.PhotonicaDriver` for the device's whole life:
it connects (and keeps retrying while the device is away), checks every write
against the device's limits before anything reaches the wire, reads back what
it wrote, arms and feeds the device's host watchdog, watches the interlock and
the temperature, and puts the device in its safe state when it stops. One
command stream at a time per device; different devices proceed in parallel.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import numpy as np
import trio

from drivers import IdentityChanged, PhotonicaDriver, endpoint_from_url, held, shots_timeout
from protocol import DeviceError, Event, InterlockError, LinkError, SafetyLimitError, scpi
from protocol.hal import (
    DeviceConnected,
    DeviceDisconnected,
    DeviceInfo,
    DeviceReconnected,
    InputSetting,
    InterlockReset,
    InterlockTripped,
    MemorySlot,
    ReadbackMismatch,
    Temperature,
)
from protocol.mesh import MeshLayout
from protocol.photonica import INTERLOCK_TRIPPED, DeviceDescription, decode_description

from ._config import DeviceConfig

log = logging.getLogger("awen.hal")

T = TypeVar("T")
Emit = Callable[[Event], None]


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
        self.state = "connecting"
        self.detail = ""
        self.driver: PhotonicaDriver | None = None
        self.description: DeviceDescription | None = None
        self.layout: MeshLayout | None = None
        self.limits = np.zeros(0)
        self.resistance = np.ones(0)
        self.power_budget = 0.0
        self.volts = np.zeros(0)
        self._heater_writes = 0
        """Heater writes begun: an idle read-back compares only if none began meanwhile."""
        self.interlocked = False
        self._lock = trio.Lock()
        self._last_command = -math.inf
        self._recheck = False
        self._connected = trio.Event()

    # --- life cycle ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the device until cancelled; reports started after the first connection attempt."""
        reported = False
        async with trio.open_nursery() as nursery:
            try:
                self.driver = PhotonicaDriver(
                    endpoint_from_url(self.config.url),
                    name=self.name,
                    timeout=self.config.timeout_s,
                    on_event=self._on_link_event,
                )
                while True:
                    try:
                        await self.driver.connect(nursery)
                        async with self._lock:
                            await self._after_connect(first=True)
                        break
                    except IdentityChanged as exc:
                        self._refuse(str(exc))
                        break
                    except (LinkError, DeviceError, OSError) as exc:
                        self.state, self.detail = "unreachable", str(exc)
                        log.warning("%s: %s; retrying", self.name, exc)
                        if not reported:
                            task_status.started()
                            reported = True
                        await trio.sleep(1.0)
                if not reported:
                    task_status.started()
                    reported = True
                if self.state != "refused":
                    nursery.start_soon(self._feed_watchdog)
                    nursery.start_soon(self._watch_temperature)
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(self.config.timeout_s * 2 + 1):
                    await self._final_safe_state()
                if self.driver is not None:
                    with trio.CancelScope(shield=True):
                        await self.driver.aclose()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def info(self) -> DeviceInfo:
        return DeviceInfo(
            name=self.name,
            url=self.config.url,
            state=self.state,  # type: ignore[arg-type]
            identity=self.driver.identity if self.driver else None,
            detail=self.detail,
        )

    def _on_link_event(self, kind: str, detail: str) -> None:
        if kind == "disconnected":
            if self.state == "connected":
                self.state = "reconnecting"
            self.detail = detail
            self.emit(DeviceDisconnected(device=self.name, reason=detail))
        elif kind == "reconnected":
            self._recheck = True

    def _refuse(self, why: str) -> None:
        self.state, self.detail = "refused", why
        log.error("%s: %s", self.name, why)
        self.emit(DeviceDisconnected(device=self.name, reason=why))

    async def _after_connect(self, *, first: bool) -> None:
        """Learn (or re-check) what the device is, arm its watchdog, read its state."""
        driver = self.driver
        assert driver is not None
        description = driver.description
        if not first:
            description = await self._recheck_capabilities(driver)
        assert description is not None
        self.description = description
        self.layout = description.layout()
        heaters = description.heaters
        limits = np.array(heaters.v_max, dtype=np.float64)
        if self.config.v_max is not None:
            limits = np.minimum(limits, self.config.v_max)
        self.limits = limits
        self.resistance = np.array(heaters.resistance_ohm, dtype=np.float64)
        device_limit = heaters.power_limit_w
        if self.config.power_limit_w is not None:
            device_limit = min(device_limit, self.config.power_limit_w)
        self.power_budget = device_limit * (1 - self.config.power_margin)
        if self.config.watchdog_s:
            await driver.write(f"SYST:WATC {self.config.watchdog_s:g}")
        self.interlocked = await driver.query_as("SYST:INT?", _flag)
        self._heater_writes += 1  # what an idle read-back finds next is compared with what this reads
        self.volts = await driver.query_as("HEAT:VOLT:ALL?", _volts)
        if first and (self.volts.any() or await driver.query_as("SOUR:ENAB?", _flag)):
            # Left as a HAL that died (or someone else) had it: nobody here asked
            # for that state, so start from the safe one.
            log.warning("%s: found heaters on or sources enabled at start; putting it in its safe state", self.name)
            off = (
                "SOUR:ENAB OFF"
                if self.interlocked
                else "SOUR:ENAB OFF;HEAT:VOLT:ALL " + ",".join(["0"] * len(self.volts))
            )
            await driver.write(off)
            self.volts = np.zeros_like(self.volts)
        self._last_command = trio.current_time()
        self.state = "interlocked" if self.interlocked else "connected"
        self.detail = ""
        self._connected.set()
        if first:
            log.info("%s: connected to %s (%s)", self.name, driver.identity, self.config.url)
            self.emit(DeviceConnected(device=self.name, identity=driver.identity or ""))
        else:
            log.info("%s: reconnected and re-checked", self.name)
            self.emit(DeviceReconnected(device=self.name, identity=driver.identity or ""))

    async def _recheck_capabilities(self, driver: PhotonicaDriver) -> DeviceDescription:
        """The device's capabilities after a reconnect: refuse it if they changed.

        Read again when they differ, so that one corrupted reply is not taken
        for a different device; two agreeing differing answers are.
        """
        answers: list[DeviceDescription] = []
        for _ in range(4):
            answer = await driver.query_as("SYST:CAP?", _description)
            if answer == self.description:
                return answer
            answers.append(answer)
            if len(answers) >= 2 and answers[-1] == answers[-2]:
                break
        self._refuse("its capabilities changed across a reconnect; refused until the HAL restarts")
        raise LinkError(f"{self.name}: capabilities changed")

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
                writes = self._heater_writes
                try:
                    readback = await self.call(lambda d: d.query_as("HEAT:VOLT:ALL?", _volts))
                except (LinkError, DeviceError, InterlockError) as exc:
                    log.debug("%s: watchdog feed failed: %s", self.name, exc)
                    self._last_command = trio.current_time()
                    continue
                if writes == self._heater_writes and not self.interlocked:  # nobody set them meanwhile
                    self._compare(self.volts, readback)
                    self.volts = readback

    async def _watch_temperature(self) -> None:
        while True:
            await trio.sleep(self.config.temperature_every_s)
            try:
                celsius = await self.call(lambda d: d.query_as("STAT:TEMP?", float))
                tripped = await self.call(lambda d: d.query_as("SYST:INT?", _flag))
            except (LinkError, DeviceError, InterlockError, ValueError):
                continue
            self.emit(Temperature(device=self.name, celsius=celsius))
            if tripped and not self.interlocked:
                self._tripped("the device reports its interlock tripped")

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
        if self.state == "refused":
            raise LinkError(f"{self.name}: refused: {self.detail}")
        driver = self.driver
        if driver is None or driver.description is None:
            raise LinkError(f"{self.name}: not connected ({self.detail or self.state})")
        async with held(self._lock):
            try:
                result = await operation(driver)
            except DeviceError as exc:
                if exc.scpi_code == INTERLOCK_TRIPPED:
                    self._tripped(exc.scpi_text)
                    raise InterlockError(f"{self.name}: interlock tripped: {exc.scpi_text}") from exc
                raise
            finally:
                self._last_command = trio.current_time()
                if self._recheck:
                    self._recheck = False
                    await self._after_connect(first=False)
            return result

    def _tripped(self, reason: str) -> None:
        self.interlocked = True
        self.state = "interlocked"
        self.volts = np.zeros_like(self.volts)
        log.error("%s: interlock tripped: %s", self.name, reason)
        self.emit(InterlockTripped(device=self.name, reason=reason))

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
            raise SafetyLimitError(
                f"{self.name}: heater {h} ({what}): {volts[h]:g} V is outside 0-{self.limits[h]:g} V"
                + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
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

    async def set_heaters(self, volts: np.ndarray | None, changes: dict[int, float]) -> tuple[np.ndarray, list[int]]:
        """Set all heaters, or some; returns the read-back and the heaters that differ from it."""
        if self.interlocked:
            raise InterlockError(f"{self.name}: the interlock has tripped; reset it (hal.reset_interlock) first")
        target = self.volts.copy() if volts is None else np.asarray(volts, dtype=np.float64).copy()
        for heater, value in changes.items():
            if not 0 <= heater < len(target):
                raise SafetyLimitError(
                    f"{self.name}: heater {heater} does not exist (0-{len(target) - 1})", field="changes"
                )
            target[heater] = value
        self.check(target)
        self._heater_writes += 1

        async def write_and_read(driver: PhotonicaDriver) -> np.ndarray:
            if volts is None and len(changes) == 1:
                ((heater, value),) = changes.items()
                await driver.write(f"HEAT:VOLT {heater},{value!r}")
            else:
                await driver.write(b"HEAT:VOLT:ALL " + scpi.block(target.astype("<f8").tobytes()))
            return await driver.query_as("HEAT:VOLT:ALL?", _volts)

        readback = await self.call(write_and_read)
        self.volts = readback
        return readback, self._compare(target, readback)

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
        self.volts = await self.call(lambda d: d.query_as("HEAT:VOLT:ALL?", _volts))
        return self.volts

    async def get_heater(self, heater: int) -> float:
        if not 0 <= heater < len(self.limits):
            raise SafetyLimitError(f"{self.name}: heater {heater} does not exist (0-{len(self.limits) - 1})")
        return await self.call(lambda d: d.query_as(f"HEAT:VOLT? {heater}", float))

    async def configure_inputs(self, inputs: list[InputSetting], clear: bool) -> None:
        """Set the inputs; the sources are switched on when any input carries light."""
        parts = ["INP:CLE"] if clear else []
        for item in inputs:
            if item.state == "coherent":
                parts.append(f"INP:STAT {item.mode},COH,{item.power_w!r},{item.phase_rad!r}")
            else:
                parts.append(f"INP:STAT {item.mode},{'PHOT' if item.state == 'photon' else 'VAC'}")
        if any(item.state != "vacuum" for item in inputs):
            parts.append("SOUR:ENAB ON")
        if parts:
            await self.call(lambda d: d.write(";".join(parts)))

    async def program(self, ff_modes: list[int], rules: dict[str, dict[int, float]], memory: list[MemorySlot]) -> None:
        parts = ["FFOR:CLE", "MEM:CLE"]
        for slot in memory:
            parts.append(f"MEM:STOR {slot.slot},{slot.out_mode},{slot.in_mode},{slot.rounds}")
        if ff_modes:
            parts.append("FFOR:MEAS " + ",".join(str(m) for m in ff_modes))
        for pattern, phases in rules.items():
            pairs = ",".join(f"{mode},{phase!r}" for mode, phase in phases.items())
            parts.append(f"FFOR:RULE {pattern}" + (f",{pairs}" if pairs else ""))
        await self.call(lambda d: d.write(";".join(parts)))

    async def run_shots(self, shots: int) -> tuple[np.ndarray, int]:
        timeout = shots_timeout(self.description, shots, self.config.timeout_s)

        def patterns(reply: bytes) -> tuple[np.ndarray, int]:
            data = scpi.unblock(reply)
            width, rest = divmod(len(data), shots)
            if rest or not width:
                raise ValueError(f"{len(data)} bytes of patterns do not divide into {shots} shots")
            return np.frombuffer(data, np.uint8).reshape(shots, width).copy(), width

        # One exchange: the run and its patterns (the width follows from the block's length).
        return await self.call(lambda d: d.query_as(f"RUN:SHOT {shots};:FETC:PATT?", patterns, reply_timeout=timeout))

    async def read_powers(self) -> np.ndarray:
        return await self.call(lambda d: d.query_as("MEAS:POW?", _floats))

    async def status(self) -> dict[str, Any]:
        status: dict[str, Any] = await self.call(lambda d: d.query_as("STAT?", _json_block))
        if status.get("interlock") and not self.interlocked:
            self._tripped("the device reports its interlock tripped")
        return status

    async def reset_interlock(self) -> None:
        await self.call(lambda d: d.write("SYST:INT:RES"))
        self.interlocked = False
        self.state = "connected"
        await self.get_heaters()
        self.emit(InterlockReset(device=self.name))

    async def safe_state(self) -> None:
        """Heaters to 0 V (unless the interlock already put them there) and sources off."""
        commands = "SOUR:ENAB OFF"
        if not self.interlocked:
            commands += ";HEAT:VOLT:ALL " + ",".join(["0"] * len(self.limits))
        self._heater_writes += 1
        await self.call(lambda d: d.write(commands))
        if not self.interlocked:
            self.volts = np.zeros_like(self.volts)


def _flag(reply: bytes) -> bool:
    if reply.strip() not in (b"0", b"1"):
        raise ValueError(f"expected 0 or 1, got {reply[:20]!r}")
    return reply.strip() == b"1"


def _volts(reply: bytes) -> np.ndarray:
    return np.frombuffer(scpi.unblock(reply), "<f8").copy()


def _floats(reply: bytes) -> np.ndarray:
    return np.array([float(x) for x in reply.split(b",")])


def _json_block(reply: bytes) -> Any:
    try:
        return json.loads(scpi.unblock(reply))
    except json.JSONDecodeError as exc:
        raise ValueError(str(exc)) from exc


def _description(reply: bytes) -> DeviceDescription:
    try:
        return decode_description(scpi.unblock(reply))
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from exc
