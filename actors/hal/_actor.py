"""The HAL actor: the lab's devices on the message bus.

It owns every configured device (`ManagedDevice`), answers ``hal.*``
requests, and publishes what happens to the devices as ``hal.*`` events. On
stopping, each device is left in its safe state; if the actor dies without
stopping (``kill -9``), the device's own watchdog, which the HAL armed, does it.

Configured in the system file::

    [[actor]]
    name = "hal"
    factory = "actors.hal:HalActor"
    config = { devices = [{ name = "chip", url = "tcp://10.0.0.5:5025" }] }

or with ``config = { config_file = "hal.toml" }`` holding ``[[device]]`` tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from protocol import AwenError, ErrorCode, Event
from protocol.hal import (
    Configured,
    ConfigureInputs,
    Describe,
    Description,
    DeviceReconnected,
    Devices,
    DeviceStatus,
    GetDeviceStatus,
    GetHeater,
    GetHeaters,
    Heaters,
    HeatersSet,
    HeaterVolts,
    InterlockTripped,
    ListDevices,
    Powers,
    Program,
    ReadbackMismatch,
    ReadPowers,
    ResetInterlock,
    RunShots,
    SafeState,
    SetHeaters,
    Shots,
)
from protocol.system import ActorCrashLooping, Ok
from runtime import Actor, Runtime, handles, subscribes

from ._config import HalConfig, load_hal_config, parse_hal_config
from ._device import ManagedDevice

log = logging.getLogger("awen.hal")


class UnknownDevice(AwenError):
    code = ErrorCode.UNKNOWN_DEVICE


class HalActor(Actor):
    """Owns the devices; serialises access per device; other devices proceed in parallel.

    Args:
        devices: ``[[device]]`` entries (see `hal.DeviceConfig`), or
        config_file: a TOML file holding them.
    """

    KIND = "hal"

    def __init__(
        self,
        name: str,
        runtime: Runtime,
        *,
        devices: list[dict[str, Any]] | None = None,
        config_file: str | None = None,
    ) -> None:
        super().__init__(name, runtime)
        if config_file is not None:
            config = load_hal_config(config_file)
        else:
            config = parse_hal_config({"device": devices or []}, source=f"{name} configuration")
        self.config: HalConfig = config
        self.devices = {d.name: ManagedDevice(d, self._emit) for d in config.devices}
        self._link_up = self.metrics.gauge("awen_device_link_up", "1 while the device takes requests.", ("device",))
        device = ("device",)
        self._counts: dict[type[Event], Callable[..., None]] = {
            DeviceReconnected: self.metrics.counter("awen_device_reconnects_total", "Links regained.", device).inc,
            InterlockTripped: self.metrics.counter("awen_interlocks_total", "Interlock trips.", device).inc,
            ReadbackMismatch: self.metrics.counter("awen_readback_alarms_total", "Read-back alarms.", device).inc,
        }
        for name in self.devices:  # every series from the start, at 0: a rate needs it
            for count in self._counts.values():
                count(0, device=name)
        self.metrics.on_collect(self._collect)

    async def setup(self) -> None:
        for device in self.devices.values():
            await self.start(device.run)

    def _emit(self, event: Event) -> None:
        """Publish a device's event, counting the ones that have a metric."""
        count = self._counts.get(type(event))
        if count is not None:
            count(device=event.device)  # type: ignore[attr-defined]
        self.publish(event)

    def _collect(self) -> None:
        for name, device in self.devices.items():
            self._link_up.set(1 if device.state in ("connected", "interlocked") else 0, device=name)

    def device(self, name: str) -> ManagedDevice:
        device = self.devices.get(name)
        if device is None:
            known = ", ".join(sorted(self.devices)) or "none"
            raise UnknownDevice(f"no device named {name!r} (configured: {known})", field="device")
        return device

    @subscribes(ActorCrashLooping.TYPE)
    async def _crash_looping(self, msg: ActorCrashLooping, env: Any) -> None:
        """An actor of the lab keeps crashing: whatever it had the devices do, nobody is watching it now."""
        if msg.actor != self.name:  # with every restart it lasts: a device set up meanwhile goes safe too
            for device in self.devices.values():
                if device.state in ("connected", "interlocked"):
                    try:
                        await device.safe_state()
                    except AwenError as exc:
                        log.error("%s: could not put %s in its safe state: %s", self.name, device.name, exc)
                    else:
                        log.warning(
                            "%s: %s put in its safe state: %s is crash-looping", self.name, device.name, msg.actor
                        )

    @handles(ListDevices)
    def _list(self, msg: ListDevices, env: Any) -> Devices:
        return Devices(devices=[d.info() for d in self.devices.values()])

    @handles(Describe)
    def _describe(self, msg: Describe, env: Any) -> Description:
        device = self.device(msg.device)
        device.usable()  # described and safe, or not-ready (unavailable if refused)
        assert device.description is not None
        return Description(
            device=msg.device,
            description=device.description,
            limits_v=device.limits.tolist(),
            power_budget_w=device.power_budget,
        )

    @handles(SetHeaters)
    async def _set_heaters(self, msg: SetHeaters, env: Any) -> HeatersSet:
        device = self.device(msg.device)
        readback, mismatched, version = await device.set_heaters(
            msg.volts, {int(k): float(v) for k, v in msg.changes.items()}, expect_version=msg.expect_version
        )
        return HeatersSet(device=msg.device, readback=readback, mismatched=mismatched, version=version)

    @handles(GetHeaters)
    async def _get_heaters(self, msg: GetHeaters, env: Any) -> Heaters:
        return Heaters(device=msg.device, volts=await self.device(msg.device).get_heaters())

    @handles(GetHeater)
    async def _get_heater(self, msg: GetHeater, env: Any) -> HeaterVolts:
        volts = await self.device(msg.device).get_heater(msg.heater)
        return HeaterVolts(device=msg.device, heater=msg.heater, volts=volts)

    @handles(ConfigureInputs)
    async def _configure_inputs(self, msg: ConfigureInputs, env: Any) -> Configured:
        device = self.device(msg.device)
        version = await device.configure_inputs(msg.inputs, msg.clear, expect_version=msg.expect_version)
        return Configured(device=msg.device, version=version)

    @handles(Program)
    async def _program(self, msg: Program, env: Any) -> Configured:
        device = self.device(msg.device)
        version = await device.program(msg.ff_modes, msg.rules, msg.delay_lines, expect_version=msg.expect_version)
        return Configured(device=msg.device, version=version)

    @handles(RunShots)
    async def _run_shots(self, msg: RunShots, env: Any) -> Shots:
        device = self.device(msg.device)
        shots = await device.run_shots(msg.shots, expect_version=msg.expect_version, per_shot=msg.per_shot)
        return Shots(
            device=msg.device, patterns=shots.patterns, counts=shots.counts, width=shots.width, per_shot=shots.per_shot
        )

    @handles(ReadPowers)
    async def _read_powers(self, msg: ReadPowers, env: Any) -> Powers:
        watts = await self.device(msg.device).read_powers(expect_version=msg.expect_version)
        return Powers(device=msg.device, watts=np.asarray(watts))

    @handles(GetDeviceStatus)
    async def _status(self, msg: GetDeviceStatus, env: Any) -> DeviceStatus:
        device = self.device(msg.device)
        status = await device.status()
        return DeviceStatus(
            device=msg.device,
            state=device.state,
            temperature_c=status.temperature_c,
            power_w=status.power_w,
            interlock=status.interlock,
            settled=status.settled,
            watchdog_s=status.watchdog_s,
            sources=status.sources,
            reconnects=device.driver.reconnects if device.driver else 0,
            status=status,
            version=device.version,
        )

    @handles(ResetInterlock)
    async def _reset_interlock(self, msg: ResetInterlock, env: Any) -> Ok:
        await self.device(msg.device).reset_interlock()
        return Ok()

    @handles(SafeState)
    async def _safe_state(self, msg: SafeState, env: Any) -> Ok:
        await self.device(msg.device).safe_state()
        return Ok()
