"""The Photonica device: its description and its command set.

What a Photonica controller says about itself (`DeviceDescription`, the reply
to ``SYSTem:CAPabilities?``) and every command it understands (`COMMANDS`,
each also a named constant: `SET_HEATERS`, `RUN_SHOTS`, ...), declared once
for the simulator that answers them and the drivers that send them: a host
writes a command with `Command.compose`, a device reads its parameters with
`Command.parse_arguments`. Nothing else in awen spells a header.
docs/device-protocol.md documents the same table for people.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, SupportsFloat, SupportsIndex, cast

import msgspec
import numpy as np

from .mesh import MeshLayout, clements_layout
from .scpi import (
    DATA_OUT_OF_RANGE,
    DATA_TYPE_ERROR,
    ILLEGAL_PARAMETER_VALUE,
    MISSING_PARAMETER,
    PARAMETER_NOT_ALLOWED,
    ScpiError,
    block,
    header_matches,
)

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


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a device says of its state now (``STATus?``, a JSON block); what it leaves out has these values."""

    temperature_c: float = math.nan
    """The chip's temperature."""
    power_w: float = math.nan
    """Electrical power in the heaters."""
    interlock: bool = False
    """The power interlock has tripped: the heaters are off until it is reset."""
    settled: bool = False
    """Every heater has settled since it was last set."""
    watchdog_s: float = 0.0
    """The watchdog's timeout (0: disarmed)."""
    watchdog_expired: bool = False
    sources: bool = False
    """The light sources are on."""
    time_s: float | None = None
    """The device's clock."""


def encode_status(status: StatusReport) -> bytes:
    return msgspec.json.encode(status)


def decode_status(data: bytes) -> StatusReport:
    return msgspec.json.decode(data, type=StatusReport)


# --- a run's histogram (``FETCh:HISTogram?``) -------------------------------------------------

MAX_HISTOGRAM_COUNT = 2**32 - 1
"""The most shots one pattern of a ``FETCh:HISTogram?`` record can count (a uint32)."""


def encode_histogram(patterns: np.ndarray, counts: np.ndarray) -> bytes:
    """``FETCh:HISTogram?``'s payload: per distinct pattern, its ``width`` uint8 values, then its count (uint32 LE).

    Args:
        patterns: (k, width) detection values, each row once.
        counts: (k,) how many shots read each, from 1 to `MAX_HISTOGRAM_COUNT`.
    """
    patterns = np.asarray(patterns)
    counts = np.asarray(counts)
    k, width = patterns.shape
    if counts.shape != (k,) or (k and not 1 <= int(counts.min()) <= int(counts.max()) <= MAX_HISTOGRAM_COUNT):
        raise ValueError(f"{k} patterns need {k} counts in 1..{MAX_HISTOGRAM_COUNT}, got shape {counts.shape}")
    records = np.empty((k, width + 4), dtype=np.uint8)
    records[:, :width] = patterns
    records[:, width:] = counts.astype("<u4").reshape(k, 1).view(np.uint8)
    return records.tobytes()


def histogram_widths(data: bytes, shots: int, widths: Iterable[int]) -> list[int]:
    """Of ``widths``, those at which ``data`` reads as `encode_histogram` records counting ``shots`` shots in all.

    A record does not say its width: the reader knows the shots it fired and the widths the
    device may answer with (``modes``, or ``2 * modes`` with a second pass), and more than one
    fits almost never (then ``FETCh:WIDTh?`` says which).
    """
    fits = []
    for width in widths:
        size = width + 4
        if width < 0 or len(data) % size:
            continue
        counts = np.frombuffer(data, np.uint8).reshape(-1, size)[:, width:].copy().view("<u4").ravel()
        if int(counts.sum(dtype=np.int64)) == shots and (counts > 0).all():
            fits.append(width)
    return fits


def decode_histogram(data: bytes, width: int) -> tuple[np.ndarray, np.ndarray]:
    """`encode_histogram`'s payload back: (patterns (k, width) uint8, counts (k,) int64).

    Raises:
        ValueError: ``data`` is not whole records of that width.
    """
    size = width + 4
    if width < 0 or len(data) % size:
        raise ValueError(f"{len(data)} bytes are not whole histogram records of {width} values and a count")
    records = np.frombuffer(data, np.uint8).reshape(-1, size)
    counts = records[:, width:].copy().view("<u4").ravel().astype(np.int64)
    return records[:, :width].copy(), counts


# --- the command set ------------------------------------------------------------------------
#
# Every command the device understands is declared once, below, as a named constant: the
# drivers compose their messages from these (`Command.compose`), the simulator reads its
# arguments with them (`Command.parse_arguments`) and dispatches on them. Queries are named
# for what they answer (`HEATERS`), commands for what they do (`SET_HEATERS`).

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


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: each command is declared once
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

    @functools.cached_property
    def _header(self) -> bytes:
        return self.short.encode("ascii")

    def compose(self, *args: object) -> bytes:
        """The command as a host sends it: its short header, then ``args`` written as its parameters say.

        ``int`` and ``float`` are written exactly (``repr`` of the float), ``bool`` as ON or OFF,
        ``choice`` in its short form (given in either form, any case), ``block`` (bytes) as a
        definite-length block, ``int_list`` as the integers of one iterable, ``bits`` as given;
        ``rest`` takes the remaining arguments, each a number, a string or bytes (a block).
        Optional parameters may be left off or given as None.

        Raises:
            TypeError: too many or too few arguments, or one of the wrong kind (a bug of the caller's).
        """
        params = self.params
        if len(args) > len(params) and not (params and params[-1].kind == "rest"):
            raise TypeError(f"{self.short} takes {len(params)} argument(s), got {len(args)}")
        written: list[bytes] = []
        for i, param in enumerate(params):
            if param.kind == "rest":
                written.extend(_write_rest(value) for value in args[i:])
                break
            value = args[i] if i < len(args) else None
            if value is None:
                if not param.optional:
                    raise TypeError(f"{self.short} needs <{param.name}>")
                if any(later is not None for later in args[i + 1 :]):
                    raise TypeError(f"{self.short}: <{param.name}> may be left off only with what follows it")
                break
            try:
                written.append(_write(param, value))
            except TypeError as exc:
                raise TypeError(f"{self.short}: <{param.name}> ({param.kind}) cannot be {value!r}: {exc}") from None
        return self._header + b" " + b",".join(written) if written else self._header

    def parse_arguments(self, params: Sequence[str | bytes]) -> list[Any]:
        """The parameters a device received (`scpi.Parsed.params`) as values of their kinds.

        Raises:
            ScpiError: too few or too many, or one that is not of its kind (with the SCPI number to queue).
        """
        values: list[Any] = []
        for i, spec in enumerate(self.params):
            if spec.kind in ("rest", "int_list"):
                remaining = list(params[i:])
                if not remaining and not spec.optional:
                    raise ScpiError(MISSING_PARAMETER, f"{self.short} needs <{spec.name}>")
                values.append([parse_int(p) for p in remaining] if spec.kind == "int_list" else remaining)
                return values
            if i >= len(params):
                if spec.optional:
                    values.append(None)
                    continue
                raise ScpiError(MISSING_PARAMETER, f"{self.short} needs <{spec.name}>")
            values.append(_read(spec, params[i]))
        if len(params) > len(self.params):
            raise ScpiError(
                PARAMETER_NOT_ALLOWED, f"{self.short} takes {len(self.params)} parameter(s), got {len(params)}"
            )
        return values


def _c(pattern: str, params: tuple[Param, ...], summary: str, *, reply: str = "", idempotent: bool = True) -> Command:
    return Command(pattern.rstrip("?"), pattern.endswith("?"), params, reply, idempotent, summary)


P = Param

IDENTITY = _c("*IDN?", (), "Identity.", reply="Photonica,<model>,<serial>,<firmware>")
RESET = _c(
    "*RST", (), "Reset to the safe state: heaters 0 V, sources off, inputs vacuum, programs and results cleared."
)
CLEAR_STATUS = _c("*CLS", (), "Clear the error queue.")
OPERATION_COMPLETE = _c("*OPC?", (), "Wait until every heater has settled, then answer 1.", reply="1")
SELF_TEST = _c("*TST?", (), "Self-test.", reply="0 (passed)")
NEXT_ERROR = _c(
    "SYSTem:ERRor?", (), "Oldest entry of the error queue (and removes it).", reply='<code>,"<text>"', idempotent=False
)
ECHO = _c("SYSTem:ECHO?", (P("token", "int"),), "Answer <token>: marks a point in the reply stream.", reply="<token>")
CAPABILITIES = _c("SYSTem:CAPabilities?", (), "Everything the device offers.", reply="block: DeviceDescription as JSON")
ARM_WATCHDOG = _c(
    "SYSTem:WATChdog",
    (P("timeout", "float"),),
    "Arm the host watchdog: with no command for <timeout> s the device goes to its safe state. 0 disarms.",
)
WATCHDOG = _c("SYSTem:WATChdog?", (), "Armed timeout in s (0: disarmed).", reply="float")
INTERLOCK = _c("SYSTem:INTerlock?", (), "Whether the power interlock has tripped.", reply="0 or 1")
RESET_INTERLOCK = _c("SYSTem:INTerlock:RESet", (), "Re-arm the interlock after a trip (heaters stay at 0 V).")
STATUS = _c("STATus?", (), "Temperature, interlock, settling, watchdog, sources.", reply="block: JSON")
TEMPERATURE = _c("STATus:TEMPerature?", (), "Chip temperature in degrees C.", reply="float")
SETTLED = _c("STATus:SETTled?", (), "Whether every heater has settled.", reply="0 or 1")
SET_HEATER = _c("HEATer:VOLTage", (P("heater", "int"), P("volts", "float")), "Set one heater's voltage.")
HEATER = _c("HEATer:VOLTage?", (P("heater", "int"),), "One heater's voltage, as read back.", reply="float")
SET_HEATERS = _c(
    "HEATer:VOLTage:ALL",
    (P("volts", "rest"),),
    "Set every heater: one block of modes**2 little-endian float64, or modes**2 numbers.",
)
HEATERS = _c("HEATer:VOLTage:ALL?", (), "Every heater's voltage, as read back.", reply="block: modes**2 float64 LE")
HEATER_POWER = _c("HEATer:POWer?", (), "Total heater power in W.", reply="float")
SET_INPUT = _c(
    "INPut:STATe",
    (
        P("mode", "int"),
        P("state", "choice", choices=("PHOTon", "COHerent", "VACuum")),
        P("power", "float", optional=True),
        P("phase", "float", optional=True),
    ),
    "Choose a mode's input: a single photon, coherent light (power in W, phase in rad), or vacuum.",
)
INPUT = _c("INPut:STATe?", (P("mode", "int"),), "A mode's input.", reply="PHOT | VAC | COH,<power>,<phase>")
CLEAR_INPUTS = _c("INPut:CLEar", (), "Every input to vacuum.")
ENABLE_SOURCES = _c("SOURce:ENABle", (P("on", "bool"),), "Switch the sources (photons and laser) on or off.")
SOURCES = _c("SOURce:ENABle?", (), "Whether the sources are on.", reply="0 or 1")
RUN_SHOTS = _c(
    "RUN:SHOTs",
    (P("shots", "int"),),
    "Fire shots with the current settings; results replace the previous run's.",
    idempotent=False,
)
WIDTH = _c("FETCh:WIDTh?", (), "Detection values per shot: modes, or 2*modes with a second pass.", reply="int")
SHOTS = _c("FETCh:SHOTs?", (), "Shots in the last run.", reply="int")
PATTERNS = _c("FETCh:PATTerns?", (), "Every shot's detections.", reply="block: shots x width uint8")
HISTOGRAM = _c(
    "FETCh:HISTogram?",
    (),
    "Each distinct pattern and how often it occurred.",
    reply="block: records of width uint8 + uint32 LE count",
)
COUNTS = _c("FETCh:COUNts?", (), "Total detections per column.", reply="width integers")
POWERS = _c(
    "MEASure:POWer?", (P("mode", "int", optional=True),), "Photodiode power per output mode in W.", reply="floats"
)
SET_FEEDFORWARD_MODES = _c(
    "FFORward:MEASure", (P("modes", "int_list"),), "Modes whose first-pass detections drive the feed-forward rules."
)
FEEDFORWARD_MODES = _c("FFORward:MEASure?", (), "The feed-forward modes.", reply="integers")
ADD_FEEDFORWARD_RULE = _c(
    "FFORward:RULE",
    (P("pattern", "bits"), P("phases", "rest")),
    "When the feed-forward modes click as <pattern>, set fast phase shifters: <mode>,<rad>,...",
)
FEEDFORWARD_RULES = _c("FFORward:RULE?", (), "The rules.", reply="block: JSON")
CLEAR_FEEDFORWARD = _c("FFORward:CLEar", (), "Remove the feed-forward modes and rules.")
FEEDFORWARD_LATENCY = _c("FFORward:LATency?", (), "Feed-forward latency in s.", reply="float")
ROUTE_DELAY_LINE = _c(
    "DLINe:ROUTe",
    (P("line", "int"), P("out_mode", "int"), P("in_mode", "int"), P("rounds", "int")),
    "Send the photon leaving output <out_mode> round delay line <line> <rounds> times, "
    "then into input <in_mode> for a second pass.",
)
DELAY_ROUTES = _c("DLINe:ROUTe?", (), "The delay-line routes.", reply="block: JSON")
CLEAR_DELAY_LINES = _c("DLINe:CLEar", (), "Remove every delay-line route.")
DELAY_LOOP = _c("DLINe:LOOP?", (), "One round trip of a delay line in s.", reply="float")

COMMANDS: tuple[Command, ...] = (
    IDENTITY,
    RESET,
    CLEAR_STATUS,
    OPERATION_COMPLETE,
    SELF_TEST,
    NEXT_ERROR,
    ECHO,
    CAPABILITIES,
    ARM_WATCHDOG,
    WATCHDOG,
    INTERLOCK,
    RESET_INTERLOCK,
    STATUS,
    TEMPERATURE,
    SETTLED,
    SET_HEATER,
    HEATER,
    SET_HEATERS,
    HEATERS,
    HEATER_POWER,
    SET_INPUT,
    INPUT,
    CLEAR_INPUTS,
    ENABLE_SOURCES,
    SOURCES,
    RUN_SHOTS,
    WIDTH,
    SHOTS,
    PATTERNS,
    HISTOGRAM,
    COUNTS,
    POWERS,
    SET_FEEDFORWARD_MODES,
    FEEDFORWARD_MODES,
    ADD_FEEDFORWARD_RULE,
    FEEDFORWARD_RULES,
    CLEAR_FEEDFORWARD,
    FEEDFORWARD_LATENCY,
    ROUTE_DELAY_LINE,
    DELAY_ROUTES,
    CLEAR_DELAY_LINES,
    DELAY_LOOP,
)
"""The whole command set, in the order docs/device-protocol.md lists it."""


@functools.lru_cache(maxsize=1024)
def find_command(header: str, query: bool) -> Command | None:
    """The command a received header names, or None (cached: headers repeat)."""
    for command in COMMANDS:
        if command.query == query and header_matches(command.pattern, header):
            return command
    return None


# --- writing parameters (the host) ----------------------------------------------------------


def _write(param: Param, value: object) -> bytes:
    kind = param.kind
    if kind == "int":
        return str(_integer(value)).encode()
    if kind == "float" and not isinstance(value, bool | str | bytes):
        return repr(float(cast("SupportsFloat", value))).encode()  # every digit; numpy's floats too
    if kind == "bool" and isinstance(value, bool):
        return b"ON" if value else b"OFF"
    if kind == "choice" and isinstance(value, str):
        for choice in param.choices:
            if value.upper() in (choice.upper(), _short(choice)):
                return _short(choice).encode()
        raise TypeError(f"it is one of {param.choices}")
    if kind == "block" and isinstance(value, bytes | bytearray | memoryview):
        return block(bytes(value))
    if kind == "int_list" and isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return b",".join(str(_integer(item)).encode() for item in value)
    if kind == "bits" and isinstance(value, str) and value and not set(value) - {"0", "1"}:
        return value.encode()
    raise TypeError("not a value of its kind")


def _write_rest(value: object) -> bytes:
    """One of the remaining parameters: a number, a string as it is, or bytes as a block."""
    if isinstance(value, bytes | bytearray | memoryview):
        return block(bytes(value))
    if isinstance(value, str):
        return value.encode("ascii")
    if isinstance(value, float):
        return repr(float(value)).encode()  # numpy's float64 is a float, whose repr is not a number
    return str(_integer(value)).encode()


def _integer(value: object) -> int:
    """An int, or anything that is one (numpy's integers); never a bool, which is written ON or OFF."""
    if isinstance(value, bool):
        raise TypeError("a bool is written ON or OFF, not as a number")
    if isinstance(value, int):
        return value
    return operator.index(cast("SupportsIndex", value))  # TypeError for anything else


def _short(choice: str) -> str:
    return "".join(ch for ch in choice if ch.isupper())


# --- reading parameters (the device) --------------------------------------------------------


def _read(spec: Param, raw: str | bytes) -> Any:
    if spec.kind == "int":
        return parse_int(raw)
    if spec.kind == "float":
        return parse_float(raw)
    if spec.kind == "bool":
        return _bool(raw)
    if spec.kind == "choice":
        return _choice(raw, spec.choices)
    if spec.kind == "bits":
        if isinstance(raw, bytes) or not raw or set(raw) - {"0", "1"}:
            raise ScpiError(ILLEGAL_PARAMETER_VALUE, f"expected a pattern of 0 and 1, got {_show(str(raw))}")
        return raw
    if not isinstance(raw, bytes):  # block
        raise ScpiError(DATA_TYPE_ERROR, f"expected a block, got {_show(raw)}")
    return raw


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def parse_int(text: str | bytes) -> int:
    """An integer parameter as the device reads it (``3``, ``+3``, ``3.0``); `ScpiError` otherwise."""
    if isinstance(text, bytes):
        raise ScpiError(DATA_TYPE_ERROR, "expected a number, got a block")
    if text.lstrip("+-").isdigit():
        return int(text)
    try:
        value = float(text)
    except ValueError:
        raise ScpiError(DATA_TYPE_ERROR, f"expected an integer, got {_show(text)}") from None
    if not value.is_integer():
        raise ScpiError(DATA_TYPE_ERROR, f"expected an integer, got {_show(text)}")
    return int(value)


def parse_float(text: str | bytes) -> float:
    """A finite number parameter as the device reads it; `ScpiError` otherwise."""
    if isinstance(text, bytes):
        raise ScpiError(DATA_TYPE_ERROR, "expected a number, got a block")
    try:
        value = float(text)
    except ValueError:
        raise ScpiError(DATA_TYPE_ERROR, f"expected a number, got {_show(text)}") from None
    if not math.isfinite(value):
        raise ScpiError(DATA_OUT_OF_RANGE, f"{_show(text)} is not a finite number")
    return value


def _choice(text: str | bytes, choices: tuple[str, ...]) -> str:
    if isinstance(text, bytes):
        raise ScpiError(DATA_TYPE_ERROR, "expected a mnemonic, got a block")
    word = text.upper()
    for choice in choices:
        if word in (choice.upper(), _short(choice)):
            return choice
    shorts = "|".join(_short(c) for c in choices)
    raise ScpiError(ILLEGAL_PARAMETER_VALUE, f"{_show(text)} is not one of {shorts}")


def _bool(text: str | bytes) -> bool:
    if isinstance(text, bytes):
        raise ScpiError(DATA_TYPE_ERROR, "expected ON or OFF, got a block")
    word = text.upper()
    if word in ("ON", "1"):
        return True
    if word in ("OFF", "0"):
        return False
    raise ScpiError(ILLEGAL_PARAMETER_VALUE, f"expected ON, OFF, 1 or 0, got {_show(text)}")
