"""The simulated device's parameters: defaults from published figures, overridable from TOML.

Every number here has a default that docs/simulator.md justifies with a source,
and every one can be overridden by a device description file (TOML), mode
count included. Values marked *spread* are the relative (or absolute, for
phases) standard deviation of the per-component values drawn once from the
seed: a real chip's fabrication spread.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from protocol import convert_settings, load_settings
from protocol.photonica import (
    DelayLineSpec,
    DetectorSpec,
    DeviceDescription,
    FeedForwardSpec,
    HeaterSpec,
    Identity,
    SourceSpec,
)

from ._source import SourceError, SourceModel

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
PerHeater = Positive | list[Positive] | dict[str, Positive]
"""One value for every heater, one per heater, or a map of heater numbers (and ``default``) to values."""
PerHeaterVolts = NonNegative | list[NonNegative] | dict[str, NonNegative]


def per_heater(value: float | list[float] | dict[str, float], count: int, *, default: float, key: str) -> list[float]:
    """A `PerHeater` setting as one value per heater.

    Raises:
        ValueError: a list of the wrong length, or a map key that is not a heater
            (msgspec reports it as a validation error of the file).
    """
    if isinstance(value, int | float):
        return [float(value)] * count
    if isinstance(value, list):
        if len(value) != count:
            raise ValueError(f"{key}: {len(value)} values for {count} heaters (modes**2)")
        return [float(v) for v in value]
    values = [float(value.get("default", default))] * count
    for name, item in value.items():
        if name == "default":
            continue
        if not name.isdigit() or int(name) >= count:
            raise ValueError(f"{key}: {name!r} is not a heater (0-{count - 1}) or 'default'")
        values[int(name)] = float(item)
    return values


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A table of the device file: frozen, and a misspelt key is an error, not a silent default."""


V_MAX = 7.0


class IdentityConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model: str = "PX-8"
    serial: str = "SN-000001"
    firmware: str = "1.4.2"


class HeaterConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    resistance_ohm: Positive = 1000.0
    resistance_spread: NonNegative = 0.05
    power_per_pi_mw: Positive = 20.0
    power_per_pi_spread: NonNegative = 0.05
    v_max: PerHeater = V_MAX
    """The highest voltage a heater accepts: one for all, per heater, or a map over ``default`` (7 V)."""
    power_max_w: PerHeater | None = None
    """A heater's own highest electrical power (one for all, per heater, or a map); None: only v_max."""
    crosstalk: Fraction = 0.03
    crosstalk_spread: NonNegative = 0.2
    settle_s: Positive = 5e-6
    drift_rad_per_sqrt_hour: NonNegative = 0.02
    power_limit_w: Positive | None = None
    """Default: 35 mW per heater, 1.75 times the mean that a random setting draws."""


class LossConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    mzi_db: NonNegative = 0.1
    """Per MZI; the mesh is balanced, so every path crosses one MZI-equivalent per column."""
    input_db: NonNegative = 1.5
    """Source-to-chip coupling, the same on every input."""
    output_db: NonNegative = 1.0
    output_spread_db: NonNegative = 0.2


class DetectorConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["threshold", "pnr"] = "threshold"
    efficiency: Fraction = 0.93
    efficiency_spread: NonNegative = 0.02
    dark_rate_hz: NonNegative = 10.0
    dead_time_s: NonNegative = 40e-9
    gate_s: Positive = 1e-9
    jitter_s: NonNegative = 50e-12
    """RMS timing jitter of a click (SNSPDs: Korzh et al., Nat. Photonics 14, 250 (2020)). A click
    further than ``gate_s / 2`` from the pulse's time is lost from its shot (decision 0017 §3)."""
    powermeter_noise_w: NonNegative = 1e-9
    powermeter_gain_spread: NonNegative = 0.001


PUBLISHED_SOURCE = {"brightness": 0.6, "g2": 0.025, "indistinguishability": 0.92}
"""A state-of-the-art quantum-dot source, for a device file's ``[sources]`` (docs/simulator.md):
Wang et al., Nat. Photonics 13, 770 (2019), polarized single-photon efficiency 0.60 and purity
0.975; Wang et al., PRL 116, 213601 (2016), HOM visibility 92.1 % between photons microseconds apart,
as photons of one demultiplexed source are when they feed several inputs."""


IDEAL_SOURCE = {
    "brightness": 1.0,
    "g2": 0.0,
    "indistinguishability": 1.0,
    "indistinguishability_drift_per_sqrt_hour": 0.0,
}
"""Perfect single photons, one per pulse, identical and steady: for a device file's ``[sources]``."""


class SinglePhotonConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One input's single-photon source, where it differs from the rest (``[sources.per_input]``)."""

    brightness: Fraction | None = None
    g2: Fraction | None = None
    indistinguishability: Fraction | None = None


class SourceConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The sources: a calibration laser's power limit, and the single-photon sources (decision 0017 §1).

    ``brightness``, ``g2`` and ``indistinguishability`` have Perceval's meaning
    (`sim.SourceModel`); ``per_input`` overrides them by input mode (``"3" = {g2 = 0.05}``).
    """

    coherent_max_w: Positive = 0.01
    brightness: Fraction = 0.6
    g2: Fraction = 0.025
    indistinguishability: Fraction = 0.92
    """Defaults: a published quantum-dot source (``PUBLISHED_SOURCE``, docs/simulator.md); perfect
    photons are ``IDEAL_SOURCE``."""
    indistinguishability_drift_per_sqrt_hour: NonNegative = 0.005
    """Each input's M walks at random by this much per sqrt(hour) of device time, reflected
    into [0, 1] (decision 0017 §4): what the calibration's drift check watches."""
    per_input: dict[str, SinglePhotonConfig] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for mode in self.per_input:
            if not mode.isdigit():
                raise ValueError(f"sources.per_input: {mode!r} is not an input mode (0, 1, ...)")
            self.model(int(mode))  # a combination no source has is refused here, naming the input
        self.model(-1)

    def model(self, mode: int) -> SourceModel:
        """The source on input ``mode`` (-1: the common one)."""
        own = self.per_input.get(str(mode), SinglePhotonConfig())
        try:
            return SourceModel(
                brightness=self.brightness if own.brightness is None else own.brightness,
                g2=self.g2 if own.g2 is None else own.g2,
                indistinguishability=(
                    self.indistinguishability if own.indistinguishability is None else own.indistinguishability
                ),
            )
        except SourceError as exc:
            where = "sources" if mode < 0 else f"sources.per_input.{mode}"
            raise ValueError(f"{where}: {exc}") from None


class DelayLineConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    count: Annotated[int, msgspec.Meta(ge=0)] = 2
    loop_s: Positive = 25e-9
    rounds_at_1_over_e: Positive = 30.0
    max_rounds: Annotated[int, msgspec.Meta(ge=1)] = 60


class FeedForwardConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    latency_s: NonNegative = 200e-9


class ThermalConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ambient_c: float = 25.0
    kelvin_per_watt: NonNegative = 5.0


class PowerOnConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The state the device powers up in: safe (sources off, heaters at 0 V) unless the file says otherwise.

    Attributes:
        sources: Whether the sources are on at power-up.
        volts: The heaters' voltages at power-up (one for all, per heater, or a
            map), within every limit.
    """

    sources: bool = False
    volts: PerHeaterVolts = 0.0


class FaultConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One fault to inject.

    Attributes:
        kind: ``close`` the connection instead of answering; ``delay`` the
            reply by ``seconds``; ``corrupt`` one byte of the reply; answer
            with a device ``error`` (``code``, ``message``) instead of
            executing; trip the ``interlock``; or keep heater ``heater``
            ``stuck`` at ``volts`` whatever it is set to. An ``error`` fails
            the message's first command; the rest of the message runs.
        probability: Chance per command.
        nth: Fire on these commands (counted from 1 over the device's life).
        on: Only messages that begin with this command, as sent (``RUN:SHOT``,
            ``HEAT:VOLT:ALL``): ``nth`` then counts those messages alone.
        at: The byte of the reply a ``corrupt`` fault flips (default: one at random).
    """

    kind: Literal["close", "delay", "corrupt", "error", "interlock", "stuck"]
    probability: Fraction = 0.0
    nth: list[Annotated[int, msgspec.Meta(ge=1)]] = msgspec.field(default_factory=list)
    seconds: NonNegative = 1.0
    code: int = -240
    message: str = "injected fault"
    heater: Annotated[int, msgspec.Meta(ge=0)] = 0
    volts: float = 0.0
    on: str = ""
    at: Annotated[int, msgspec.Meta(ge=0)] | None = None


class SimConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A simulated Photonica device (the ``--device`` TOML file)."""

    modes: Annotated[int, msgspec.Meta(ge=2, le=64)] = 8
    seed: int | None = None
    clock: Literal["commands", "wall"] = "commands"
    """``commands``: device time advances by each command's duration, so the same
    seed and commands give the same replies. ``wall``: it follows the host clock."""
    command_s: NonNegative = 20e-6
    shot_rate_hz: Positive = 1e6
    max_shots: Annotated[int, msgspec.Meta(ge=1)] = 1_000_000
    watchdog_max_s: Positive = 3600.0
    identity: IdentityConfig = msgspec.field(default_factory=IdentityConfig)
    heaters: HeaterConfig = msgspec.field(default_factory=HeaterConfig)
    loss: LossConfig = msgspec.field(default_factory=LossConfig)
    detectors: DetectorConfig = msgspec.field(default_factory=DetectorConfig)
    sources: SourceConfig = msgspec.field(default_factory=SourceConfig)
    delay_lines: DelayLineConfig = msgspec.field(default_factory=DelayLineConfig)
    feedforward: FeedForwardConfig = msgspec.field(default_factory=FeedForwardConfig)
    thermal: ThermalConfig = msgspec.field(default_factory=ThermalConfig)
    power_on: PowerOnConfig = msgspec.field(default_factory=PowerOnConfig)
    faults: list[FaultConfig] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        beyond = sorted(int(mode) for mode in self.sources.per_input if int(mode) >= self.modes)
        if beyond:
            raise ValueError(f"sources.per_input: input {beyond[0]} does not exist on a {self.modes}-mode chip")
        volts = np.array(self.power_on_volts)
        v_max = self.heater_v_max
        over = np.flatnonzero(volts > np.array(v_max))
        if len(over):
            h = int(over[0])
            raise ValueError(f"power_on.volts: heater {h}: {volts[h]:g} V is outside 0-{v_max[h]:g} V")
        powers = volts * volts / self.heaters.resistance_ohm
        power_max = np.array(self.heater_power_max_w or [math.inf] * len(volts))
        over = np.flatnonzero(powers > power_max)
        if len(over):
            h = int(over[0])
            raise ValueError(
                f"power_on.volts: heater {h}: {volts[h]:g} V draws {powers[h]:.4g} W (nominal), "
                f"over its limit {power_max[h]:g} W"
            )
        power = float(np.sum(powers))
        if power > self.power_limit_w:
            raise ValueError(
                f"power_on.volts: {power:.3g} W (nominal) exceeds heaters.power_limit_w {self.power_limit_w:.3g} W"
            )

    @property
    def heater_count(self) -> int:
        return self.modes * self.modes

    @property
    def heater_v_max(self) -> list[float]:
        """The highest voltage each heater accepts."""
        return per_heater(self.heaters.v_max, self.heater_count, default=V_MAX, key="heaters.v_max")

    @property
    def heater_power_max_w(self) -> list[float] | None:
        """Each heater's own power limit in W (inf: none beyond v_max); None if the file sets none."""
        if self.heaters.power_max_w is None:
            return None
        return per_heater(self.heaters.power_max_w, self.heater_count, default=math.inf, key="heaters.power_max_w")

    @property
    def power_on_volts(self) -> list[float]:
        """Each heater's voltage at power-up."""
        return per_heater(self.power_on.volts, self.heater_count, default=0.0, key="power_on.volts")

    @property
    def power_limit_w(self) -> float:
        if self.heaters.power_limit_w is not None:
            return self.heaters.power_limit_w
        return 0.035 * self.heater_count

    @property
    def delay_line_transmission(self) -> float:
        return math.exp(-1.0 / self.delay_lines.rounds_at_1_over_e)

    def description(self) -> DeviceDescription:
        """What the device reports about itself: nominal values."""
        n = self.heater_count
        v_max, power_max, r = self.heater_v_max, self.heater_power_max_w, self.heaters.resistance_ohm
        return DeviceDescription(
            identity=Identity(model=self.identity.model, serial=self.identity.serial, firmware=self.identity.firmware),
            modes=self.modes,
            heaters=HeaterSpec(
                count=n,
                v_max=v_max,
                resistance_ohm=[r] * n,
                power_limit_w=self.power_limit_w,
                settle_s=self.heaters.settle_s,
                # A heater with no limit of its own draws at most what v_max allows.
                power_max_w=None
                if power_max is None
                else [p if math.isfinite(p) else v * v / r for p, v in zip(power_max, v_max, strict=True)],
            ),
            detectors=DetectorSpec(
                kind=self.detectors.kind,
                count=self.modes,
                efficiency=self.detectors.efficiency,
                dark_rate_hz=self.detectors.dark_rate_hz,
                dead_time_s=self.detectors.dead_time_s,
                gate_s=self.detectors.gate_s,
            ),
            sources=SourceSpec(coherent_max_w=self.sources.coherent_max_w),
            delay_lines=DelayLineSpec(
                count=self.delay_lines.count,
                loop_s=self.delay_lines.loop_s,
                transmission=self.delay_line_transmission,
                max_rounds=self.delay_lines.max_rounds,
            ),
            feedforward=FeedForwardSpec(latency_s=self.feedforward.latency_s, phase_shifters=self.modes),
            shot_rate_hz=self.shot_rate_hz,
            max_shots=self.max_shots,
            watchdog_max_s=self.watchdog_max_s,
        )


class SimConfigError(ValueError):
    """A device description file that cannot be used; the message names the file and key."""


def parse_config(data: dict[str, Any], *, source: str = "device description") -> SimConfig:
    return convert_settings(data, SimConfig, source=source, error=SimConfigError)


def load_config(path: str | Path) -> SimConfig:
    """Read a device description TOML file."""
    return load_settings(path, SimConfig, error=SimConfigError)


def parse_fault(spec: str) -> FaultConfig:
    """A fault from the command line: ``kind[:key=value,...]``.

    Keys: ``p`` (probability), ``nth`` (``3`` or ``3+7+9``), ``on``, ``at``, ``seconds``,
    ``code``, ``message``, ``heater``, ``volts``. For example
    ``close:p=0.01``, ``delay:nth=3,seconds=0.5``, ``error:nth=2,code=-240``,
    ``close:on=RUN:SHOT,nth=2`` (the second shot run), ``stuck:heater=3,volts=1.5``.
    """
    kind, _, rest = spec.partition(":")
    data: dict[str, Any] = {"kind": kind}
    try:
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise SimConfigError(f"fault {spec!r}: expected key=value, got {item!r}")
            key = {"p": "probability"}.get(key, key)
            if key == "nth":
                data[key] = [int(v) for v in value.split("+")]
            elif key in ("probability", "seconds", "volts"):
                data[key] = float(value)
            elif key in ("code", "heater", "at"):
                data[key] = int(value)
            else:
                data[key] = value
        return msgspec.convert(data, FaultConfig)
    except (msgspec.ValidationError, ValueError) as exc:
        raise SimConfigError(f"fault {spec!r}: {exc}") from None
