"""The simulated controller: SCPI messages in, replies out, sans-IO.

`Device.handle` takes one message (a line) and returns the reply line, or
None when the message held no query that succeeded. Errors go to the error
queue (``SYSTem:ERRor?``) with their SCPI number, as on a real instrument; a
failed query answers nothing. Nothing here waits or does I/O: the servers in
`sim._server` own the sockets and the clock.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocol import photonica as px
from protocol import scpi
from protocol.photonica import (
    INTERLOCK_TRIPPED,
    SOURCES_DISABLED,
    WATCHDOG_EXPIRED,
    Command,
    StatusReport,
    device_error,
    encode_description,
    encode_status,
    find_command,
    parse_float,
    parse_int,
)
from protocol.scpi import ScpiError

from ._chip import Chip
from ._config import FaultConfig, SimConfig
from ._record import RecordEntry, RecordEvent, RecordTarget, recorder
from ._sampling import (
    Detection,
    Histogram,
    Stored,
    TwoPass,
    _dead_time,
    _pick,
    sample_counts,
    sample_ideal,
    sample_two_pass,
)
from ._source import (
    EXACT_CLICK_MODES,
    SourceModel,
    click_distribution,
    patterns_of,
    sample_photons,
    source_configurations,
)

ERROR_QUEUE = 32
TRANSPORT_FAULTS = ("close", "delay", "corrupt")
RECORDED_WRITES = frozenset(
    {
        px.SET_HEATER,
        px.SET_HEATERS,
        px.ENABLE_SOURCES,
        px.SET_INPUT,
        px.CLEAR_INPUTS,
        px.RUN_SHOTS,
        px.RESET,
        px.RESET_INTERLOCK,
    }
)
"""Commands whose refusal the audit record notes (their success has a line of its own)."""


@dataclass
class FaultPlan:
    """Which injected faults fire on which message, decided once per message."""

    faults: list[FaultConfig]
    rng: np.random.Generator
    count: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    """Messages seen so far that begin with each command some fault waits ``on``."""

    def next(self, message: bytes = b"") -> list[FaultConfig]:
        """The faults firing on the next message (messages are counted from 1)."""
        self.count += 1
        words = message.split(b";", 1)[0].split(None, 1)  # the first command's header, as sent
        head = words[0].lstrip(b":").upper().decode("ascii", "replace") if words else ""
        for on in {fault.on.upper() for fault in self.faults if fault.on}:
            if head == on:
                self.counts[on] = self.counts.get(on, 0) + 1
        fired = []
        for fault in self.faults:
            if fault.kind == "stuck" or (fault.on and head != fault.on.upper()):
                continue
            nth = self.counts[fault.on.upper()] if fault.on else self.count
            if nth in fault.nth or (fault.probability and self.rng.random() < fault.probability):
                fired.append(fault)
        return fired

    def counted(self, on: str) -> int:
        """Messages so far that began with ``on`` (counted once a fault waits on it)."""
        return self.counts.get(on.upper(), 0)


@dataclass
class Input:
    kind: str = "VAC"  # PHOT, COH or VAC
    power: float = 0.0
    phase: float = 0.0


class Results:
    """The last run's detections, ``width`` values a shot.

    Drawn shot by shot (every shot's reading, in firing order), or, when the shots are
    exchangeable (no dead time), drawn as a histogram at once (decision 0017 §6). Each form is
    made from the other the first time it is asked for: a histogram's shots are put in a
    random order (``order``), which is how exchangeable shots come.
    """

    def __init__(self, readings: np.ndarray | Histogram, width: int, order: np.random.Generator | None = None) -> None:
        self.width = width
        self._patterns = None if isinstance(readings, Histogram) else np.ascontiguousarray(readings, dtype=np.uint8)
        self._histogram = readings if isinstance(readings, Histogram) else None
        self._order = order

    @property
    def patterns(self) -> np.ndarray:
        """Every shot's reading: (shots, width) uint8."""
        if self._patterns is None:
            assert self._histogram is not None
            assert self._order is not None
            self._patterns = self._histogram.in_order(self._order)
        return self._patterns

    @property
    def histogram(self) -> Histogram:
        """Each distinct reading and how many shots read it."""
        if self._histogram is None:
            self._histogram = Histogram.of(self.patterns)
        return self._histogram


@dataclass
class Program:
    ff_modes: list[int] = field(default_factory=list)
    rules: dict[str, dict[int, float]] = field(default_factory=dict)
    delay_lines: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # line -> (out, in, rounds)


Handler = Callable[[Command, list[Any]], str | bytes | None]
"""What the device does for one command: its reply (None: no reply)."""


class Device:
    """A simulated Photonica controller and chip.

    Args:
        config: The device description.
        seed: Overrides ``config.seed``; the same seed and the same messages
            give the same replies (with the default ``commands`` clock).
        host_clock: Seconds, for the watchdog and the ``wall`` device clock.
        record: Where the audit record goes: a file (JSON lines, emptied
            first) or a callback taking each `RecordEntry`. Every change that
            reaches the chip, in the order it does (sim._record).
    """

    def __init__(
        self,
        config: SimConfig,
        *,
        seed: int | None = None,
        host_clock: Callable[[], float] = time.monotonic,
        record: RecordTarget | None = None,
    ):
        self.config = config
        self.seed = seed if seed is not None else (config.seed if config.seed is not None else 0)
        chip_seed, shot_seed, fault_seed = np.random.SeedSequence(self.seed).spawn(3)
        self.chip = Chip(config, np.random.default_rng(chip_seed))  # sim.chip_of draws the same chip
        self.rng = np.random.default_rng(shot_seed)
        self._clicks: tuple[tuple[object, ...], np.ndarray] | None = None  # the last setting's click distribution
        self.faults = FaultPlan(list(config.faults), np.random.default_rng(fault_seed))
        for fault in config.faults:
            if fault.kind == "stuck":
                self.chip.stuck[fault.heater] = fault.volts
        self.description = config.description()
        self._v_max = np.array(config.heater_v_max)
        # The device holds each heater to the power it describes (what v_max allows, for one without its own).
        power_max = self.description.heaters.power_max_w
        self._power_max = None if power_max is None else np.array(power_max)
        self._description_json = encode_description(self.description)
        self.host_clock = host_clock
        self._host_start = host_clock()
        self.clock = 0.0
        self.errors: deque[ScpiError] = deque()
        self.inputs = [Input() for _ in range(config.modes)]
        self.sources_on = config.power_on.sources
        self.interlock = False
        self.watchdog = 0.0
        self.watchdog_expired = False
        self._last_command = self._host_start
        self.program = Program()
        self.results: Results | None = None
        self.received: list[tuple[float, np.ndarray]] = []
        """Every voltage vector put on the heaters, with its device time: what a
        test checks to prove nothing out of limits ever reached the chip."""
        self._record = recorder(record) if record is not None else None
        self._nominal_resistance = np.array(self.description.heaters.resistance_ohm)
        self._seq = 0
        self._connection: int | None = None
        self._connections = 0
        self._peers: dict[int, str] = {}
        self._handlers = self._command_table()
        """What the device does for each command of `protocol.photonica.COMMANDS` (every one has an entry)."""
        self._power_on()
        self._note("start", seed=self.seed, description=self.description, resistance_ohm=self.chip.resistance.tolist())

    def _command_table(self) -> dict[Command, Handler]:
        """What the device does for each command of `protocol.photonica.COMMANDS`."""
        return {
            px.IDENTITY: lambda c, a: self.description.identity.idn(),
            px.RESET: self._reset,
            px.CLEAR_STATUS: lambda c, a: self.errors.clear(),
            px.OPERATION_COMPLETE: self._opc,
            px.SELF_TEST: lambda c, a: "0",
            px.NEXT_ERROR: self._next_error,
            px.ECHO: lambda c, a: str(a[0]),
            px.CAPABILITIES: lambda c, a: scpi.block(self._description_json),
            px.ARM_WATCHDOG: self._arm_watchdog,
            px.WATCHDOG: lambda c, a: scpi.format_number(float(self.watchdog)),
            px.INTERLOCK: lambda c, a: "1" if self.interlock else "0",
            px.RESET_INTERLOCK: self._reset_interlock,
            px.STATUS: self._status,
            px.TEMPERATURE: lambda c, a: scpi.format_number(self.chip.temperature()),
            px.SETTLED: lambda c, a: "1" if self.chip.settled(self.clock) else "0",
            px.SET_HEATER: self._set_heater,
            px.HEATER: self._heater,
            px.SET_HEATERS: self._set_all_heaters,
            px.HEATERS: lambda c, a: scpi.block(self.chip.applied_voltages().astype("<f8").tobytes()),
            px.HEATER_POWER: lambda c, a: scpi.format_number(self.chip.power()),
            px.SET_INPUT: self._set_input,
            px.INPUT: self._input,
            px.CLEAR_INPUTS: self._clear_inputs,
            px.ENABLE_SOURCES: self._enable_sources,
            px.SOURCES: lambda c, a: "1" if self.sources_on else "0",
            px.RUN_SHOTS: self._run,
            px.WIDTH: lambda c, a: str(self._results().width),
            px.SHOTS: lambda c, a: str(len(self._results().patterns)),
            px.PATTERNS: lambda c, a: scpi.block(self._results().patterns.tobytes()),
            px.HISTOGRAM: self._histogram,
            px.COUNTS: self._counts,
            px.POWERS: self._powers,
            px.SET_FEEDFORWARD_MODES: self._set_ff_modes,
            px.FEEDFORWARD_MODES: lambda c, a: ",".join(str(m) for m in self.program.ff_modes),
            px.ADD_FEEDFORWARD_RULE: self._add_ff_rule,
            px.FEEDFORWARD_RULES: self._ff_rules,
            px.CLEAR_FEEDFORWARD: self._ff_clear,
            px.FEEDFORWARD_LATENCY: lambda c, a: scpi.format_number(self.config.feedforward.latency_s),
            px.ROUTE_DELAY_LINE: self._route_delay_line,
            px.DELAY_ROUTES: self._delay_routes,
            px.CLEAR_DELAY_LINES: self._delay_clear,
            px.DELAY_LOOP: lambda c, a: scpi.format_number(self.config.delay_lines.loop_s),
        }

    # --- the entry point ----------------------------------------------------------------

    def handle(
        self, message: bytes, faults: list[FaultConfig] | None = None, *, connection: int | None = None
    ) -> bytes | None:
        """Carry out one message; the reply line (without newline), or None.

        ``connection`` (from `connect`) names the client in the audit record
        (default: the one `attributed_to` names).
        """
        self.check_watchdog()
        self._last_command = self.host_clock()
        replies: list[bytes] = []
        fail_first: ScpiError | None = None
        for fault in faults or []:
            if fault.kind == "error":
                fail_first = ScpiError(fault.code, fault.message)  # the first command fails with it, the rest runs
                self._push(fail_first)
            if fault.kind == "interlock":
                with self.attributed_to(None):  # the device's own doing
                    self._trip(f"injected: {fault.message}")
        with self.attributed_to(connection if connection is not None else self._connection):
            for parsed in scpi.parse_message(message):
                self._tick(self.config.command_s)
                if fail_first is not None:
                    self._refused(parsed, fail_first)
                    fail_first = None
                    continue
                if isinstance(parsed, ScpiError):
                    self._push(parsed)
                    continue
                try:
                    reply = self._execute(parsed)
                except ScpiError as exc:
                    self._push(exc)
                    self._refused(parsed, exc)
                    continue
                if parsed.query and reply is not None:
                    replies.append(reply.encode("ascii", "backslashreplace") if isinstance(reply, str) else reply)
        return b";".join(replies) if replies else None

    @contextlib.contextmanager
    def attributed_to(self, connection: int | None) -> Iterator[None]:
        """Messages handled in this block came from ``connection`` (what the servers use)."""
        outer, self._connection = self._connection, connection
        try:
            yield
        finally:
            self._connection = outer

    def connect(self, peer: str) -> int:
        """A client connected: its number in the audit record (1, 2, ...)."""
        self._connections += 1
        self._peers[self._connections] = peer
        self._note("connect", state=False, connection=self._connections)
        return self._connections

    def disconnect(self, connection: int) -> None:
        """The client `connect` numbered has gone."""
        if connection in self._peers:
            self._note("disconnect", state=False, connection=connection)
            del self._peers[connection]

    def overrun(self, size: int) -> None:
        """The reader discarded a message over the length limit."""
        self._push(ScpiError(scpi.INPUT_BUFFER_OVERRUN, f"message of {size} bytes exceeds {scpi.MAX_MESSAGE}"))

    def check_watchdog(self) -> bool:
        """Go to the safe state if the armed watchdog has run out; True if it just did."""
        if self.watchdog and self.host_clock() - self._last_command > self.watchdog:
            with self.attributed_to(None):  # the device's own doing, whoever's message noticed it
                self._note("watchdog", state=False, timeout_s=self.watchdog, code=WATCHDOG_EXPIRED)
                self.safe_state()
            self.watchdog_expired = True
            self._push(
                device_error(WATCHDOG_EXPIRED, f"no command for {self.watchdog:g} s: heaters at 0 V, sources off")
            )
            self.watchdog = 0.0
            return True
        return False

    def feed_watchdog(self) -> None:
        """Count the watchdog's silence from now (the end of a command that kept the device busy)."""
        self._last_command = self.host_clock()

    def watchdog_deadline(self) -> float | None:
        """Host time at which the watchdog runs out, if armed."""
        return self._last_command + self.watchdog if self.watchdog else None

    def safe_state(self) -> None:
        """All heaters to 0 V, sources off."""
        self._apply(np.zeros(self.config.heater_count))
        self.sources_on = False
        self._note("safe_state")

    # --- plumbing -----------------------------------------------------------------------

    def _power_on(self) -> None:
        """The heaters as the device file says they power up (0 V unless it says otherwise), settled."""
        volts = np.array(self.config.power_on_volts, dtype=np.float64)
        if not volts.any():
            return
        power, limit = self.chip.power(volts), self.config.power_limit_w
        if power > limit:  # the file checked the nominal power; the chip's true resistances draw more
            self.interlock = True
            why = (
                f"power-on heater power {power:.3f} W exceeds {limit:.3f} W; "
                f"heaters at 0 V until {px.RESET_INTERLOCK.short}"
            )
            self._push(device_error(INTERLOCK_TRIPPED, why))
            return
        self.chip.set_voltages(volts, -math.inf)
        self.received.append((self.clock, self.chip.applied_voltages()))

    def _tick(self, seconds: float) -> None:
        if self.config.clock == "wall":
            self.clock = max(self.clock, self.host_clock() - self._host_start)
        else:
            self.clock += seconds

    def _push(self, error: ScpiError) -> None:
        if len(self.errors) >= ERROR_QUEUE:
            self.errors[-1] = ScpiError(scpi.QUEUE_OVERFLOW)
            return
        self.errors.append(error)

    def _execute(self, parsed: scpi.Parsed) -> str | bytes | None:
        command = find_command(parsed.header, parsed.query)
        if command is None:
            other = find_command(parsed.header, not parsed.query)
            if other is not None:
                form = "only as a query" if other.query else "only as a command, not a query"
                raise ScpiError(scpi.UNDEFINED_HEADER, f"{parsed.header} exists {form}")
            raise ScpiError(scpi.UNDEFINED_HEADER, f"unknown command {parsed.header!r}")
        return self._handlers[command](command, command.parse_arguments(parsed.params))

    def _apply(self, voltages: np.ndarray) -> None:
        self.chip.set_voltages(voltages, self.clock)
        self.received.append((self.clock, self.chip.applied_voltages()))

    def _trip(self, why: str, command: Command | None = None) -> None:
        self.interlock = True
        self._apply(np.zeros(self.config.heater_count))
        error = device_error(INTERLOCK_TRIPPED, f"{why}; heaters at 0 V until {px.RESET_INTERLOCK.short}")
        self._push(error)
        self._note("interlock", command=command.short if command else None, code=error.code, error=error.text)

    def _note(self, event: RecordEvent, *, state: bool = True, **fields: Any) -> None:
        """A line of the audit record, with the state after the change unless ``state`` is False."""
        if self._record is None:
            return
        self._seq += 1
        connection = fields.pop("connection", self._connection)
        if state:
            volts = self.chip.applied_voltages()
            powers = volts * volts / self.chip.resistance
            fields.update(
                volts=volts.tolist(),
                power_w=float(powers.sum()),
                power_nominal_w=float(np.sum(volts * volts / self._nominal_resistance)),
                heater_power_w=powers.tolist(),
                sources=self.sources_on,
                interlock=self.interlock,
                inputs=[_input_text(item) for item in self.inputs],
            )
        self._record(
            RecordEntry(
                seq=self._seq,
                event=event,
                time_s=self.clock,
                host_s=self.host_clock() - self._host_start,
                unix_s=time.time(),
                connection=connection,
                peer=self._peers.get(connection) if connection is not None else None,
                **fields,
            )
        )

    def _refused(self, parsed: scpi.Parsed | ScpiError, error: ScpiError) -> None:
        """A write the device refused: noted in the record, marked so."""
        if self._record is None or isinstance(parsed, ScpiError):
            return
        command = find_command(parsed.header, parsed.query)
        if command in RECORDED_WRITES:
            self._note("refused", command=command.short, code=error.code, error=error.text)

    def _check_heater(self, heater: int) -> None:
        n = self.config.heater_count
        if not 0 <= heater < n:
            raise ScpiError(scpi.DATA_OUT_OF_RANGE, f"heater {heater} does not exist (0-{n - 1})")

    def _check_mode(self, mode: int) -> None:
        if not 0 <= mode < self.config.modes:
            raise ScpiError(scpi.DATA_OUT_OF_RANGE, f"mode {mode} does not exist (0-{self.config.modes - 1})")

    def _set_heaters(self, voltages: np.ndarray, command: Command, heater: int | None = None) -> None:
        if self.interlock:
            raise device_error(INTERLOCK_TRIPPED, f"heater writes are refused until {px.RESET_INTERLOCK.short}")
        v_max = self._v_max
        bad = np.flatnonzero(~np.isfinite(voltages) | (voltages < 0) | (voltages > v_max))
        if len(bad):
            h = int(bad[0])
            raise ScpiError(scpi.DATA_OUT_OF_RANGE, f"heater {h}: {voltages[h]:g} V is outside 0-{v_max[h]:g} V")
        if self._power_max is not None:
            # What the heater draws, as the controller measures it: the true resistance.
            powers = voltages * voltages / self.chip.resistance
            over = np.flatnonzero(powers > self._power_max)
            if len(over):
                h = int(over[0])
                raise ScpiError(
                    scpi.DATA_OUT_OF_RANGE,
                    f"heater {h}: {voltages[h]:g} V draws {powers[h]:.4g} W, over its limit {self._power_max[h]:g} W",
                )
        power = self.chip.power(voltages)
        limit = self.config.power_limit_w
        if power > limit:
            self._trip(f"total heater power {power:.3f} W exceeds {limit:.3f} W", command)
            return
        self._apply(voltages)
        self._note("heaters", command=command.short, heater=heater)

    # --- the control port (sim._control) -------------------------------------------------

    def trip_interlock(self, why: str) -> None:
        """Trip the interlock now, as the device's own doing (an injected fault)."""
        with self.attributed_to(None):
            self._trip(f"injected: {why}")

    def rearm_interlock(self) -> None:
        """Re-arm a tripped interlock (the control port clearing its own fault)."""
        if self.interlock:
            self.interlock = False
            with self.attributed_to(None):
                self._note("interlock_reset", command="control")

    def stick(self, heater: int, volts: float | None = None) -> None:
        """Keep ``heater`` at ``volts`` (default: what it gets now) whatever it is set to."""
        self._check_heater(heater)
        self.chip.stuck[heater] = float(self.chip.applied_voltages()[heater]) if volts is None else float(volts)
        self.chip.set_voltages(self.chip.voltages, self.clock)
        self.received.append((self.clock, self.chip.applied_voltages()))

    def unstick(self, heater: int) -> None:
        """Let ``heater`` follow its set voltage again."""
        if self.chip.stuck.pop(heater, None) is not None:
            self.chip.set_voltages(self.chip.voltages, self.clock)
            self.received.append((self.clock, self.chip.applied_voltages()))

    def advance(self, seconds: float) -> None:
        """Move device time on by ``seconds`` at once, the heaters drifting as they would meanwhile."""
        if not seconds >= 0 or not math.isfinite(seconds):
            raise ValueError(f"cannot advance device time by {seconds!r} s")
        self.clock += seconds  # a ``wall`` clock then stays ahead of the host's by as much
        self.chip.phases(self.clock)  # draws the drift over the whole span now, deterministically

    # --- commands -----------------------------------------------------------------------

    def _reset(self, command: Command, args: list[Any]) -> None:
        # SCPI's *RST state has every output off: heaters at 0 V, sources off.
        if not self.interlock:
            self._apply(np.zeros(self.config.heater_count))
        self.inputs = [Input() for _ in range(self.config.modes)]
        self.sources_on = False
        self.program = Program()
        self.results = None
        self.watchdog = 0.0
        self._note("reset", command=command.short)

    def _opc(self, command: Command, args: list[Any]) -> str:
        self._tick(self.chip.settle_time(self.clock))
        return "1"

    def _next_error(self, command: Command, args: list[Any]) -> str:
        if not self.errors:
            return f'{scpi.NO_ERROR},"No error"'
        return self.errors.popleft().entry()

    def _arm_watchdog(self, command: Command, args: list[Any]) -> None:
        (timeout,) = args
        if not 0 <= timeout <= self.config.watchdog_max_s:
            raise ScpiError(
                scpi.DATA_OUT_OF_RANGE, f"watchdog timeout {timeout:g} s is outside 0-{self.config.watchdog_max_s:g} s"
            )
        self.watchdog = float(timeout)
        self.watchdog_expired = False

    def _reset_interlock(self, command: Command, args: list[Any]) -> None:
        self.interlock = False
        self._note("interlock_reset", command=command.short)

    def _status(self, command: Command, args: list[Any]) -> bytes:
        status = StatusReport(
            temperature_c=self.chip.temperature(),
            power_w=self.chip.power(),
            interlock=self.interlock,
            settled=self.chip.settled(self.clock),
            watchdog_s=self.watchdog,
            watchdog_expired=self.watchdog_expired,
            sources=self.sources_on,
            time_s=self.clock,
        )
        return scpi.block(encode_status(status))

    def _heater(self, command: Command, args: list[Any]) -> str:
        heater = args[0]
        self._check_heater(heater)
        return scpi.format_number(float(self.chip.applied_voltages()[heater]))

    def _set_heater(self, command: Command, args: list[Any]) -> None:
        heater = args[0]
        self._check_heater(heater)
        voltages = self.chip.voltages.copy()
        voltages[heater] = args[1]
        self._set_heaters(voltages, command, heater)

    def _set_all_heaters(self, command: Command, args: list[Any]) -> None:
        n = self.config.heater_count
        values = args[0]
        if len(values) == 1 and isinstance(values[0], bytes):
            raw = values[0]
            if len(raw) != 8 * n:
                raise ScpiError(scpi.INVALID_BLOCK_DATA, f"expected {n} float64 ({8 * n} bytes), got {len(raw)} bytes")
            voltages = np.frombuffer(raw, dtype="<f8").astype(np.float64)
        else:
            if len(values) != n:
                code = scpi.MISSING_PARAMETER if len(values) < n else scpi.PARAMETER_NOT_ALLOWED
                raise ScpiError(code, f"expected {n} voltages, got {len(values)}")
            voltages = np.array([parse_float(v) for v in values])
        self._set_heaters(voltages, command)

    def _input(self, command: Command, args: list[Any]) -> str:
        mode: int = args[0]
        self._check_mode(mode)
        item = self.inputs[mode]
        if item.kind == "COH":
            return f"COH,{scpi.format_number(item.power)},{scpi.format_number(item.phase)}"
        return item.kind

    def _set_input(self, command: Command, args: list[Any]) -> None:
        mode: int = args[0]
        self._check_mode(mode)
        kind = args[1]
        power, phase = [*args[2:], None, None][:2]
        if kind == "COHerent":
            if power is None:
                raise ScpiError(scpi.MISSING_PARAMETER, "coherent light needs a power in W")
            limit = self.config.sources.coherent_max_w
            if not 0 < power <= limit:
                raise ScpiError(scpi.DATA_OUT_OF_RANGE, f"coherent power {power:g} W is outside (0, {limit:g}] W")
            self.inputs[mode] = Input("COH", power, phase or 0.0)
        elif power is not None:
            raise ScpiError(scpi.PARAMETER_NOT_ALLOWED, f"{kind.upper()} takes no power or phase")
        else:
            self.inputs[mode] = Input("PHOT" if kind == "PHOTon" else "VAC")
        self._note("inputs", command=command.short)

    def _clear_inputs(self, command: Command, args: list[Any]) -> None:
        self.inputs = [Input() for _ in range(self.config.modes)]
        self._note("inputs", command=command.short)

    def _enable_sources(self, command: Command, args: list[Any]) -> None:
        self.sources_on = bool(args[0])
        self._note("sources", command=command.short)

    def _detection(self, mesh_passes: int, include_input: bool) -> Detection:
        chip = self.chip
        transmission = chip.mesh_transmission**mesh_passes * (chip.input_transmission if include_input else 1.0)
        detectors = self.config.detectors
        # A click further than half the gate from the pulse is lost from its shot (decision 0017 §3).
        in_gate = math.erf(detectors.gate_s / (2 * math.sqrt(2) * detectors.jitter_s)) if detectors.jitter_s else 1.0
        survive = transmission * chip.output_transmission * chip.efficiency * in_gate
        period = 1.0 / self.config.shot_rate_hz
        dead = self.config.detectors.dead_time_s
        blind = max(0, math.ceil(dead / period) - 1) if dead > period else 0
        return Detection(
            survive=survive,
            dark=chip.dark_rate * self.config.detectors.gate_s,
            kind=self.config.detectors.kind,
            blind_shots=blind,
        )

    def _run(self, command: Command, args: list[Any]) -> None:
        (shots,) = args
        if not 1 <= shots <= self.config.max_shots:
            raise ScpiError(scpi.DATA_OUT_OF_RANGE, f"{shots} shots is outside 1-{self.config.max_shots}")
        coherent = [j for j, item in enumerate(self.inputs) if item.kind == "COH"]
        if coherent:
            raise ScpiError(
                scpi.SETTINGS_CONFLICT,
                f"coherent light on mode(s) {coherent} would latch the single-photon detectors; set them to VAC",
            )
        if not self.sources_on:
            raise device_error(SOURCES_DISABLED, f"switch them on with {px.ENABLE_SOURCES.compose(True).decode()}")
        photons = [1 if item.kind == "PHOT" else 0 for item in self.inputs]
        unitary = self.chip.unitary(self.clock)
        sources = [self.chip.source(mode, self.clock) for mode, n in enumerate(photons) if n]
        imperfect = any(not source.ideal for source in sources)
        patterns: np.ndarray | Histogram  # every shot's readings, in order, or their histogram
        if self.program.delay_lines:
            groups: Any = photons  # one group of identical photons, or each shot's groups (decision 0017)
            configuration = None
            if imperfect:
                inputs = [mode for mode, n in enumerate(photons) if n]
                groups, configuration = source_configurations(inputs, sources, self.config.modes, shots, self.rng)
            first, second = self._detection(1, True), self._detection(1, False)
            patterns = sample_two_pass(unitary, groups, self._two_pass(), first, second, shots, self.rng, configuration)
            width = 2 * self.config.modes
        elif imperfect:
            patterns = self._imperfect_shots(unitary, photons, sources, shots)
            width = self.config.modes
        else:
            counts = sample_ideal(unitary, photons, shots, self.rng)
            patterns = self._detection(1, True).apply(counts, self.rng)
            width = self.config.modes
        order = self.rng.spawn(1)[0] if isinstance(patterns, Histogram) else None  # for its shots, if asked
        self.results = Results(patterns, width, order)
        self._note("shots", command=command.short, shots=shots)
        self._tick(shots / self.config.shot_rate_hz)

    def _imperfect_shots(
        self, unitary: np.ndarray, photons: list[int], sources: list[SourceModel], shots: int
    ) -> np.ndarray | Histogram:
        """Detector readings of ``shots`` shots from imperfect sources (decision 0017 §2), exactly.

        From the exact click distribution (threshold detectors, up to `EXACT_CLICK_MODES` modes),
        the shots are one multinomial draw, a histogram (decision 0017 §6), unless dead time makes
        each shot depend on the ones before it: then they are drawn one by one, in order.
        """
        detection = self._detection(1, True)
        inputs = [mode for mode, n in enumerate(photons) if n]
        m = self.config.modes
        if detection.kind == "threshold" and m <= EXACT_CLICK_MODES:
            key = (unitary.tobytes(), tuple(inputs), tuple(sources), detection.survive.tobytes())
            if self._clicks is None or self._clicks[0] != key:
                dark = 1.0 - np.exp(-detection.dark)
                p = click_distribution(unitary, inputs, sources, efficiency=detection.survive, dark=dark)
                self._clicks = (key, np.clip(p, 0.0, None))
            if not detection.blind_shots:
                outcomes, counts = sample_counts(self._clicks[1], shots, self.rng)
                return Histogram.drawn(patterns_of(outcomes, m), counts)
            return _dead_time(patterns_of(_pick(self._clicks[1], shots, self.rng), m), detection.blind_shots)
        counts = sample_photons(unitary, inputs, sources, shots, self.rng, sample_ideal)
        return detection.apply(counts, self.rng)

    def _two_pass(self) -> TwoPass:
        lines = self.config.delay_lines
        chip = self.chip
        stored = []
        for _line, (out_mode, in_mode, rounds) in sorted(self.program.delay_lines.items()):
            survives = rounds <= lines.max_rounds
            transmission = (
                chip.input_transmission * chip.mesh_transmission * self.config.delay_line_transmission**rounds
                if survives
                else 0.0
            )
            waited = rounds * lines.loop_s
            stored.append(Stored(out_mode, in_mode, transmission, waited >= self.config.feedforward.latency_s))
        return TwoPass(stored=stored, ff_modes=list(self.program.ff_modes), rules=dict(self.program.rules))

    def _results(self) -> Results:
        if self.results is None:
            raise ScpiError(scpi.DATA_STALE, f"no results: run shots first ({px.RUN_SHOTS.short} <n>)")
        return self.results

    def _histogram(self, command: Command, args: list[Any]) -> bytes:
        histogram = self._results().histogram
        return scpi.block(px.encode_histogram(histogram.patterns, histogram.counts))

    def _counts(self, command: Command, args: list[Any]) -> str:
        return ",".join(str(int(t)) for t in self._results().histogram.totals())

    def _powers(self, command: Command, args: list[Any]) -> str:
        fields = np.array(
            [
                math.sqrt(item.power) * complex(math.cos(item.phase), math.sin(item.phase))
                if item.kind == "COH" and self.sources_on
                else 0.0
                for item in self.inputs
            ],
            dtype=np.complex128,
        )
        powers = self.chip.powers(self.clock, fields, self.rng)
        if args and args[0] is not None:
            self._check_mode(args[0])
            return scpi.format_number(float(powers[args[0]]))
        return ",".join(scpi.format_number(float(p)) for p in powers)

    def _set_ff_modes(self, command: Command, args: list[Any]) -> None:
        modes = args[0]
        for mode in modes:
            self._check_mode(mode)
        if len(set(modes)) != len(modes):
            raise ScpiError(scpi.ILLEGAL_PARAMETER_VALUE, f"modes repeat: {modes}")
        stored = [out for out, _, _ in self.program.delay_lines.values() if out in modes]
        if stored:
            raise ScpiError(scpi.SETTINGS_CONFLICT, f"mode(s) {stored} are stored in delay lines, not detected")
        self.program.ff_modes = list(modes)
        self.program.rules = {}

    def _ff_rules(self, command: Command, args: list[Any]) -> bytes:
        rules = {k: {str(m): p for m, p in v.items()} for k, v in self.program.rules.items()}
        return scpi.block(json.dumps(rules).encode())

    def _add_ff_rule(self, command: Command, args: list[Any]) -> None:
        bits, rest = args
        if not self.program.ff_modes:
            first = f"{px.SET_FEEDFORWARD_MODES.short} <modes>"
            raise ScpiError(scpi.SETTINGS_CONFLICT, f"set the feed-forward modes first ({first})")
        if len(bits) != len(self.program.ff_modes):
            raise ScpiError(
                scpi.ILLEGAL_PARAMETER_VALUE,
                f"pattern {bits!r} has {len(bits)} bits for {len(self.program.ff_modes)} feed-forward modes",
            )
        if len(rest) % 2:
            raise ScpiError(scpi.MISSING_PARAMETER, "phases come in pairs: <mode>,<radians>")
        phases: dict[int, float] = {}
        for mode_text, phase_text in zip(rest[::2], rest[1::2], strict=True):
            mode = parse_int(mode_text)
            self._check_mode(mode)
            phases[mode] = parse_float(phase_text)
        self.program.rules[bits] = phases

    def _ff_clear(self, command: Command, args: list[Any]) -> None:
        self.program.ff_modes, self.program.rules = [], {}

    def _delay_routes(self, command: Command, args: list[Any]) -> bytes:
        routes = sorted(self.program.delay_lines.items())
        table = {str(n): {"out": o, "in": i, "rounds": r} for n, (o, i, r) in routes}
        return scpi.block(json.dumps(table).encode())

    def _route_delay_line(self, command: Command, args: list[Any]) -> None:
        line, out_mode, in_mode, rounds = args
        count = self.config.delay_lines.count
        if not 0 <= line < count:
            raise ScpiError(scpi.DATA_OUT_OF_RANGE, f"delay line {line} does not exist (0-{count - 1})")
        self._check_mode(out_mode)
        self._check_mode(in_mode)
        if not 1 <= rounds <= 100 * self.config.delay_lines.max_rounds:
            raise ScpiError(
                scpi.DATA_OUT_OF_RANGE, f"{rounds} round trips is outside 1-{100 * self.config.delay_lines.max_rounds}"
            )
        others = {n: v for n, v in self.program.delay_lines.items() if n != line}
        if any(o == out_mode for o, _, _ in others.values()):
            raise ScpiError(scpi.SETTINGS_CONFLICT, f"output mode {out_mode} is already routed into another delay line")
        if any(i == in_mode for _, i, _ in others.values()):
            raise ScpiError(scpi.SETTINGS_CONFLICT, f"input mode {in_mode} already takes another delay line's photon")
        if out_mode in self.program.ff_modes:
            raise ScpiError(scpi.SETTINGS_CONFLICT, f"mode {out_mode} is a feed-forward mode, so it is detected")
        self.program.delay_lines[line] = (out_mode, in_mode, rounds)

    def _delay_clear(self, command: Command, args: list[Any]) -> None:
        self.program.delay_lines = {}


def _input_text(item: Input) -> str:
    """An input as the record shows it: ``INP:STAT?``'s reply, with every digit of its numbers."""
    return f"COH,{item.power!r},{item.phase!r}" if item.kind == "COH" else item.kind
