"""The HAL's device registry: which devices, where, and limits stricter than their own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec

from protocol import ConfigError, convert_settings, load_settings

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Positive = Annotated[float, msgspec.Meta(gt=0)]


class DeviceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[[device]]`` table.

    Attributes:
        name: How requests name the device.
        url: ``tcp://HOST:PORT``, ``serial:///dev/ttyUSB0?baud=115200`` or ``sim://?seed=1``.
        v_max: A voltage limit for every heater, applied if stricter than the device's.
        power_limit_w: A total power limit, applied if stricter than the device's.
        power_margin: Fraction kept below the device's own power interlock, for the
            spread between nominal and true heater resistance.
        calibration: The calibration file for this device (used by calibration).
        watchdog_s: The device's host watchdog: with no command for this long it
            goes to its safe state by itself. The HAL feeds it.
        timeout_s: How long one command's reply may take.
        readback_tolerance_v: Read-back further than this from the set value raises an alarm.
        temperature_every_s: How often the HAL reads and publishes the temperature.
    """

    name: Name
    url: str
    v_max: Positive | None = None
    power_limit_w: Positive | None = None
    power_margin: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1
    calibration: str | None = None
    watchdog_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    timeout_s: Positive = 2.0
    readback_tolerance_v: Positive = 0.01
    temperature_every_s: Positive = 10.0


class HalConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    devices: list[DeviceConfig] = msgspec.field(default_factory=list, name="device")

    def __post_init__(self) -> None:
        names = [d.name for d in self.devices]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"device names must be unique; repeated: {', '.join(repeated)}", field="device.name")


def parse_hal_config(data: dict[str, Any], *, source: str = "HAL configuration") -> HalConfig:
    return convert_settings(data, HalConfig, source=source)


def load_hal_config(path: str | Path) -> HalConfig:
    """Read the HAL's TOML file (``[[device]]`` tables)."""
    return load_settings(path, HalConfig)
