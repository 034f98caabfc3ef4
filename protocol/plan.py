"""Execution plans: what the scheduler hands the executor.

A plan is a sequence of *phases*. A phase is one device configuration and what
happens in it: the mesh's target phases (radians per heater; the executor turns
them into volts through the calibration), the inputs, the delay-line and
feed-forward program, the shots, and which detector columns hold which
register. Within one shot the device makes a first pass through the mesh,
sends stored photons round their delay lines, and makes a second pass with
the loaded photons, after fast feed-forward phases chosen by the first pass's
clicks; each *branch* says which phases follow which outcome.

Phases depend on earlier phases that use the same logical modes (the
circuit's order); independent phases may be reordered by a dynamic strategy.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from ._message import Count, Finite, Index, Label, Seconds, Text
from .hal import (
    MAX_DELAY_LINES,
    MAX_HEATERS,
    MAX_MODES,
    MAX_ROUNDS,
    MAX_RULES,
    Column,
    DelayLine,
    DelayRoute,
    InputSetting,
    Mode,
    Pattern,
)

MAX_PHASES = 65_536
"""The most phases a plan may have."""

MAX_PLAN_OPS = 2**20
"""The most op index paths one phase may list."""

MAX_REGISTERS = 1024
"""The most registers a phase may read."""

_OP_PATH = re.compile(r"(0|[1-9][0-9]{0,9})(?:-(0|[1-9][0-9]{0,9})|(?:\.ops\.(?:0|[1-9][0-9]{0,9}))*)")
"""An op's index path as a plan lists it: ``3``, a run of top-level ops ``0-5``, or a nested op ``2.ops.1``."""

Modes = Annotated[list[Mode], msgspec.Meta(max_length=MAX_MODES)]
Columns = Annotated[list[Column], msgspec.Meta(max_length=2 * MAX_MODES)]
DelayLines = Annotated[list[DelayLine], msgspec.Meta(max_length=MAX_DELAY_LINES)]
PerHeater = Annotated[list[Finite], msgspec.Meta(max_length=MAX_HEATERS)]


Pass = Literal[1, 2]
"""A pass through the mesh: 1, the first; 2, the second, with the photons loaded from delay lines."""


class _S(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every part of a plan: frozen, strict about unknown fields."""


class Placement(_S, frozen=True, kw_only=True):
    """Logical mode ``logical`` of pass ``pass_`` sits on physical mode ``physical``."""

    logical: Index
    physical: Mode
    pass_: Pass = msgspec.field(name="pass")


class RegisterRead(_S, frozen=True, kw_only=True):
    """Register ``name`` is the clicks in ``columns`` of a shot's pattern (first column most significant)."""

    name: Label
    columns: Columns
    modes: Annotated[list[Index], msgspec.Meta(max_length=MAX_MODES)]
    """The logical modes measured, in the register's bit order."""
    pass_: Pass = msgspec.field(name="pass")


class Branch(_S, frozen=True, kw_only=True):
    """When the feed-forward modes click as ``pattern``: registers read ``outcome``, these fast phases are set."""

    pattern: Pattern
    outcome: Annotated[dict[Label, Count], msgspec.Meta(max_length=MAX_REGISTERS)]
    phases: Annotated[dict[Mode, Finite], msgspec.Meta(max_length=MAX_MODES)]
    """Physical second-pass input mode -> radians."""


class Deadline(_S, frozen=True, kw_only=True):
    """A stored photon's coherence window, and how much of it the plan leaves unused."""

    line: Label
    """The circuit's name for the delay line."""
    physical_line: DelayLine
    store_op: Label
    load_op: Label
    stored_ns: Finite
    limit_ns: Finite
    """The delay line's window less the safety margin."""
    slack_ns: Finite
    rounds: Annotated[int, msgspec.Meta(ge=0, le=MAX_ROUNDS)]


class Resources(_S, frozen=True, kw_only=True):
    modes: Modes
    detectors: Columns
    delay_lines: DelayLines
    ff_shifters: Index


class Phase(_S, frozen=True, kw_only=True):
    index: Index
    round: Index
    """Which independent experiment of the circuit (a new round starts when a used mode gets a new input)."""
    ops: Annotated[list[Label], msgspec.Meta(max_length=MAX_PLAN_OPS)]
    """Index paths of the circuit ops this phase carries out; runs of top-level ops as ``"a-b"``."""
    depends_on: Annotated[list[Index], msgspec.Meta(max_length=MAX_PHASES)]
    mesh_phases: PerHeater
    """Target phase per heater (m**2, numbered as in `protocol.mesh`); empty when ``volts`` is given."""
    volts: PerHeater | None = None
    """Explicit heater voltages, for procedures (calibration sweeps): no calibration is applied."""
    readout: Literal["shots", "powers"] = "shots"
    """``powers``: read the photodiodes (coherent light) instead of firing shots."""
    inputs: Annotated[list[InputSetting], msgspec.Meta(max_length=MAX_MODES)]
    delay_lines: Annotated[list[DelayRoute], msgspec.Meta(max_length=MAX_DELAY_LINES)]
    ff_modes: Modes
    branches: Annotated[list[Branch], msgspec.Meta(max_length=MAX_RULES)]
    registers: Annotated[list[RegisterRead], msgspec.Meta(max_length=MAX_REGISTERS)]
    placement: Annotated[list[Placement], msgspec.Meta(max_length=2 * MAX_MODES)]
    resources: Resources
    shots: Count
    width: Annotated[int, msgspec.Meta(ge=0, le=2 * MAX_MODES)]
    """Columns of this phase's shot patterns: the device's modes, twice that with a second pass."""
    settle_s: Seconds
    duration_s: Seconds
    """Expected: settling, shots at the device's rate, and readout."""
    deadlines: Annotated[list[Deadline], msgspec.Meta(max_length=MAX_DELAY_LINES)]

    def __post_init__(self) -> None:
        # Checked while decoding (msgspec makes this a validation error): a run "0-99999999999"
        # must not reach whoever expands it.
        count = 0
        for path in self.ops:
            match = _OP_PATH.fullmatch(path)
            if match is None:
                raise ValueError(f"op path {path[:40]!r} is not an index path such as '3', '0-5' or '2.ops.1'")
            first, last = match.group(1), match.group(2)
            if last is not None and int(last) < int(first):
                raise ValueError(f"op path {path!r} is a run that ends before it starts")
            count += 1 if last is None else int(last) - int(first) + 1
        if count > MAX_PLAN_OPS:
            raise ValueError(f"the phase lists {count} ops; the limit is {MAX_PLAN_OPS}")


class PlanMetrics(_S, frozen=True, kw_only=True):
    total_duration_s: Seconds
    phases: Index
    ops: Count
    min_slack_ns: Finite | None
    """Least slack before any stored photon's deadline; None without delay lines."""
    compile_s: Seconds
    reconfigurations: Count


class Plan(_S, frozen=True, kw_only=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    """A digest of circuit, device, calibration version and strategy: equal plans have equal ids."""
    circuit: Label
    """The circuit's digest (`protocol.circuit.circuit_hash`)."""
    device: Label
    identity: Text
    calibration: Count | None
    strategy: Label
    kind: Literal["circuit", "procedure"] = "circuit"
    """``procedure``: made by an actor (calibration), not compiled from a circuit."""
    modes: Annotated[int, msgspec.Meta(ge=1, le=MAX_MODES)]
    """The device's mode count; a pattern has ``modes`` columns per pass."""
    phases: Annotated[list[Phase], msgspec.Meta(max_length=MAX_PHASES)]
    metrics: PlanMetrics
