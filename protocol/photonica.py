"""The Photonica device: its description and its command set.

What a Photonica controller says about itself (`DeviceDescription`, the reply
to ``SYSTem:CAPabilities?``) and every command it understands (`COMMANDS`),
declared once for the simulator that answers them and the drivers that send
them. docs/device-protocol.md documents the same table for people.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import msgspec

from .mesh import MeshLayout, clements_layout
from .scpi import ScpiError, header_matches

# Device-specific error numbers (positive, as SCPI reserves them for devices).
INTERLOCK_TRIPPED = 101
WATCHDOG_EXPIRED = 102
SOURCES_DISABLED = 103
NO_PHOTONS = 104
NOT_SETTLED = 105

DEVICE_ERRORS: dict[int, str] = {
    INTERLOCK_TRIPPED: "Interlock tripped",
    WATCHDOG_EXPIRED: "Watchdog expired",
    SOURCES_DISABLED: "Sources disabled",
    NO_PHOTONS: "No photons",
    NOT_SETTLED: "Heaters not settled",
}


def device_error(code: int, detail: str) -> ScpiError:
    """A device-specific error (positive code) with its standard text."""
    return ScpiError(code, detail, base=DEVICE_ERRORS[code])


# --- the description ------------------------------------------------------------------------


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    vendor: str = "Photonica"
    model: str
    serial: str
    firmware: str

    def idn(self) -> str:
        """The ``*IDN?`` reply."""
        return f"{self.vendor},{self.model},{self.serial},{self.firmware}"


class HeaterSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The heaters, numbered as in `protocol.mesh`.

    Attributes:
        count: modes**2.
        v_max: The highest voltage each heater accepts, per heater.
        resistance_ohm: Nominal resistance, per heater (power = V**2 / R).
        power_limit_w: Total electrical power that trips the interlock.
        settle_s: Time for a heater's phase to settle after a change (1/e).
        power_max_w: The highest electrical power each heater accepts, per
            heater, in W; a setting over it is refused like one over v_max.
            None: no limit beyond v_max.
    """

    count: int
    v_max: list[float]
    resistance_ohm: list[float]
    power_limit_w: float
    settle_s: float
    power_max_w: list[float] | None = None


class DetectorSpec(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["threshold", "pnr"]
    count: int
    efficiency: float
    dark_rate_hz: float
    dead_time_s: float
    gate_s: float


class SourceSpec(msgspec.Struct, frozen=True, kw_only=True):
    single_photon: bool = True
    coherent_max_w: float


class DelayLineSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Fibre delay lines: a stored photon survives r round trips with probability transmission**r.

    Attributes:
        count: How many lines, numbered from 0 (``DLINe:ROUTe``'s ``line``).
        loop_s: One round trip.
        transmission: What one round trip keeps.
        max_rounds: Past this many round trips the photon is gone.
    """

    count: int
    loop_s: float
    transmission: float
    max_rounds: int


class FeedForwardSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Detections after the first pass set fast phase shifters on the stored photons' modes."""

    latency_s: float
    phase_shifters: int


class DeviceDescription(msgspec.Struct, frozen=True, kw_only=True):
    """What a device says about itself (``SYSTem:CAPabilities?``, a JSON block).

    Values are the device's nominal specification; the chip's true phase
    offsets and heater efficiencies are for calibration to find.
    """

    identity: Identity
    modes: int
    mesh: Literal["clements"] = "clements"
    heaters: HeaterSpec
    detectors: DetectorSpec
    sources: SourceSpec
    delay_lines: DelayLineSpec
    feedforward: FeedForwardSpec
    shot_rate_hz: float
    max_shots: int
    watchdog_max_s: float

    def layout(self) -> MeshLayout:
        return clements_layout(self.modes)


def encode_description(description: DeviceDescription) -> bytes:
    return msgspec.json.encode(description)


def decode_description(data: bytes) -> DeviceDescription:
    return msgspec.json.decode(data, type=DeviceDescription)


# --- the command set ------------------------------------------------------------------------

ParamKind = Literal["int", "float", "bool", "choice", "block", "int_list", "bits", "rest"]


@dataclass(frozen=True)
class Param:
    """One parameter.

    Kinds: ``int``, ``float``, ``bool`` (ON/OFF/1/0), ``choice`` (one of
    ``choices``, matched by short or long form), ``block`` (a definite-length
    block), ``int_list`` (the remaining parameters, all integers), ``bits`` (a
    string of 0 and 1), ``rest`` (the remaining parameters, as given).
    """

    name: str
    kind: ParamKind
    optional: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    """One entry of the command set.

    Attributes:
        pattern: The header in SCPI's long form, capitals marking the short form.
        query: Whether it is sent with '?' and answers.
        params: Its parameters.
        reply: What the answer holds (for a query).
        idempotent: Sending it twice has the same effect as once, so a driver
            may repeat it after a link failure without asking first.
        summary: One line for the documentation.
    """

    pattern: str
    query: bool
    params: tuple[Param, ...]
    reply: str
    idempotent: bool
    summary: str

    @property
    def short(self) -> str:
        nodes = [("".join(ch for ch in node if not ch.islower()) or node) for node in self.pattern.split(":")]
        return ":".join(nodes) + ("?" if self.query else "")

    @property
    def long(self) -> str:
        return self.pattern.upper() + ("?" if self.query else "")


def _c(pattern: str, params: tuple[Param, ...], summary: str, *, reply: str = "", idempotent: bool = True) -> Command:
    return Command(pattern.rstrip("?"), pattern.endswith("?"), params, reply, idempotent, summary)


P = Param
COMMANDS: tuple[Command, ...] = (
    _c("*IDN?", (), "Identity.", reply="Photonica,<model>,<serial>,<firmware>"),
    _c("*RST", (), "Reset to the safe state: heaters 0 V, sources off, inputs vacuum, programs and results cleared."),
    _c("*CLS", (), "Clear the error queue."),
    _c("*OPC?", (), "Wait until every heater has settled, then answer 1.", reply="1"),
    _c("*TST?", (), "Self-test.", reply="0 (passed)"),
    _c(
        "SYSTem:ERRor?",
        (),
        "Oldest entry of the error queue (and removes it).",
        reply='<code>,"<text>"',
        idempotent=False,
    ),
    _c("SYSTem:ECHO?", (P("token", "int"),), "Answer <token>: marks a point in the reply stream.", reply="<token>"),
    _c("SYSTem:CAPabilities?", (), "Everything the device offers.", reply="block: DeviceDescription as JSON"),
    _c(
        "SYSTem:WATChdog",
        (P("timeout", "float"),),
        "Arm the host watchdog: with no command for <timeout> s the device goes to its safe state. 0 disarms.",
    ),
    _c("SYSTem:WATChdog?", (), "Armed timeout in s (0: disarmed).", reply="float"),
    _c("SYSTem:INTerlock?", (), "Whether the power interlock has tripped.", reply="0 or 1"),
    _c("SYSTem:INTerlock:RESet", (), "Re-arm the interlock after a trip (heaters stay at 0 V)."),
    _c("STATus?", (), "Temperature, interlock, settling, watchdog, sources.", reply="block: JSON"),
    _c("STATus:TEMPerature?", (), "Chip temperature in degrees C.", reply="float"),
    _c("STATus:SETTled?", (), "Whether every heater has settled.", reply="0 or 1"),
    _c("HEATer:VOLTage", (P("heater", "int"), P("volts", "float")), "Set one heater's voltage."),
    _c("HEATer:VOLTage?", (P("heater", "int"),), "One heater's voltage, as read back.", reply="float"),
    _c(
        "HEATer:VOLTage:ALL",
        (P("volts", "rest"),),
        "Set every heater: one block of modes**2 little-endian float64, or modes**2 numbers.",
    ),
    _c("HEATer:VOLTage:ALL?", (), "Every heater's voltage, as read back.", reply="block: modes**2 float64 LE"),
    _c("HEATer:POWer?", (), "Total heater power in W.", reply="float"),
    _c(
        "INPut:STATe",
        (
            P("mode", "int"),
            P("state", "choice", choices=("PHOTon", "COHerent", "VACuum")),
            P("power", "float", optional=True),
            P("phase", "float", optional=True),
        ),
        "Choose a mode's input: a single photon, coherent light (power in W, phase in rad), or vacuum.",
    ),
    _c("INPut:STATe?", (P("mode", "int"),), "A mode's input.", reply="PHOT | VAC | COH,<power>,<phase>"),
    _c("INPut:CLEar", (), "Every input to vacuum."),
    _c("SOURce:ENABle", (P("on", "bool"),), "Switch the sources (photons and laser) on or off."),
    _c("SOURce:ENABle?", (), "Whether the sources are on.", reply="0 or 1"),
    _c(
        "RUN:SHOTs",
        (P("shots", "int"),),
        "Fire shots with the current settings; results replace the previous run's.",
        idempotent=False,
    ),
    _c("FETCh:WIDTh?", (), "Detection values per shot: modes, or 2*modes with a second pass.", reply="int"),
    _c("FETCh:SHOTs?", (), "Shots in the last run.", reply="int"),
    _c("FETCh:PATTerns?", (), "Every shot's detections.", reply="block: shots x width uint8"),
    _c(
        "FETCh:HISTogram?",
        (),
        "Each distinct pattern and how often it occurred.",
        reply="block: records of width uint8 + uint32 LE count",
    ),
    _c("FETCh:COUNts?", (), "Total detections per column.", reply="width integers"),
    _c("MEASure:POWer?", (P("mode", "int", optional=True),), "Photodiode power per output mode in W.", reply="floats"),
    _c(
        "FFORward:MEASure",
        (P("modes", "int_list"),),
        "Modes whose first-pass detections drive the feed-forward rules.",
    ),
    _c("FFORward:MEASure?", (), "The feed-forward modes.", reply="integers"),
    _c(
        "FFORward:RULE",
        (P("pattern", "bits"), P("phases", "rest")),
        "When the feed-forward modes click as <pattern>, set fast phase shifters: <mode>,<rad>,...",
    ),
    _c("FFORward:RULE?", (), "The rules.", reply="block: JSON"),
    _c("FFORward:CLEar", (), "Remove the feed-forward modes and rules."),
    _c("FFORward:LATency?", (), "Feed-forward latency in s.", reply="float"),
    _c(
        "DLINe:ROUTe",
        (P("line", "int"), P("out_mode", "int"), P("in_mode", "int"), P("rounds", "int")),
        "Send the photon leaving output <out_mode> round delay line <line> <rounds> times, "
        "then into input <in_mode> for a second pass.",
    ),
    _c("DLINe:ROUTe?", (), "The delay-line routes.", reply="block: JSON"),
    _c("DLINe:CLEar", (), "Remove every delay-line route."),
    _c("DLINe:LOOP?", (), "One round trip of a delay line in s.", reply="float"),
)


@functools.lru_cache(maxsize=1024)
def find_command(header: str, query: bool) -> Command | None:
    """The command a received header names, or None (cached: headers repeat)."""
    for command in COMMANDS:
        if command.query == query and header_matches(command.pattern, header):
            return command
    return None
