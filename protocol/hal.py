"""Messages of the HAL actor: requests about devices, events about them.

The HAL speaks volts; phases are calibration's business. Every request names
its device; arrays (voltages, shot histograms, powers) travel as numpy arrays.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import numpy as np

from ._message import Count, Event, Finite, Index, Label, NonNegative, Reason, Reply, Request, Text
from .photonica import DeviceDescription, StatusReport
from .system import Ok

MAX_MODES = 256
"""The most modes a chip may have as far as the protocol is concerned (the simulator's have at most 64)."""

MAX_HEATERS = MAX_MODES**2
"""The most heaters: a Clements mesh of ``m`` modes has about ``m**2``."""

MAX_DELAY_LINES = 256
"""The most delay lines a device may have."""

MAX_ROUNDS = 65_535
"""The most round trips a stored photon may be asked to make."""

MAX_SHOTS_PER_RUN = 1_000_000
"""The most shots one ``hal.run_shots`` fires (a ``per_shot`` reply holds shots x width bytes)."""

MAX_RULES = 65_536
"""The most feed-forward rules (click patterns) one program holds."""

DeviceName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Mode = Annotated[int, msgspec.Meta(ge=0, le=MAX_MODES - 1)]
Heater = Annotated[int, msgspec.Meta(ge=0, le=MAX_HEATERS - 1)]
DelayLine = Annotated[int, msgspec.Meta(ge=0, le=MAX_DELAY_LINES - 1)]
"""A physical delay line, numbered from 0."""
Volts = Finite
Watts = NonNegative
Column = Annotated[int, msgspec.Meta(ge=0, le=2 * MAX_MODES - 1)]
"""A column of a shot pattern: one per mode per pass."""
Pattern = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MODES, pattern=r"^[01]+$")]
"""A click pattern: one ``0`` or ``1`` per feed-forward mode."""
Version = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""A device's state version: every accepted change of its heaters, inputs or program adds one.

A request carrying ``expect_version`` is refused with ``state-changed`` when the
device is at another version: someone else changed it since the sender last did.
"""


DeviceState = Literal["connecting", "connected", "reconnecting", "interlocked", "refused", "unreachable"]
"""Where a device's link stands: `connected` and `interlocked` take requests, the others say why not."""


class DeviceInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Label
    url: Text
    state: DeviceState
    identity: Text | None = None
    detail: Text = ""


class Devices(Reply, frozen=True, kw_only=True):
    TYPE = "hal.devices"
    devices: list[DeviceInfo]


class ListDevices(Request[Devices], frozen=True, kw_only=True):
    """Every configured device and the state of its link."""

    TYPE = "hal.list_devices"
    REPLY = Devices


class Description(Reply, frozen=True, kw_only=True):
    TYPE = "hal.description"
    device: DeviceName
    description: DeviceDescription
    limits_v: list[float]
    """The voltage limit the HAL enforces per heater (the stricter of device and configuration)."""
    power_budget_w: float
    """The total power the HAL allows (below the device's interlock)."""


class Describe(Request[Description], frozen=True, kw_only=True):
    """What the device reported about itself, and the limits the HAL enforces."""

    TYPE = "hal.describe"
    REPLY = Description
    device: DeviceName


class HeatersSet(Reply, frozen=True, kw_only=True):
    """Read-back after a write; ``mismatched`` lists heaters whose read differs from the set value."""

    TYPE = "hal.heaters_set"
    device: DeviceName
    readback: np.ndarray
    mismatched: list[Heater] = msgspec.field(default_factory=list)
    version: Version = 0
    """The device's state version this write made."""


class SetHeaters(Request[HeatersSet], frozen=True, kw_only=True):
    """Set every heater (``volts``, one value per heater) or some (``changes``, heater -> V).

    Refused with ``safety-limit`` if any voltage or the total power would
    exceed its limit, before anything reaches the device. The check is made
    against the state this write leaves (``changes`` apply to what the device
    holds when the write runs), under the same lock as the write: concurrent
    requests behave as if run one after another.
    """

    TYPE = "hal.set_heaters"
    REPLY = HeatersSet
    device: DeviceName
    volts: np.ndarray | None = None
    changes: Annotated[dict[Heater, Volts], msgspec.Meta(max_length=MAX_HEATERS)] = msgspec.field(default_factory=dict)
    expect_version: Version | None = None


class Heaters(Reply, frozen=True, kw_only=True):
    TYPE = "hal.heaters"
    device: DeviceName
    volts: np.ndarray


class GetHeaters(Request[Heaters], frozen=True, kw_only=True):
    """Every heater's voltage as the device reads it back."""

    TYPE = "hal.get_heaters"
    REPLY = Heaters
    device: DeviceName


class HeaterVolts(Reply, frozen=True, kw_only=True):
    TYPE = "hal.heater_volts"
    device: DeviceName
    heater: Heater
    volts: float


class GetHeater(Request[HeaterVolts], frozen=True, kw_only=True):
    """One heater's voltage, read back: one short query to the device."""

    TYPE = "hal.get_heater"
    REPLY = HeaterVolts
    device: DeviceName
    heater: Heater


class InputSetting(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    mode: Mode
    state: Literal["photon", "coherent", "vacuum"]
    power_w: Watts = 0.0
    phase_rad: Finite = 0.0


class Configured(Reply, frozen=True, kw_only=True):
    """A change of the device's inputs or program was carried out."""

    TYPE = "hal.configured"
    device: DeviceName
    version: Version
    """The device's state version this change made."""


class ConfigureInputs(Request[Configured], frozen=True, kw_only=True):
    """Set the listed modes' inputs; with ``clear``, every other mode to vacuum first.

    The sources are switched on when any input carries light (the HAL starts
    with them off, and `SafeState` switches them off).
    """

    TYPE = "hal.configure_inputs"
    REPLY = Configured
    device: DeviceName
    inputs: Annotated[list[InputSetting], msgspec.Meta(max_length=MAX_MODES)]
    clear: bool = True
    expect_version: Version | None = None


class DelayRoute(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The photon leaving output ``out_mode`` goes round delay line ``line`` ``rounds`` times, then into ``in_mode``."""

    line: DelayLine
    out_mode: Mode
    in_mode: Mode
    rounds: Annotated[int, msgspec.Meta(ge=1, le=MAX_ROUNDS)]


class Program(Request[Configured], frozen=True, kw_only=True):
    """Replace the device's feed-forward and delay-line program.

    ``rules`` maps a click pattern of ``ff_modes`` (``"10"``) to fast phases
    per second-pass input mode.
    """

    TYPE = "hal.program"
    REPLY = Configured
    device: DeviceName
    ff_modes: Annotated[list[Mode], msgspec.Meta(max_length=MAX_MODES)] = msgspec.field(default_factory=list)
    rules: Annotated[
        dict[Pattern, Annotated[dict[Mode, Finite], msgspec.Meta(max_length=MAX_MODES)]],
        msgspec.Meta(max_length=MAX_RULES),
    ] = msgspec.field(default_factory=dict)
    delay_lines: Annotated[list[DelayRoute], msgspec.Meta(max_length=MAX_DELAY_LINES)] = msgspec.field(
        default_factory=list
    )
    expect_version: Version | None = None


class Shots(Reply, frozen=True, kw_only=True):
    """A run's detections as counts (decision 0017 §6): what results need, a few KB however many shots.

    ``patterns`` is (k, width) uint8, one detection value per column, each distinct pattern once;
    ``counts`` is (k,) int64, how many of the shots read it. With `RunShots` ``per_shot``,
    ``patterns`` holds every shot's, in the order they were fired, and ``counts`` is all ones.
    """

    TYPE = "hal.shots"
    device: DeviceName
    patterns: np.ndarray
    counts: np.ndarray
    width: Index
    per_shot: bool = False

    @property
    def shots(self) -> int:
        """How many shots these are."""
        return int(self.counts.sum())


class RunShots(Request[Shots], frozen=True, kw_only=True):
    """Fire shots; with ``expect_version``, only if the device is still as the sender set it.

    The reply counts each distinct pattern (``FETCh:HISTogram?``); ``per_shot`` asks for every
    shot's pattern in firing order instead (``FETCh:PATTerns?``: shots x width bytes), for a
    reader that needs the order.
    """

    TYPE = "hal.run_shots"
    REPLY = Shots
    device: DeviceName
    shots: Annotated[int, msgspec.Meta(ge=1, le=MAX_SHOTS_PER_RUN)]
    expect_version: Version | None = None
    per_shot: bool = False


class Powers(Reply, frozen=True, kw_only=True):
    TYPE = "hal.powers"
    device: DeviceName
    watts: np.ndarray


class ReadPowers(Request[Powers], frozen=True, kw_only=True):
    """Photodiode power per output mode, in W; with ``expect_version``, only if the device is still as set."""

    TYPE = "hal.read_powers"
    REPLY = Powers
    device: DeviceName
    expect_version: Version | None = None


class DeviceStatus(Reply, frozen=True, kw_only=True):
    TYPE = "hal.device_status"
    device: DeviceName
    state: Label
    temperature_c: float
    power_w: float
    interlock: bool
    settled: bool
    watchdog_s: float
    sources: bool
    reconnects: Count
    status: StatusReport = msgspec.field(default_factory=StatusReport)
    """All the device said of itself."""
    version: Version = 0


class GetDeviceStatus(Request[DeviceStatus], frozen=True, kw_only=True):
    TYPE = "hal.get_device_status"
    REPLY = DeviceStatus
    device: DeviceName


class ResetInterlock(Request[Ok], frozen=True, kw_only=True):
    """Re-arm a tripped interlock (heaters stay at 0 V)."""

    TYPE = "hal.reset_interlock"
    REPLY = Ok
    device: DeviceName


class SafeState(Request[Ok], frozen=True, kw_only=True):
    """Every heater to 0 V and the sources off, now."""

    TYPE = "hal.safe_state"
    REPLY = Ok
    device: DeviceName


# --- events ----------------------------------------------------------------------------------


class DeviceConnected(Event, frozen=True, kw_only=True):
    TYPE = "hal.connected"
    device: DeviceName
    identity: Text


class DeviceDisconnected(Event, frozen=True, kw_only=True):
    TYPE = "hal.disconnected"
    device: DeviceName
    reason: Reason


class DeviceReconnected(Event, frozen=True, kw_only=True):
    TYPE = "hal.reconnected"
    device: DeviceName
    identity: Text


class InterlockTripped(Event, frozen=True, kw_only=True):
    TYPE = "hal.interlock"
    device: DeviceName
    reason: Reason


class InterlockReset(Event, frozen=True, kw_only=True):
    """The interlock was reset (``hal.reset_interlock``): heater writes are accepted again."""

    TYPE = "hal.interlock_reset"
    device: DeviceName


class Temperature(Event, frozen=True, kw_only=True):
    TYPE = "hal.temperature"
    device: DeviceName
    celsius: float


class ReadbackMismatch(Event, frozen=True, kw_only=True):
    """An alarm: heaters read back a different voltage than was set (stuck or disconnected)."""

    TYPE = "hal.readback_mismatch"
    device: DeviceName
    heaters: list[Heater]
    set_v: list[float]
    read_v: list[float]


HAL_MESSAGES = (
    ListDevices,
    Devices,
    Describe,
    Description,
    SetHeaters,
    HeatersSet,
    GetHeaters,
    Heaters,
    GetHeater,
    HeaterVolts,
    ConfigureInputs,
    Program,
    Configured,
    RunShots,
    Shots,
    ReadPowers,
    Powers,
    GetDeviceStatus,
    DeviceStatus,
    ResetInterlock,
    SafeState,
    DeviceConnected,
    DeviceDisconnected,
    DeviceReconnected,
    InterlockTripped,
    InterlockReset,
    Temperature,
    ReadbackMismatch,
)
