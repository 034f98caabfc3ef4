"""The HAL's device registry: which devices, where, and limits stricter than their own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np

from protocol import ConfigError, convert_settings, load_settings

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Positive = Annotated[float, msgspec.Meta(gt=0)]
HeaterKey = Annotated[str, msgspec.Meta(pattern=r"^([0-9]{1,6}|default)$")]
PerHeater = Positive | list[Positive] | dict[HeaterKey, Positive]
"""A limit for every heater (a number), one per heater (a list), or a table by heater index
whose ``default`` applies to the heaters it does not name (as the simulator's device file)."""


class DeviceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[[device]]`` table.

    Attributes:
        name: How requests name the device.
        url: ``tcp://HOST:PORT``, ``serial:///dev/ttyUSB0?baud=115200`` or ``sim://?seed=1``.
        identity: The identity the device must report (its ``*IDN?`` reply): the same
            text, or, ending in ``*``, any reply that starts with what comes before it
            (``"Photonica,PX-8,SN-000001,*"`` pins the serial number, any firmware).
            A device answering otherwise is refused (see `identity_matches`).
        v_max: A voltage limit, applied where stricter than the device's: one for
            every heater (``v_max = 5.0``), one per heater (a list as long as the
            device has heaters), or for some heaters (``v_max = { "12" = 3.5 }``, with
            ``default`` for the others).
        power_max_w: The electrical power one heater may draw (V**2 / its nominal
            resistance), given like ``v_max``; applied where stricter than the device's.
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
    identity: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    v_max: PerHeater | None = None
    power_max_w: PerHeater | None = None
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


def identity_matches(configured: str, identity: str) -> bool:
    """Whether a device answering ``identity`` is the configured one: equal, or, if ``configured``
    ends in ``*``, starting with what comes before it."""
    if configured.endswith("*"):
        return identity.startswith(configured[:-1])
    return identity == configured


def per_heater(limit: PerHeater | None, count: int, *, what: str) -> np.ndarray:
    """A configured limit as one value per heater (``inf`` where none is configured).

    Raises:
        ConfigError: a list of another length, or a heater the device does not have.
    """
    values = np.full(count, np.inf)
    if limit is None:
        return values
    if isinstance(limit, float | int):
        values[:] = float(limit)
    elif isinstance(limit, list):
        if len(limit) != count:
            raise ConfigError(f"{what} lists {len(limit)} values, but the device has {count} heaters", field=what)
        values[:] = limit
    else:
        values[:] = limit.get("default", np.inf)
        for key, value in limit.items():
            if key == "default":
                continue
            heater = int(key)
            if heater >= count:
                raise ConfigError(
                    f"{what} names heater {heater}, but the device has heaters 0-{count - 1}", field=f"{what}.{key}"
                )
            values[heater] = value
    return values


def parse_hal_config(data: dict[str, Any], *, source: str = "HAL configuration") -> HalConfig:
    return convert_settings(data, HalConfig, source=source)


def load_hal_config(path: str | Path) -> HalConfig:
    """Read the HAL's TOML file (``[[device]]`` tables)."""
    return load_settings(path, HalConfig)
